"""Agent turns as chat templates expect them: an assistant message's ``tool_calls``
(OpenAI sends ``function.arguments`` as a JSON string) with the arguments decoded to
an object that also reads as its JSON text, so every template renders it (Qwen3.5
iterates ``arguments|items``, Qwen3 writes ``arguments|tojson``, DeepSeek concatenates
``'...' + arguments|tojson``); ``role: "developer"`` as ``system``; an assistant's
``content: null`` as ``""``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import InvalidOptionError

__all__ = ["Arguments", "agent_messages"]


class Arguments(dict[str, Any]):
    """A tool call's arguments: a dict for templates that iterate or ``tojson`` them,
    their JSON text for templates that print or concatenate them."""

    def __str__(self) -> str:
        return json.dumps(self, ensure_ascii=False)

    def __add__(self, other: Any) -> Any:
        return str(self) + other if isinstance(other, str) else NotImplemented

    def __radd__(self, other: Any) -> Any:
        return other + str(self) if isinstance(other, str) else NotImplemented


def _fail(i: int, j: int, what: str) -> InvalidOptionError:
    return InvalidOptionError(f"message {i}: tool_calls[{j}] {what}", field="messages")


def _arguments(raw: Any, i: int, j: int) -> Arguments:
    if raw is None or raw == "":
        return Arguments()
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise _fail(i, j, f"function.arguments is not JSON ({exc})") from None
    if not isinstance(raw, Mapping):
        raise _fail(i, j, "function.arguments must be a JSON object (or its text)")
    return Arguments(raw)


def _tool_call(call: Any, i: int, j: int) -> dict[str, Any]:
    if not isinstance(call, Mapping):
        raise _fail(i, j, "must be a dict")
    fn = call.get("function")
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise _fail(i, j, "needs function: {'name': ..., 'arguments': ...}")
    if call.get("type", "function") != "function":
        raise _fail(i, j, f"has type {call.get('type')!r}; only 'function' is supported")
    function = {**fn, "arguments": _arguments(fn.get("arguments"), i, j)}
    return {**call, "type": "function", "function": function}


def agent_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with ``developer`` as ``system`` and tool calls' arguments decoded.

    Raises:
        InvalidOptionError: malformed ``tool_calls`` or arguments that are not a JSON
            object (``field="messages"``).
    """
    out = []
    for i, m in enumerate(messages):
        if m.get("role") == "developer":
            m = {**m, "role": "system"}
        if m.get("role") == "assistant" and m.get("content") is None:
            m = {**m, "content": ""}  # OpenAI's null beside tool calls; templates test it as text
        calls = m.get("tool_calls")
        if calls is not None:
            if isinstance(calls, (str, bytes)) or not isinstance(calls, Sequence):
                raise InvalidOptionError(f"message {i}: tool_calls must be a list", field="messages")
            m = {**m, "tool_calls": [_tool_call(c, i, j) for j, c in enumerate(calls)]}
            if not calls:
                del m["tool_calls"]
        out.append(m)
    return out
