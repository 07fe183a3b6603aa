"""OpenAI's request parameters that are not sampling options: what each does here.

Every parameter of OpenAI's chat and completions requests is honoured, accepted and
documented as having no effect locally, or refused with an error naming it; none is
dropped silently (an unknown name is refused by :func:`mtpstream.options.validate`).

Accepted, no effect locally (each still type-checked):

=====================  ===============================================================
``user``               a string; nothing is logged per user
``safety_identifier``  a string, likewise
``store``              a bool; nothing is stored, so nothing is listed later
``metadata``           an object of strings; kept nowhere (only useful with ``store``)
``service_tier``       a string; there is one tier, the result reports none
``prompt_cache_key``   a string; the prompt cache matches prefixes by itself
``modalities``         ``["text"]`` only (``"audio"`` is refused)
=====================  ===============================================================

Refused with a 400 naming them: ``n`` and ``best_of`` other than 1, ``audio``,
``prediction``, ``web_search_options``, ``suffix`` (completions), ``echo`` together
with ``logprobs`` (prompt log-probabilities are not computed).

Honoured: ``logprobs``/``top_logprobs`` (chat), ``logprobs``/``echo`` (completions),
``logit_bias``, ``stream_options.include_usage`` (see :mod:`mtpstream._stream_usage`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from .errors import InvalidOptionError
from .options import MAX_TOP_LOGPROBS

__all__ = ["NO_EFFECT", "Api", "include_usage", "openai_only"]

Api = Literal["chat", "completions"]


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) else "a string"


def _flag(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _metadata(value: Any) -> str | None:
    ok = isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )
    return None if ok else "an object of string values"


def _modalities(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        return "a list of strings"
    return None if set(value) <= {"text"} else 'only ["text"] (mtpstream generates text only)'


NO_EFFECT: dict[str, Callable[[Any], str | None]] = {
    "user": _string,
    "safety_identifier": _string,
    "store": _flag,
    "metadata": _metadata,
    "service_tier": _string,
    "prompt_cache_key": _string,
    "modalities": _modalities,
}
"""Parameters accepted with no effect, each with its check (the expected value or None)."""

_REFUSED: dict[str, str] = {
    "audio": "audio output is not supported (mtpstream generates text only)",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
}
_ONLY_ONE = ("n", "best_of")


def _invalid(name: str, expected: str, value: Any) -> InvalidOptionError:
    return InvalidOptionError(f"invalid option '{name}': must be {expected} (got {value!r:.100})", field=name)


def openai_only(options: Mapping[str, Any], api: Api) -> dict[str, Any]:
    """``options`` without the parameters this module owns, checked (see the module
    docstring), with ``logprobs`` mapped onto mtpstream's (``None`` or the number of
    alternatives). ``stream_options`` and ``echo`` are left for the caller.

    Raises:
        InvalidOptionError: a refused parameter, or one of the wrong type (``.field``).
    """
    out = dict(options)
    for name, check in NO_EFFECT.items():
        value = out.pop(name, None)
        problem = check(value) if value is not None else None
        if problem is not None:
            raise _invalid(name, problem, value)
    for name, reason in _REFUSED.items():
        if out.pop(name, None) is not None:
            raise InvalidOptionError(f"option '{name}' is not supported: {reason}", field=name)
    for name in _ONLY_ONE:
        value = out.pop(name, None)
        if value is not None and (value != 1 or isinstance(value, bool)):
            raise InvalidOptionError(
                f"invalid option '{name}': only {name}=1 is supported (got {value!r:.100})", field=name
            )
    if api == "chat":
        out["logprobs"] = _chat_logprobs(out.pop("logprobs", None), out.pop("top_logprobs", None))
    else:
        if out.pop("suffix", None) not in (None, ""):
            raise InvalidOptionError("option 'suffix' is not supported (no insertion mode)", field="suffix")
        out["logprobs"] = _count("logprobs", out.pop("logprobs", None))
    return out


def _count(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOP_LOGPROBS:
        raise _invalid(name, f"an integer from 0 to {MAX_TOP_LOGPROBS}", value)
    return value


def _chat_logprobs(logprobs: Any, top_logprobs: Any) -> int | None:
    """Chat's ``logprobs`` (a flag) and ``top_logprobs`` (how many alternatives)."""
    if logprobs is not None and not isinstance(logprobs, bool):
        raise _invalid("logprobs", "true or false (top_logprobs sets how many alternatives)", logprobs)
    top = _count("top_logprobs", top_logprobs)
    if not logprobs:
        if top is not None:
            raise InvalidOptionError(
                "invalid option 'top_logprobs': needs logprobs set to true", field="top_logprobs"
            )
        return None
    return top or 0


def include_usage(stream_options: Any, stream: bool) -> bool | None:
    """``stream_options.include_usage`` (None: no ``stream_options`` given).

    Raises:
        InvalidOptionError: ``stream_options`` is not an object of known flags, or is
            given without streaming.
    """
    if stream_options is None:
        return None
    if not stream:
        raise InvalidOptionError(
            "invalid option 'stream_options': only allowed when streaming (stream: true)",
            field="stream_options",
        )
    if not isinstance(stream_options, Mapping):
        raise _invalid("stream_options", "an object", stream_options)
    for key, value in stream_options.items():
        if key not in ("include_usage", "include_obfuscation"):
            raise InvalidOptionError(f"unknown option 'stream_options.{key}'", field="stream_options")
        if value is not None and not isinstance(value, bool):
            raise InvalidOptionError(
                f"invalid option 'stream_options.{key}': must be true or false (got {value!r:.100})",
                field="stream_options",
            )
    return bool(stream_options.get("include_usage"))
