"""Chat messages, their templates and ``response_format``.

The prompt of a chat call is the model's ``tokenizer.chat_template`` rendered as
llama-cpp-python's Jinja formatter (``llama_cpp.llama_chat_format.Jinja2ChatFormatter``)
renders it: Jinja's immutable sandbox with ``bos_token``, ``eos_token``,
``raise_exception`` and ``add_generation_prompt=True``, here with time and size limits
(:mod:`mtpstream._templates`). Text inside a message never becomes a special token
(:mod:`mtpstream._chat_tokens`). ``response_format`` becomes
a GBNF grammar through llama-cpp-python's JSON-schema converter
(``llama_cpp.llama_grammar``).

The calls take OpenAI's option names besides mtpstream's own: the table is in
:mod:`mtpstream._openai`, which maps them (once per call).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jinja2

from ._agent_messages import agent_messages
from ._chat_tokens import Tokenizer, chat_tokens, special_pieces
from ._templates import TemplateLimitError, render_template
from .errors import InvalidOptionError
from .options import check_text

__all__ = [
    "chat_prompt",
    "check_messages",
    "generation_start",
    "grammar_for_response_format",
    "render_messages",
]


def grammar_for_response_format(response_format: Any) -> str | None:
    """The GBNF grammar for an OpenAI ``response_format`` (None for ``{"type": "text"}``).

    Raises:
        InvalidOptionError: not one of ``text``, ``json_object``, ``json_schema`` with a
            ``schema``, a schema llama-cpp-python's converter does not support, or one
            over a limit of :mod:`._grammar_limits`.
    """
    from llama_cpp import llama_grammar

    from ._grammar_limits import check_schema

    if not isinstance(response_format, Mapping):
        raise InvalidOptionError(
            f"invalid option 'response_format': must be a dict like {{'type': 'json_object'}}, "
            f"not {type(response_format).__name__}",
            field="response_format",
        )
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        schema = response_format.get("schema")
        if schema is None:
            return llama_grammar.JSON_GBNF
    elif kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            raise InvalidOptionError(
                "invalid option 'response_format': type 'json_schema' needs "
                "{'json_schema': {'name': ..., 'schema': {...}}}",
                field="response_format",
            )
    else:
        raise InvalidOptionError(
            f"invalid option 'response_format': type must be 'text', 'json_object' or 'json_schema' "
            f"(got {kind!r})",
            field="response_format",
        )
    check_schema(schema, "response_format")  # bounded walk, before anything recurses into it
    try:
        schema_json = json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidOptionError(
            f"invalid option 'response_format': the schema is not JSON ({type(exc).__name__}: {exc})",
            field="response_format",
        ) from None
    return _schema_grammar(schema_json)


@functools.lru_cache(maxsize=64)
def _schema_grammar(schema_json: str) -> str:
    """The converter's grammar, with the schema and the grammar checked against the
    limits of :mod:`._grammar_limits` (every failure an :class:`InvalidOptionError`)."""
    from ._grammar_limits import schema_to_grammar

    return schema_to_grammar(schema_json, "response_format")


def check_messages(messages: Any) -> list[dict[str, Any]]:
    """``messages`` as a list of dicts, text content parts joined, agent turns as
    templates take them (:func:`._agent_messages.agent_messages`).

    Raises:
        InvalidOptionError: not a non-empty list of ``{"role", "content"}`` dicts, or
            malformed ``tool_calls`` (``field="messages"``).
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise InvalidOptionError(
            "messages must be a non-empty list of {'role': ..., 'content': ...} dicts", field="messages"
        )
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise InvalidOptionError(f"message {i} must be a dict, not {type(m).__name__}", field="messages")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not role:
            raise InvalidOptionError(f"message {i} has no 'role' string", field="messages")
        if content is not None and not isinstance(content, (str, list)):
            raise InvalidOptionError(
                f"message {i}: 'content' must be a string or a list of parts", field="messages"
            )
        if isinstance(content, list):
            # OpenAI content parts: only text parts can be rendered
            texts = []
            for part in content:
                if not isinstance(part, Mapping) or part.get("type") != "text":
                    raise InvalidOptionError(
                        f"message {i}: only text content parts are supported", field="messages"
                    )
                texts.append(str(part.get("text", "")))
            m = {**m, "content": "".join(texts)}
        out.append(dict(m))
    return agent_messages(out)


def _text_chars(value: Any) -> int:
    """Characters of text in a message structure (what the template limits scale with)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, Mapping):
        return sum(_text_chars(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_text_chars(v) for v in value)
    return 0


def _renderer(
    template: str | None,
    bos_token: str,
    eos_token: str,
    input_chars: int,
    extra: Mapping[str, Any] | None = None,
) -> Any:
    if not template:
        raise InvalidOptionError(
            "the model has no chat template (tokenizer.chat_template); pass chat_template=",
            field="chat_template",
        )

    def render(msgs: list[dict[str, Any]]) -> str:
        variables = {**(extra or {}), "messages": msgs, "bos_token": bos_token, "eos_token": eos_token}
        try:
            text = render_template(template, variables, input_chars=input_chars)
        except TemplateLimitError as exc:
            raise InvalidOptionError(f"the chat template was stopped: {exc}", field="chat_template") from None
        except InvalidOptionError:
            raise
        except jinja2.TemplateSyntaxError as exc:
            raise InvalidOptionError(
                f"the chat template does not parse ({type(exc).__name__}: {exc})", field="chat_template"
            ) from None
        except Exception as exc:
            raise InvalidOptionError(
                f"the chat template could not render these messages ({type(exc).__name__}: {exc})",
                field="chat_template",
            ) from None
        try:
            check_text(text, "prompt")
        except ValueError as exc:
            raise InvalidOptionError(str(exc), field="prompt") from None
        return text

    return render


def render_messages(
    messages: Any,
    template: str | None,
    bos_token: str,
    eos_token: str,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """The prompt text of ``messages`` under ``template`` (with the generation prompt),
    rendered within the limits of :mod:`mtpstream._templates` (blocking: call it off
    the event loop).

    Raises:
        InvalidOptionError: no template (``field="chat_template"``), malformed messages,
            a template that fails to render (its ``raise_exception`` included) or goes
            over a time or size limit.
    """
    msgs = check_messages(messages)
    chars = _text_chars(msgs) + _text_chars(extra)
    return str(_renderer(template, bos_token, eos_token, chars, extra)(msgs))


def chat_prompt(
    messages: Any,
    template: str | None,
    bos_token: str,
    eos_token: str,
    tokenize: Tokenizer,
    token_text: Callable[[int], str],
    extra: Mapping[str, Any] | None = None,
) -> tuple[str, list[int]]:
    """:func:`render_messages` and the prompt's token ids, where text inside a message
    never becomes a special token (see :mod:`mtpstream._chat_tokens`); the template's
    own special-token text does. ``extra``: more template variables (``tools``,
    ``chat_template_kwargs``). Blocking: call it off the event loop.

    Raises:
        InvalidOptionError: as :func:`render_messages`; special-token text in a message
            that the template moves or cuts (``field="messages"``) or in the tools
            (``field="tools"``).
    """
    msgs = check_messages(messages)
    tools = (extra or {}).get("tools")
    if tools and special_pieces(json.dumps(tools, ensure_ascii=False), tokenize, token_text) is not None:
        raise InvalidOptionError(
            "invalid option 'tools': it holds special-token text (such as '<|im_start|>'); remove it",
            field="tools",
        )
    render = _renderer(template, bos_token, eos_token, _text_chars(msgs) + _text_chars(extra), extra)
    return chat_tokens(msgs, render, tokenize, token_text, bos_token)


def generation_start(
    messages: Any,
    template: str | None,
    bos_token: str,
    eos_token: str,
    tokenize: Tokenizer,
    tokens: Sequence[int],
    extra: Mapping[str, Any] | None = None,
) -> int:
    """How many leading ``tokens`` (:func:`chat_prompt`'s prompt of the same call) the
    conversation renders to before the template's generation prompt; -1 when it cannot
    be told (the template fails without the generation prompt, or its rendering is not
    where ``tokens`` begin). The next turn shares the prompt up to there, also when its
    template drops this turn's reasoning. Blocking, as :func:`chat_prompt`.
    """
    msgs = check_messages(messages)
    variables = {**(extra or {}), "add_generation_prompt": False}
    try:
        history = _renderer(
            template, bos_token, eos_token, _text_chars(msgs) + _text_chars(extra), variables
        )(msgs)
    except InvalidOptionError:
        return -1
    if not history:
        return -1
    add_special = not (bos_token and history.startswith(bos_token))
    mine = tokenize(history, add_special, True)
    n = 0
    for a, b in zip(mine, tokens, strict=False):
        if a != b:
            break
        n += 1
    # the last token may merge with the generation prompt's first; more than that: unknown
    return n if len(mine) - n <= 1 and n < len(tokens) else -1
