"""OpenAI's Responses API, the result side: the ``response`` object of a chat
completion, and :class:`ResponseEvents`, the framing that turns a stream of chat
chunks into the Responses server-sent events (``event: NAME`` + ``data: JSON``, each
with its ``sequence_number``).

A stream runs ``response.created``, ``response.in_progress``; per output item
``response.output_item.added``, its deltas (``response.output_text.delta`` inside a
``response.content_part.added``/``.done`` pair, ``response.reasoning_text.delta``,
``response.function_call_arguments.delta``), their ``.done`` events and
``response.output_item.done``; then ``response.completed`` (``response.incomplete``
when ``max_output_tokens`` cut it). A failure ends it with ``error`` and
``response.failed``. Output items: ``reasoning`` (the text between the template's
think markers, as ``reasoning_text`` content; no summary), ``message`` (one
``output_text``), ``function_call``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from ._server_calls import sse
from .completions import ChatCompletion, ChatCompletionChunk, CompletionUsage, FinishReason

__all__ = ["ResponseEvents", "Shape", "response_of"]

TokenCount = Callable[[str], int]
_PREFIXES = {"message": "msg", "reasoning": "rs"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class Shape:
    """What a call's ``response`` objects share: its id, creation time and the request
    fields a response echoes."""

    def __init__(self, request: dict[str, Any], model: str, report_cached: bool) -> None:
        self.id = new_id("resp")
        self.created_at = int(time.time())
        self.model = model
        self.report_cached = report_cached
        text = request.get("text")
        reasoning = request.get("reasoning")
        self.echo: dict[str, Any] = {
            "instructions": request.get("instructions"),
            "max_output_tokens": request.get("max_output_tokens"),
            "metadata": request.get("metadata") or {},
            "parallel_tool_calls": request.get("parallel_tool_calls") is not False,
            "previous_response_id": None,
            "reasoning": {
                "effort": reasoning.get("effort") if isinstance(reasoning, dict) else None,
                "summary": None,
            },
            "store": False,  # nothing is stored (GET /v1/responses/{id} is a 404)
            "temperature": _given(request, "temperature", 0.0),  # greedy unless asked
            "text": {"format": (text or {}).get("format") or {"type": "text"}},
            "tool_choice": request.get("tool_choice") or "auto",
            "tools": request.get("tools") or [],
            "top_p": _given(request, "top_p", 1.0),
            "truncation": request.get("truncation") or "disabled",
            "user": request.get("user"),
        }

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        reason: FinishReason | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": error,
            "incomplete_details": incomplete,
            "model": self.model,
            "output": output,
            **self.echo,
            "usage": usage,
        }

    def usage(self, u: CompletionUsage, reasoning_tokens: int) -> dict[str, Any]:
        cached = u.prompt_tokens_details.cached_tokens if self.report_cached else 0
        return {
            "input_tokens": u.prompt_tokens,
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": u.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": min(reasoning_tokens, u.completion_tokens)},
            "total_tokens": u.total_tokens,
        }


def _given(request: dict[str, Any], key: str, default: Any) -> Any:
    value = request.get(key)
    return default if value is None else value


def _status(reason: FinishReason | None) -> str:
    return "incomplete" if reason == "length" else "completed"


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [_text_part(text)] if status != "in_progress" else []
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def reasoning_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}] if status != "in_progress" else []
    return {"id": item_id, "type": "reasoning", "status": status, "summary": [], "content": content}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def response_of(shape: Shape, result: ChatCompletion, count: TokenCount) -> dict[str, Any]:
    """The whole ``response`` object of a chat completion."""
    choice = result.choices[0]
    message, status = choice.message, _status(choice.finish_reason)
    output: list[dict[str, Any]] = []
    if message.reasoning_content:
        output.append(reasoning_item(new_id("rs"), message.reasoning_content, status))
    if message.content or not (message.reasoning_content or message.tool_calls):
        # as streamed: no message item for an answer that is all reasoning or calls
        output.append(message_item(new_id("msg"), message.content or "", status))
    for call in message.tool_calls or ():
        output.append(
            call_item(new_id("fc"), call.id, call.function.name, call.function.arguments, "completed")
        )
    reasoning = count(message.reasoning_content) if message.reasoning_content else 0
    return shape.response(status, output, shape.usage(result.usage, reasoning), choice.finish_reason)


class _Item:
    """The output item being streamed."""

    def __init__(self, kind: str, index: int, prefix: str) -> None:
        self.kind, self.index, self.id = kind, index, new_id(prefix)
        self.text = ""
        self.call_id = self.name = ""


class ResponseEvents:
    """A :class:`~mtpstream._server_calls.Framing`: chat chunks in, Responses events
    out (the module docstring lists them)."""

    def __init__(self, shape: Shape, count: TokenCount) -> None:
        self.shape, self.count = shape, count
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        self.item: _Item | None = None
        self.reason: FinishReason | None = None
        self.usage: CompletionUsage | None = None
        self.reasoning: list[str] = []

    def _event(self, event: str, **fields: Any) -> str:
        data = {"type": event, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return sse(json.dumps(data, separators=(",", ":"), ensure_ascii=False), event)

    def frames(self, chunk: ChatCompletionChunk) -> list[str]:
        out: list[str] = []
        if self.sequence == 0:
            snapshot = self.shape.response("in_progress", [])
            out += [self._event("response.created", response=snapshot)]
            out += [self._event("response.in_progress", response=snapshot)]
        if chunk.usage is not None:
            self.usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta
            if delta.reasoning_content:
                out += self._text("reasoning", delta.reasoning_content)
            if delta.content:
                out += self._text("message", delta.content)
            for call in delta.tool_calls or ():
                out += self._call(call.id, call.function.name, call.function.arguments or "")
            if choice.finish_reason is not None:
                self.reason = choice.finish_reason
                if self.item is None and not self.output:  # an empty answer: an empty message
                    out += self._open("message", "msg")
                out += self._close()
        return out

    def _open(self, kind: str, prefix: str) -> list[str]:
        out = self._close()
        self.item = item = _Item(kind, len(self.output), prefix)
        if kind == "message":
            added = message_item(item.id, "", "in_progress")
        elif kind == "reasoning":
            added = reasoning_item(item.id, "", "in_progress")
        else:
            added = call_item(item.id, item.call_id, item.name, "", "in_progress")
        out.append(self._event("response.output_item.added", output_index=item.index, item=added))
        if kind == "message":
            part = _text_part("")
            out.append(
                self._event("response.content_part.added", **self._at(item), content_index=0, part=part)
            )
        return out

    @staticmethod
    def _at(item: _Item) -> dict[str, Any]:
        return {"item_id": item.id, "output_index": item.index}

    def _text(self, kind: str, text: str) -> list[str]:
        out = [] if self.item is not None and self.item.kind == kind else self._open(kind, _PREFIXES[kind])
        item = self.item
        assert item is not None
        item.text += text
        name = "response.output_text.delta" if kind == "message" else "response.reasoning_text.delta"
        extra: dict[str, Any] = {"logprobs": []} if kind == "message" else {}
        out.append(self._event(name, **self._at(item), content_index=0, delta=text, **extra))
        return out

    def _call(self, call_id: str | None, name: str | None, arguments: str) -> list[str]:
        out: list[str] = []
        if call_id is not None:  # a call's first delta: its id and name
            out = self._close()
            self.item = head = _Item("function_call", len(self.output), "fc")
            head.call_id, head.name = call_id, name or ""
            added = call_item(head.id, head.call_id, head.name, "", "in_progress")
            out.append(self._event("response.output_item.added", output_index=head.index, item=added))
        item = self.item
        if item is None or item.kind != "function_call" or not arguments:
            return out
        item.text += arguments
        out.append(self._event("response.function_call_arguments.delta", **self._at(item), delta=arguments))
        return out

    def _close(self) -> list[str]:
        item, self.item = self.item, None
        if item is None:
            return []
        at = self._at(item)
        status = _status(self.reason)
        if item.kind == "message":
            done = message_item(item.id, item.text, status)
            out = [
                self._event("response.output_text.done", **at, content_index=0, text=item.text, logprobs=[]),
                self._event("response.content_part.done", **at, content_index=0, part=_text_part(item.text)),
            ]
        elif item.kind == "reasoning":
            self.reasoning.append(item.text)
            done = reasoning_item(item.id, item.text, status)
            out = [self._event("response.reasoning_text.done", **at, content_index=0, text=item.text)]
        else:
            done = call_item(item.id, item.call_id, item.name, item.text, "completed")
            args_done = self._event(
                "response.function_call_arguments.done", **at, name=item.name, arguments=item.text
            )
            out = [args_done]
        out.append(self._event("response.output_item.done", output_index=item.index, item=done))
        self.output.append(done)
        return out

    def done(self) -> list[str]:
        out = self._close()
        usage = None
        if self.usage is not None:
            reasoning = sum(self.count(text) for text in self.reasoning)
            usage = self.shape.usage(self.usage, reasoning)
        status = _status(self.reason)
        final = self.shape.response(status, self.output, usage, self.reason)
        out.append(self._event(f"response.{status}", response=final))
        return out

    def error(self, status: int, body: dict[str, Any]) -> list[str]:
        err = body.get("error") or {}
        code = err.get("code") or err.get("type") or "server_error"
        message = str(err.get("message") or "generation failed")
        # a response's error code is one of OpenAI's few; the error event keeps ours
        kind = {400: "invalid_prompt", 429: "rate_limit_exceeded"}.get(status, "server_error")
        failed = self.shape.response("failed", self.output, error={"code": kind, "message": message})
        return [
            self._event("error", code=code, message=message, param=err.get("param")),
            self._event("response.failed", response=failed),
        ]
