"""Reasoning: the text between a template's think markers, split from the content as
it streams, and the options that steer it (``chat_template_kwargs``,
``reasoning_effort``, ``reasoning_format``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from .errors import InvalidOptionError

__all__ = [
    "REASONING_FORMATS",
    "ReasoningSplitter",
    "prompt_reasoning",
    "reasoning_format",
    "template_kwargs",
    "with_defaults",
]

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ReasoningFormat = Literal["parsed", "raw"]
# llama-server's names for the same two behaviours
REASONING_FORMATS: dict[str, ReasoningFormat] = {
    "parsed": "parsed",
    "auto": "parsed",
    "deepseek": "parsed",
    "raw": "raw",
    "none": "raw",
}
_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
# what the template's context already holds and a call must not replace
_RESERVED = frozenset(
    {
        "messages",
        "tools",
        "tool_choice",
        "bos_token",
        "eos_token",
        "raise_exception",
        "strftime_now",
        "add_generation_prompt",
        "functions",
        "function_call",
    }
)


def reasoning_format(value: Any) -> ReasoningFormat:
    """``parsed`` (reasoning in ``reasoning_content``) or ``raw`` (left in ``content``).

    Raises:
        InvalidOptionError: another value (``field="reasoning_format"``).
    """
    fmt = REASONING_FORMATS.get(value) if isinstance(value, str) else None
    if fmt is None:
        raise InvalidOptionError(
            f"invalid option 'reasoning_format': must be one of {sorted(REASONING_FORMATS)} (got {value!r})",
            field="reasoning_format",
        )
    return fmt


def template_kwargs(kwargs: Any, reasoning_effort: Any) -> dict[str, Any]:
    """The extra variables of the chat template: ``chat_template_kwargs``, and
    ``reasoning_effort`` (``"none"`` sets ``enable_thinking: false`` unless the kwargs
    set it; every value is also passed as the template variable ``reasoning_effort``).

    Raises:
        InvalidOptionError: kwargs that are not a JSON object with string keys, or that
            name a variable the call itself sets (``messages``, ``tools``...); an unknown
            ``reasoning_effort``.
    """
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise InvalidOptionError(
            "invalid option 'chat_template_kwargs': must be an object with string keys",
            field="chat_template_kwargs",
        )
    taken = sorted(_RESERVED.intersection(kwargs))
    if taken:
        raise InvalidOptionError(
            f"invalid option 'chat_template_kwargs': {taken} are set by the call itself",
            field="chat_template_kwargs",
        )
    try:
        out: dict[str, Any] = json.loads(json.dumps(dict(kwargs)))
    except (TypeError, ValueError, RecursionError):
        raise InvalidOptionError(
            "invalid option 'chat_template_kwargs': values must be JSON", field="chat_template_kwargs"
        ) from None
    if reasoning_effort is not None:
        if reasoning_effort not in _EFFORTS:
            raise InvalidOptionError(
                f"invalid option 'reasoning_effort': must be one of {list(_EFFORTS)} "
                f"(got {reasoning_effort!r})",
                field="reasoning_effort",
            )
        out.setdefault("reasoning_effort", reasoning_effort)
        if reasoning_effort == "none":
            out.setdefault("enable_thinking", False)
    return out


def prompt_reasoning(template: str | None, prompt: str) -> Literal["open", "optional"] | None:
    """Where the reply starts: ``"open"`` inside a ``<think>`` the prompt opened,
    ``"optional"`` where the model may open one itself, None for templates without
    think markers or a prompt that closed the reasoning already."""
    if not template or THINK_CLOSE not in template:
        return None
    tail = prompt.rstrip()
    if tail.endswith(THINK_OPEN):
        return "open"
    if tail.endswith(THINK_CLOSE):
        return None
    return "optional"


def _held(buf: str, marker: str) -> int:
    for n in range(min(len(buf), len(marker) - 1), 0, -1):
        if marker.startswith(buf[-n:]):
            return n
    return 0


class ReasoningSplitter:
    """Feeds on the model's text; returns ``("reasoning", text)`` and ``("content",
    text)`` pieces. ``start``: :func:`prompt_reasoning`'s answer. Newlines next to the
    markers are dropped, as templates write them."""

    def __init__(self, start: Literal["open", "optional"] | None) -> None:
        self._state = {"open": "inside", "optional": "start", None: "after"}[start]
        self._buf = ""
        self._lead = True  # strip whitespace at the start of the current part

    def feed(self, text: str) -> list[tuple[str, str]]:
        self._buf += text
        out: list[tuple[str, str]] = []
        while self._step(out):
            pass
        return out

    def finish(self) -> list[tuple[str, str]]:
        rest, self._buf = self._buf, ""
        kind = "reasoning" if self._state == "inside" else "content"
        text = rest.strip() if kind == "reasoning" else rest
        return [(kind, text)] if text else []

    def _emit(self, out: list[tuple[str, str]], kind: str, text: str) -> None:
        if self._lead:
            text = text.lstrip()
            self._lead = not text
        if text:
            out.append((kind, text))

    def _step(self, out: list[tuple[str, str]]) -> bool:
        if self._state == "start":
            head = self._buf.lstrip()
            if head.startswith(THINK_OPEN):
                self._buf = head[len(THINK_OPEN) :]
                self._state, self._lead = "inside", True
                return True
            if THINK_OPEN.startswith(head):
                return False  # may still open
            self._state = "after"
            self._lead = False
            return True
        if self._state == "inside":
            i = self._buf.find(THINK_CLOSE)
            if i >= 0:
                self._emit(out, "reasoning", self._buf[:i].rstrip())
                self._buf = self._buf[i + len(THINK_CLOSE) :]
                self._state, self._lead = "after", True
                return True
            keep = _held(self._buf, THINK_CLOSE)
            body = self._buf[: len(self._buf) - keep]
            ready = body.rstrip()  # trailing newlines wait: they may precede the close
            self._emit(out, "reasoning", ready)
            self._buf = self._buf[len(ready) :]
            return False
        self._emit(out, "content", self._buf)
        self._buf = ""
        return False


def with_defaults(defaults: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """A call's options over a server's defaults (``reasoning_format``,
    ``chat_template_kwargs``): the call's own value wins, key by key for the kwargs."""
    out = {k: v for k, v in defaults.items() if options.get(k) is None}
    out.update({k: v for k, v in options.items()})
    kw_default, kw_call = defaults.get("chat_template_kwargs"), options.get("chat_template_kwargs")
    if isinstance(kw_default, Mapping) and isinstance(kw_call, Mapping):
        out["chat_template_kwargs"] = {**kw_default, **kw_call}
    return out
