"""``POST /v1/messages`` (Anthropic's Messages API) and ``POST
/v1/messages/count_tokens`` on the server's generation seam: the body becomes a chat
body (:mod:`._anthropic`), the chat chunk stream is shown as an Anthropic ``message``
or as its server-sent events (``message_start``, ``content_block_start``,
``content_block_delta``, ``content_block_stop``, ``message_delta``,
``message_stop``; ``error``). Errors under ``/v1/messages`` are Anthropic-shaped
(:func:`~mtpstream._server_http.HTTPError.body`)."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from ._anthropic import (
    error_body,
    message_of,
    messages_body,
    new_message_id,
    stop_reason,
    tool_use_id,
    usage_of,
)
from ._openai import ChatBody
from ._reasoning import with_defaults
from ._server_calls import Framing, sse
from ._server_http import read_json, require_key
from ._server_state import COUNTED_ENDPOINTS, Chunks, Result, ServerState, chat_chunks, generation, state_of
from .completions import ChatCompletion, ChatCompletionChunk

__all__ = ["MESSAGES", "router"]

MESSAGES = "/v1/messages"
_COUNT = "/v1/messages/count_tokens"
COUNTED_ENDPOINTS.update({MESSAGES, _COUNT})


def _parse(body: dict[str, Any]) -> ChatBody:
    return ChatBody.of(messages_body(body))


class MessageEvents:
    """The Anthropic events of one chat chunk stream (a :class:`Framing` with state:
    the open content block and its index)."""

    def __init__(self, model: str, report_cached: bool) -> None:
        self.model, self.report_cached = model, report_cached
        self.started = False
        self.block: str | None = None  # the open block's type
        self.index = -1

    def frames(self, chunk: ChatCompletionChunk) -> list[str]:
        out: list[str] = []
        if not self.started:
            self.started = True
            out.append(_event("message_start", {"message": self._head()}))
        if not chunk.choices:
            return out
        choice = chunk.choices[0]
        delta = choice.delta
        if delta.reasoning_content:
            out += self._into("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            out.append(self._delta({"type": "thinking_delta", "thinking": delta.reasoning_content}))
        if delta.content:
            out += self._into("text", {"type": "text", "text": ""})
            out.append(self._delta({"type": "text_delta", "text": delta.content}))
        for call in delta.tool_calls or ():
            if call.id is not None:  # a new call: its own block
                head: dict[str, Any] = {
                    "type": "tool_use",
                    "id": tool_use_id(call.id),
                    "name": call.function.name,
                    "input": {},
                }
                out += self._close() + self._open("tool_use", head)
            if call.function.arguments:
                out.append(self._delta({"type": "input_json_delta", "partial_json": call.function.arguments}))
        if choice.finish_reason is not None:
            out += self._close()
            out.append(self._end(chunk))
        return out

    def done(self) -> list[str]:
        return [_event("message_stop", {})]

    def error(self, status: int, body: dict[str, Any]) -> list[str]:
        message = str(body.get("error", {}).get("message", "error"))
        return [sse(json.dumps(error_body(status, message)), "error")]

    def _head(self) -> dict[str, Any]:
        return {
            "id": new_message_id(),
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self.model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }

    def _into(self, kind: str, block: dict[str, Any]) -> list[str]:
        """Into a block of ``kind``: the open one, or a new one after closing it."""
        return [] if self.block == kind else self._close() + self._open(kind, block)

    def _open(self, kind: str, block: dict[str, Any]) -> list[str]:
        self.block, self.index = kind, self.index + 1
        return [_event("content_block_start", {"index": self.index, "content_block": block})]

    def _close(self) -> list[str]:
        if self.block is None:
            return []
        self.block = None
        return [_event("content_block_stop", {"index": self.index})]

    def _delta(self, delta: dict[str, Any]) -> str:
        return _event("content_block_delta", {"index": self.index, "delta": delta})

    def _end(self, chunk: ChatCompletionChunk) -> str:
        choice = chunk.choices[0]
        usage: dict[str, Any] = {"output_tokens": 0}
        if chunk.usage is not None:
            u = chunk.usage
            cached = u.prompt_tokens_details.cached_tokens if self.report_cached else None
            usage = usage_of(u.prompt_tokens, u.completion_tokens, cached)
        reason = stop_reason(choice.finish_reason, choice.stop_reason)
        delta = {"stop_reason": reason, "stop_sequence": choice.stop_reason}
        return _event("message_delta", {"delta": delta, "usage": usage})


def _event(kind: str, data: dict[str, Any]) -> str:
    return sse(json.dumps({"type": kind, **data}, separators=(",", ":"), ensure_ascii=False), kind)


class _MessagesPresenter:
    """Anthropic's ``message`` and events over the chat chunk stream (usage on its
    finish chunk, as the chat stream puts it without ``stream_options``)."""

    def stream(self, state: ServerState, body: Any, chunks: Chunks) -> AsyncIterator[Any]:
        return chunks

    def framing(self, state: ServerState, body: Any) -> Framing:
        return MessageEvents(state.alias, state.limits.report_cached_tokens)

    def whole(self, state: ServerState, body: Any, result: Result) -> dict[str, Any]:
        assert isinstance(result, ChatCompletion)
        return message_of(result, state.limits.report_cached_tokens)


_PRESENTER = _MessagesPresenter()


def _count(state: ServerState, body: ChatBody) -> int:
    """The prompt tokens of a Messages body, as its generation would render them."""
    options = with_defaults(state.chat_defaults, body.options)
    return len(state.mtp.tokenize_chat(body.messages, body.chat_template, **options))


router = APIRouter()


@router.post(MESSAGES, dependencies=[Depends(require_key)])
async def messages(request: Request) -> Response:
    return await generation(request, MESSAGES, _parse, chat_chunks, _PRESENTER)


@router.post(_COUNT, dependencies=[Depends(require_key)])
async def count_tokens(request: Request) -> Response:
    """``{"input_tokens": N}``: the prompt of a Messages body, rendered and tokenized
    off the event loop (no sequence taken)."""
    state = state_of(request)
    try:
        body = ChatBody.of(messages_body(await read_json(request, state.limits), need_max_tokens=False))
        count = functools.partial(_count, state, body)
        n = await anyio.to_thread.run_sync(count, limiter=state.limiter())
    except Exception as exc:
        return state.error(_COUNT, exc)
    state.metrics.count(_COUNT, 200)
    return JSONResponse({"input_tokens": n})
