"""Anthropic's Messages API (``POST /v1/messages``) in OpenAI's terms: a request body
translated into a Chat Completions body (so every chat check, limit, tool and
reasoning option applies once), a whole chat completion shown as an Anthropic
``message``, and Anthropic's error object.

Request fields and what they become:

==================  ==================================================================
Anthropic           Chat Completions
==================  ==================================================================
model               model (the response names the served model, as chat does)
max_tokens          max_tokens (required)
system              a first ``system`` message (a string or text blocks)
messages            messages: text blocks joined; ``tool_use`` blocks as the
                    assistant's ``tool_calls``; ``thinking`` blocks as its
                    ``reasoning_content`` (``redacted_thinking`` dropped);
                    ``tool_result`` blocks as ``tool`` messages (``is_error``: the
                    text prefixed with ``Error: ``); image and document blocks, and
                    a last assistant message (a prefill), are a 400
stop_sequences      stop
temperature/top_p   temperature/top_p (mtpstream's default stays greedy)
top_k               top_k
tools               tools: ``{name, description, input_schema}`` as functions
tool_choice         ``auto``/``any``/``tool``/``none`` as ``auto``/``required``/
                    the function/``none``; ``disable_parallel_tool_use`` as
                    ``parallel_tool_calls: false``
thinking            ``enabled`` (``budget_tokens`` checked, not enforced: thinking
                    counts toward ``max_tokens``) / ``disabled`` as
                    ``chat_template_kwargs.enable_thinking`` true / false;
                    ``adaptive``: the template's default
output_config       ``format`` (``{type: json_schema, schema}``) as ``response_format``
                    (a grammar); ``effort`` as ``reasoning_effort`` (``max``: ``xhigh``)
metadata            accepted (``user_id``), no effect; so are ``service_tier`` and
                    a top-level ``cache_control``
==================  ==================================================================

mtpstream's own sampling options (``seed``, ``min_p``, the penalties) and
``chat_template_kwargs`` pass through; any other field is a 400 naming it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from .completions import ChatCompletion
from .errors import InvalidOptionError

__all__ = [
    "error_body",
    "message_of",
    "messages_body",
    "stop_reason",
    "tool_use_id",
    "usage_of",
]

# fields with no effect here (each checked)
_NO_EFFECT = ("metadata", "service_tier", "cache_control")
# mtpstream's options that pass through under their chat names
_PASSED = ("seed", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty", "chat_template_kwargs")
_SAMPLING = ("temperature", "top_p", "top_k")
_ENVELOPE: tuple[str, ...] = ("model", "max_tokens", "messages", "system", "stream", "stop_sequences")
_ENVELOPE += ("tools", "tool_choice", "thinking", "output_config")
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def _fail(field: str, message: str) -> InvalidOptionError:
    return InvalidOptionError(f"invalid '{field}': {message}", field=field)


# ------------------------------------------------------------------ the request
def messages_body(body: Mapping[str, Any], *, need_max_tokens: bool = True) -> dict[str, Any]:
    """The Chat Completions body of an Anthropic Messages body (see the module docstring).

    Raises:
        InvalidOptionError: a malformed or unsupported field (``.field`` names it).
    """
    unknown = sorted(k for k in body if k not in _ENVELOPE + _NO_EFFECT + _PASSED + _SAMPLING)
    if unknown:
        raise _fail(unknown[0], "not a field of /v1/messages that mtpstream supports")
    _check_no_effect(body)
    out: dict[str, Any] = {k: body[k] for k in _PASSED + _SAMPLING + ("model", "stream") if k in body}
    if need_max_tokens or "max_tokens" in body:
        out["max_tokens"] = _max_tokens(body.get("max_tokens"))
    out["messages"] = _system(body.get("system")) + _messages(body.get("messages"))
    if body.get("stop_sequences") is not None:
        out["stop"] = _stop_sequences(body["stop_sequences"])
    if body.get("tools") is not None:
        out["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        out.update(_tool_choice(body["tool_choice"]))
    if body.get("output_config") is not None:
        out.update(_output_config(body["output_config"]))
    thinking = _thinking(body.get("thinking"))
    if thinking is not None:
        kwargs = out.get("chat_template_kwargs")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise _fail("chat_template_kwargs", "must be an object")
        out["chat_template_kwargs"] = {"enable_thinking": thinking, **(kwargs or {})}
    return out


def _check_no_effect(body: Mapping[str, Any]) -> None:
    metadata = body.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, Mapping) and all(isinstance(v, (str, type(None))) for v in metadata.values())
    ):
        raise _fail("metadata", "must be an object such as {'user_id': '...'}")
    tier = body.get("service_tier")
    if tier is not None and not isinstance(tier, str):
        raise _fail("service_tier", "must be a string")


def _max_tokens(value: Any) -> int:
    if value is None:
        raise _fail("max_tokens", "is required")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail("max_tokens", f"must be a positive integer (got {value!r:.50})")
    return value


def _text_of(blocks: Any, where: str, field: str) -> str:
    """A string, or text blocks joined (other blocks refused)."""
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise _fail(field, f"{where} must be a string or a list of content blocks")
    parts = []
    for j, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind != "text" or not isinstance(block.get("text"), str):
            raise _unsupported_block(field, f"{where}[{j}]", kind)
        parts.append(block["text"])
    return "".join(parts)


def _unsupported_block(field: str, where: str, kind: Any) -> InvalidOptionError:
    if kind in ("image", "document"):
        return _fail(field, f"{where} is an {kind} block: mtpstream takes text only")
    return _fail(field, f"{where} must be a text block (got type {kind!r:.40})")


def _system(system: Any) -> list[dict[str, Any]]:
    if system is None:
        return []
    text = _text_of(system, "system", "system")
    return [{"role": "system", "content": text}] if text else []


def _messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise _fail("messages", "must be a non-empty list of {'role', 'content'} objects")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, Mapping) else None
        if role not in ("user", "assistant"):
            raise _fail("messages", f"messages[{i}].role must be 'user' or 'assistant' (got {role!r:.40})")
        content = m.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        elif not isinstance(content, list):
            raise _fail("messages", f"messages[{i}].content must be a string or a list of content blocks")
        elif role == "user":
            out += _user_blocks(content, i)
        else:
            out.append(_assistant_blocks(content, i))
    if messages[-1].get("role") == "assistant":
        raise _fail(
            "messages", "the last message must be the user's: a prefilled assistant turn is not supported"
        )
    return out


def _user_blocks(blocks: list[Any], i: int) -> list[dict[str, Any]]:
    """Tool results as ``tool`` messages (they answer the previous turn), then the text."""
    results: list[dict[str, Any]] = []
    texts: list[str] = []
    for j, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, Mapping) else None
        where = f"messages[{i}].content[{j}]"
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_result":
            results.append(_tool_result(block, where))
        else:
            raise _unsupported_block("messages", where, kind)
    if texts or not results:
        results.append({"role": "user", "content": "".join(texts)})
    return results


def _tool_result(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise _fail("messages", f"{where}.tool_use_id must be a non-empty string")
    content = block.get("content", "")
    text = _text_of(content if content is not None else "", f"{where}.content", "messages")
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise _fail("messages", f"{where}.is_error must be true or false")
    if is_error:
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _assistant_blocks(blocks: list[Any], i: int) -> dict[str, Any]:
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, Mapping) else None
        where = f"messages[{i}].content[{j}]"
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            thinking.append(block["thinking"])
        elif kind == "redacted_thinking":
            continue
        elif kind == "tool_use":
            calls.append(_tool_use(block, where))
        else:
            raise _unsupported_block("messages", where, kind)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    if calls:
        message["tool_calls"] = calls
    return message


def _tool_use(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
    if not isinstance(call_id, str) or not isinstance(name, str) or not name:
        raise _fail("messages", f"{where}: a tool_use block needs 'id' and 'name' strings")
    if not isinstance(arguments, Mapping):
        raise _fail("messages", f"{where}.input must be an object")
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": dict(arguments)}}


def _stop_sequences(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise _fail("stop_sequences", "must be a list of non-empty strings")
    return value


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _fail("tools", "must be a list of {'name', 'description', 'input_schema'} objects")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping) or tool.get("type", "custom") not in ("custom", None):
            kind = tool.get("type") if isinstance(tool, Mapping) else None
            raise _fail(
                "tools", f"tools[{i}] must be a custom tool (server tools such as {kind!r:.40} are not run)"
            )
        if "input_schema" not in tool:
            raise _fail("tools", f"tools[{i}] needs an 'input_schema'")
        function = {"name": tool.get("name"), "parameters": tool["input_schema"]}
        if tool.get("description") is not None:
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> dict[str, Any]:
    kind = choice.get("type") if isinstance(choice, Mapping) else None
    modes = {"auto": "auto", "any": "required", "none": "none"}
    if kind in modes:
        out: dict[str, Any] = {"tool_choice": modes[kind]}
    elif kind == "tool" and isinstance(choice.get("name"), str):
        out = {"tool_choice": {"type": "function", "function": {"name": choice["name"]}}}
    else:
        raise _fail(
            "tool_choice", "must be {'type': 'auto' | 'any' | 'none'} or {'type': 'tool', 'name': ...}"
        )
    parallel = choice.get("disable_parallel_tool_use")
    if parallel is not None:
        if not isinstance(parallel, bool):
            raise _fail("tool_choice", "disable_parallel_tool_use must be true or false")
        out["parallel_tool_calls"] = not parallel
    return out


def _thinking(thinking: Any) -> bool | None:
    """``enable_thinking`` for the template (None: its default)."""
    if thinking is None:
        return None
    kind = thinking.get("type") if isinstance(thinking, Mapping) else None
    if kind == "disabled":
        return False
    if kind == "adaptive":
        return None
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise _fail("thinking", f"budget_tokens must be a positive integer (got {budget!r:.40})")
        return True
    raise _fail(
        "thinking", "must be {'type': 'enabled', 'budget_tokens': N}, {'type': 'disabled'} or adaptive"
    )


def _output_config(config: Any) -> dict[str, Any]:
    if not isinstance(config, Mapping) or not set(config) <= {"format", "effort"}:
        raise _fail("output_config", "must be an object of 'format' and 'effort'")
    out: dict[str, Any] = {}
    fmt = config.get("format")
    if fmt is not None:
        if not isinstance(fmt, Mapping) or fmt.get("type") != "json_schema" or "schema" not in fmt:
            raise _fail("output_config", "format must be {'type': 'json_schema', 'schema': {...}}")
        out["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": fmt["schema"]},
        }
    effort = config.get("effort")
    if effort is not None:
        if effort not in ("low", "medium", "high", "xhigh", "max"):
            raise _fail(
                "output_config", f"effort must be low, medium, high, xhigh or max (got {effort!r:.40})"
            )
        out["reasoning_effort"] = "xhigh" if effort == "max" else effort
    return out


# ------------------------------------------------------------------ the response
def tool_use_id(call_id: str) -> str:
    """A chat tool call's id in Anthropic's style (``toolu_...``)."""
    return "toolu_" + call_id.removeprefix("call_") if call_id.startswith("call_") else call_id


def stop_reason(finish_reason: str | None, stop: str | None) -> str:
    """Anthropic's ``stop_reason`` of a chat ``finish_reason`` (and the stop string)."""
    if finish_reason == "length":
        return "max_tokens"
    if finish_reason == "tool_calls":
        return "tool_use"
    return "stop_sequence" if stop is not None else "end_turn"


def usage_of(prompt_tokens: int, completion_tokens: int, cached: int | None) -> dict[str, Any]:
    """Anthropic's usage: with ``cached`` (reported), the cached prompt tokens are
    ``cache_read_input_tokens`` and not part of ``input_tokens``, as Anthropic counts."""
    if cached is None:
        return {"input_tokens": prompt_tokens, "output_tokens": completion_tokens}
    return {
        "input_tokens": prompt_tokens - cached,
        "output_tokens": completion_tokens,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    }


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def message_of(result: ChatCompletion, report_cached: bool) -> dict[str, Any]:
    """A whole chat completion as an Anthropic ``message``: thinking, text, then
    tool_use blocks (their ``input`` parsed)."""
    choice = result.choices[0]
    msg = choice.message
    content: list[dict[str, Any]] = []
    if msg.reasoning_content:
        content.append({"type": "thinking", "thinking": msg.reasoning_content, "signature": ""})
    if msg.content:
        content.append({"type": "text", "text": msg.content})
    for call in msg.tool_calls or ():
        arguments = json.loads(call.function.arguments or "{}")
        content.append(
            {"type": "tool_use", "id": tool_use_id(call.id), "name": call.function.name, "input": arguments}
        )
    u = result.usage
    cached = u.prompt_tokens_details.cached_tokens if report_cached else None
    return {
        "id": new_message_id(),
        "type": "message",
        "role": "assistant",
        "content": content,
        "model": result.model,
        "stop_reason": stop_reason(choice.finish_reason, choice.stop_reason),
        "stop_sequence": choice.stop_reason,
        "usage": usage_of(u.prompt_tokens, u.completion_tokens, cached),
    }


# ------------------------------------------------------------------ errors
def error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error object for an HTTP status."""
    kind = _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}
