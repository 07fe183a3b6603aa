"""OpenAI's Responses API, the request side: a ``POST /v1/responses`` body turned into
the Chat Completions body that :class:`~mtpstream._openai.ChatBody` parses, so every
chat check, limit, tool and reasoning option applies once.

=========================  ==========================================================
Responses                  Chat Completions (what the call runs as)
=========================  ==========================================================
``input`` (string)         one ``user`` message
``input`` message items    messages (``developer`` as ``system``; ``input_text`` and
                           ``output_text`` parts joined; images, files, audio: 400)
``function_call`` items    the assistant message's ``tool_calls``
``function_call_output``   a ``tool`` message (``tool_call_id``)
``reasoning`` items        ``reasoning_content`` of the next assistant message
``instructions``           a ``system`` message first (joined with one the input opens)
``tools`` (flat function)  ``tools`` (``{"type": "function", "function": {...}}``)
``tool_choice``            ``tool_choice`` (``{"type": "function", "name": ...}`` too)
``text.format``            ``response_format`` (``json_schema`` flat, or ``json_object``);
                           not applied when ``tool_choice`` forces a call (the output
                           is then the call, which its own grammar shapes)
``reasoning.effort``       ``reasoning_effort``
``max_output_tokens``      ``max_tokens``
=========================  ==========================================================

``temperature``, ``top_p``, ``parallel_tool_calls``, ``metadata``, ``user``, ``store``,
``safety_identifier``, ``service_tier`` and ``prompt_cache_key`` pass through as chat
takes them (our own options too: ``top_k``, ``seed``, ``stop``, ``chat_template_kwargs``,
...). ``include``, ``truncation``, ``text.verbosity``, ``reasoning.summary``,
``prompt_cache_retention`` and ``stream_options`` are checked and have no effect.

Stateless: nothing is stored (a response says ``"store": false``), so
``previous_response_id``, ``conversation``, ``item_reference`` items and ``background``
are refused with a 400 naming them. Errors name the Responses field (``param``):
``input``, ``max_output_tokens``, ``text.format``, ``reasoning.effort``...
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ._openai import RequestBody, stream_flag
from ._server_http import HTTPError
from .errors import InvalidOptionError

__all__ = ["ResponsesBody", "chat_body", "renamed"]

# chat's option names, and the Responses field an error about each names
_FIELDS = {
    "messages": "input",
    "prompt": "input",
    "max_tokens": "max_output_tokens",
    "response_format": "text.format",
    "reasoning_effort": "reasoning.effort",
    "temp": "temperature",
}
# chat's parameters that the Responses API spells otherwise (or lacks)
_CHAT_ONLY = {
    "messages": "give the conversation as 'input'",
    "max_tokens": "use 'max_output_tokens'",
    "max_completion_tokens": "use 'max_output_tokens'",
    "response_format": "use 'text': {'format': ...}",
    "reasoning_effort": "use 'reasoning': {'effort': ...}",
    "logprobs": "not a Responses parameter",
    "n": "not a Responses parameter",
    "functions": "use 'tools'",
    "function_call": "use 'tool_choice'",
}
_STATEFUL = {
    "conversation": "conversations are not supported: this server stores nothing; send the whole "
    "conversation in 'input'",
    "prompt": "stored prompt templates are not supported: send 'instructions' and 'input'",
    "max_tool_calls": "not supported (there are no built-in tools to limit)",
}
_INCLUDABLE = frozenset(
    {
        "message.output_text.logprobs",
        "reasoning.encrypted_content",
        "message.input_image.image_url",
        "file_search_call.results",
        "web_search_call.results",
        "web_search_call.action.sources",
        "code_interpreter_call.outputs",
        "computer_call_output.output.image_url",
    }
)
_ROLES = frozenset({"user", "system", "developer", "assistant"})
_EFFORT_KEYS = frozenset({"effort", "summary", "generate_summary"})


def _bad(field: str, message: str) -> InvalidOptionError:
    return InvalidOptionError(f"invalid option '{field}': {message}", field=field)


class ResponsesBody(RequestBody):
    """The body of ``POST /v1/responses``: ``stream`` and, in ``options``, the request
    as sent (translated by :func:`chat_body` off the event loop)."""

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> ResponsesBody:
        """The envelope, checked in O(1) on the event loop.

        Raises:
            HTTPError: ``previous_response_id`` (400: nothing is stored).
            InvalidOptionError: ``stream`` not a bool, ``background`` true.
        """
        previous = body.get("previous_response_id")
        if previous is not None:
            raise HTTPError(
                400,
                f"previous_response_id is not supported: this server is stateless and stored no response "
                f"{str(previous)[:80]!r}; send the whole conversation in 'input' (store is always false)",
                "invalid_request_error",
                "previous_response_id",
                "previous_response_not_found",
            )
        if body.get("background") not in (None, False):
            raise _bad("background", "background responses are not supported (nothing is stored to poll)")
        return cls(stream=stream_flag(body.get("stream")), options=dict(body))


# ------------------------------------------------------------------ the chat body
def chat_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The Chat Completions body that runs the Responses request ``body`` (the table in
    the module docstring). Walks the whole input: call it off the event loop.

    Raises:
        InvalidOptionError: a malformed or unsupported field (``.field`` names it as the
            Responses API spells it).
    """
    out: dict[str, Any] = {}
    for name, value in body.items():
        if name in _CHAT_ONLY:
            raise InvalidOptionError(
                f"option '{name}' is not a Responses parameter: {_CHAT_ONLY[name]}", field=name
            )
        if name in _STATEFUL and value is not None:
            raise InvalidOptionError(f"option '{name}': {_STATEFUL[name]}", field=name)
        if name not in _HANDLED:
            out[name] = value  # chat's own check: passed on, checked there, or refused as unknown
    _check_no_effect(body)
    out["messages"] = messages_of(body.get("input"), body.get("instructions"))
    if body.get("tools") is not None:
        out["tools"] = tools_of(body["tools"])
    if body.get("tool_choice") is not None:
        out["tool_choice"] = tool_choice_of(body["tool_choice"])
    fmt = text_format_of(body.get("text"))
    if fmt is not None and not _forced(body.get("tool_choice")):
        out["response_format"] = fmt
    effort = effort_of(body.get("reasoning"))
    if effort is not None:
        out["reasoning_effort"] = effort
    if body.get("max_output_tokens") is not None:
        out["max_tokens"] = body["max_output_tokens"]
    top = body.get("top_logprobs")
    if top is not None and (isinstance(top, bool) or top != 0):
        raise _bad(
            "top_logprobs", "log-probabilities are not served on /v1/responses (use /v1/chat/completions)"
        )
    return out


_HANDLED = frozenset(
    {
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "text",
        "reasoning",
        "max_output_tokens",
        "top_logprobs",
        "include",
        "truncation",
        "prompt_cache_retention",
        "stream_options",
        "stream",
        "background",
        "previous_response_id",
        "conversation",
        "prompt",
        "max_tool_calls",
    }
)


def _forced(choice: Any) -> bool:
    """Whether ``tool_choice`` forces a call: the output is then that call, and
    ``text.format`` (the shape of text output) has nothing to shape."""
    return choice == "required" or (isinstance(choice, Mapping) and choice.get("type") == "function")


def _check_no_effect(body: Mapping[str, Any]) -> None:
    include = body.get("include")
    if include is not None:
        if not isinstance(include, list) or not all(isinstance(v, str) for v in include):
            raise _bad("include", "must be a list of strings")
        unknown = sorted(set(include) - _INCLUDABLE)
        if unknown:
            raise _bad("include", f"unknown values {unknown[:5]}")
        if "message.output_text.logprobs" in include:
            raise _bad(
                "include", "log-probabilities are not served on /v1/responses (use /v1/chat/completions)"
            )
    if body.get("truncation") not in (None, "auto", "disabled"):
        raise _bad("truncation", "must be 'auto' or 'disabled'")
    retention = body.get("prompt_cache_retention")
    if retention is not None and not isinstance(retention, str):
        raise _bad("prompt_cache_retention", "must be a string")
    options = body.get("stream_options")
    if options is not None:
        if not body.get("stream"):
            raise _bad("stream_options", "only allowed when streaming (stream: true)")
        if not isinstance(options, Mapping) or not all(
            k == "include_obfuscation" and (v is None or isinstance(v, bool)) for k, v in options.items()
        ):
            raise _bad("stream_options", "must be {'include_obfuscation': true or false}")


# ------------------------------------------------------------------ input
def _text(value: Any, where: str, kinds: frozenset[str]) -> str:
    """The text of a content: a string, or a list of text parts of ``kinds``."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, Mapping)) or not isinstance(value, Sequence):
        raise _bad("input", f"{where}.content must be a string or a list of content parts")
    texts = []
    for j, part in enumerate(value):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in ("input_image", "input_file", "input_audio"):
            raise _bad("input", f"{where}.content[{j}] is {kind}: this server reads text only")
        if not isinstance(kind, str) or kind not in kinds:
            raise _bad("input", f"{where}.content[{j}] must be one of {sorted(kinds)} (got {kind!r:.40})")
        text = part.get("refusal") if kind == "refusal" else part.get("text")
        if not isinstance(text, str):
            raise _bad("input", f"{where}.content[{j}] has no text string")
        texts.append(text)
    return "".join(texts)


_MESSAGE_PARTS = frozenset({"input_text", "output_text"})
_ASSISTANT_PARTS = frozenset({"input_text", "output_text", "refusal"})
_REASONING_PARTS = frozenset({"reasoning_text", "summary_text", "text"})


class _Messages:
    """Chat messages, built item by item."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.reasoning: str | None = None  # of the next assistant message
        self.names: dict[str, str] = {}  # call id -> function name

    def assistant(self, content: str | None) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": content}
        if self.reasoning is not None:
            msg["reasoning_content"], self.reasoning = self.reasoning, None
        self.messages.append(msg)
        return msg

    def item(self, i: int, item: Any) -> None:
        where = f"input[{i}]"
        if not isinstance(item, Mapping):
            raise _bad("input", f"{where} must be an object")
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            self.message(where, item)
        elif kind == "function_call":
            self.call(where, item)
        elif kind == "function_call_output":
            call_id = _string(item, "call_id", where)
            text = _text(item.get("output"), where, _MESSAGE_PARTS)
            tool = {"role": "tool", "tool_call_id": call_id, "content": text}
            if call_id in self.names:
                tool["name"] = self.names[call_id]
            self.messages.append(tool)
        elif kind == "reasoning":
            parts = item.get("content") or item.get("summary") or []
            self.reasoning = _text(parts, where, _REASONING_PARTS)
        elif kind == "item_reference":
            raise _bad(
                "input", f"{where} is an item_reference: this server stores no items; send the item itself"
            )
        else:
            raise _bad(
                "input",
                f"{where} has type {kind!r:.40}: only message, function_call, "
                "function_call_output and reasoning items are supported",
            )

    def message(self, where: str, item: Mapping[str, Any]) -> None:
        role = item.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise _bad("input", f"{where}.role must be one of {sorted(_ROLES)} (got {role!r:.40})")
        if role == "assistant":
            self.assistant(_text(item.get("content"), where, _ASSISTANT_PARTS))
            return
        self.messages.append({"role": role, "content": _text(item.get("content"), where, _MESSAGE_PARTS)})

    def call(self, where: str, item: Mapping[str, Any]) -> None:
        call_id, name = _string(item, "call_id", where), _string(item, "name", where)
        arguments = item.get("arguments", "")
        if not isinstance(arguments, str) or not _json_object(arguments):
            raise _bad("input", f"{where}.arguments must be a JSON object's text (got {arguments!r:.60})")
        last = self.messages[-1] if self.messages else None
        # calls right after an assistant turn (its text, other calls) belong to that turn
        msg = last if last is not None and last["role"] == "assistant" else self.assistant(None)
        call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        msg.setdefault("tool_calls", []).append(call)
        self.names[call_id] = name


def _json_object(text: str) -> bool:
    if not text.strip():
        return True  # no arguments
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


def _string(item: Mapping[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise _bad("input", f"{where}.{key} must be a non-empty string")
    return value


def messages_of(input_: Any, instructions: Any) -> list[dict[str, Any]]:
    """The chat messages of ``input`` (a string or a list of items) after ``instructions``.

    Raises:
        InvalidOptionError: malformed items or instructions (``field="input"`` or
            ``"instructions"``).
    """
    if instructions is not None and not isinstance(instructions, str):
        raise _bad("instructions", "must be a string")
    if isinstance(input_, str):
        messages = [{"role": "user", "content": input_}]
    elif isinstance(input_, list):
        built = _Messages()
        for i, item in enumerate(input_):
            built.item(i, item)
        messages = built.messages
    elif input_ is None:
        raise InvalidOptionError("'input' is required: a string or a list of input items", field="input")
    else:
        raise _bad("input", "must be a string or a list of input items")
    if instructions:
        first = messages[0] if messages else None
        if first is not None and first["role"] in ("system", "developer"):
            messages[0] = {"role": "system", "content": f"{instructions}\n\n{first['content']}"}
        else:
            messages.insert(0, {"role": "system", "content": instructions})
    if not messages:
        raise _bad("input", "must hold at least one message")
    return messages


# ------------------------------------------------------------------ options
def tools_of(tools: Any) -> list[dict[str, Any]]:
    """Responses' flat function tools as chat's (``{"type": "function", "function": {...}}``).

    Raises:
        InvalidOptionError: not a list of function tools (``field="tools"``).
    """
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
        raise _bad("tools", "must be a list of {'type': 'function', 'name': ..., 'parameters': {...}}")
    out = []
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, Mapping) else None
        if kind != "function":
            raise _bad("tools", f"tools[{i}] has type {kind!r:.40}: only function tools are supported")
        assert isinstance(tool, Mapping)
        function = {k: tool[k] for k in ("name", "description", "parameters") if tool.get(k) is not None}
        strict = tool.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise _bad("tools", f"tools[{i}].strict must be true or false")
        out.append({"type": "function", "function": function})
    return out


def tool_choice_of(choice: Any) -> Any:
    """Responses' ``tool_choice`` as chat's.

    Raises:
        InvalidOptionError: a hosted tool, ``allowed_tools`` or a malformed choice.
    """
    if isinstance(choice, str):
        return choice  # auto, none, required: chat checks the value
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        name = choice.get("name")
        if not isinstance(name, str):
            raise _bad("tool_choice", "{'type': 'function'} needs a 'name' string")
        return {"type": "function", "function": {"name": name}}
    kind = choice.get("type") if isinstance(choice, Mapping) else type(choice).__name__
    raise _bad(
        "tool_choice",
        f"must be 'auto', 'none', 'required' or {{'type': 'function', 'name': ...}} (got {kind!r:.40})",
    )


def text_format_of(text: Any) -> dict[str, Any] | None:
    """``text.format`` as chat's ``response_format`` (None: plain text).

    Raises:
        InvalidOptionError: ``text`` not an object of ``format``/``verbosity``, an
            unknown format type (``field="text"``/``"text.format"``).
    """
    if text is None:
        return None
    if not isinstance(text, Mapping) or not set(text) <= {"format", "verbosity"}:
        raise _bad("text", "must be an object with 'format' (and 'verbosity')")
    if text.get("verbosity") not in (None, "low", "medium", "high"):
        raise _bad("text", "verbosity must be 'low', 'medium' or 'high'")
    fmt = text.get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, Mapping) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        assert isinstance(fmt, Mapping)
        spec = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": spec}
    raise _bad("text.format", f"type must be 'text', 'json_object' or 'json_schema' (got {kind!r:.40})")


def effort_of(reasoning: Any) -> Any:
    """``reasoning.effort`` (chat's ``reasoning_effort`` checks the value); the summary
    options are accepted, with no effect (the reasoning comes whole, as reasoning text).

    Raises:
        InvalidOptionError: ``reasoning`` not an object of ``effort``/``summary``.
    """
    if reasoning is None:
        return None
    if not isinstance(reasoning, Mapping) or not set(reasoning) <= _EFFORT_KEYS:
        raise _bad("reasoning", "must be an object with 'effort' (and 'summary')")
    for key in ("summary", "generate_summary"):
        if reasoning.get(key) not in (None, "auto", "concise", "detailed"):
            raise _bad("reasoning", f"{key} must be 'auto', 'concise' or 'detailed'")
    return reasoning.get("effort")


def renamed(exc: InvalidOptionError) -> InvalidOptionError:
    """``exc`` naming the Responses field instead of chat's option."""
    field = exc.field
    if field not in _FIELDS:
        return exc
    new = _FIELDS[field]
    return InvalidOptionError(str(exc).replace(f"'{field}'", f"'{new}'"), field=new)
