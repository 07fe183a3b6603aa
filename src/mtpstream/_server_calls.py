"""The server's generation calls: admission (``--max-queue``, atomic), the server's
life (drain, then stop), whole results with cancellation and SSE streams."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar, Protocol

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from ._server_http import HTTPError, mapped
from .errors import MTPError

_log = logging.getLogger("mtpstream.server")
_DISCONNECT_POLL_S = 0.1
_FINAL_SEND_S = 1.0


def shutting_down() -> HTTPError:
    return HTTPError(503, "the server is shutting down", "server_error", None, "shutting_down")


class Lifecycle:
    """Running calls and the server's shutdown: :meth:`drain` refuses new calls,
    :meth:`stop` ends the running ones (a 503 or an SSE error event)."""

    def __init__(self) -> None:
        self.draining = False
        self.stopping = False
        self.calls = 0  # admitted calls not yet ended
        self._scopes: set[anyio.CancelScope] = set()

    def enter(self, scope: anyio.CancelScope) -> None:
        if self.stopping:
            scope.cancel()
        self._scopes.add(scope)

    def leave(self, scope: anyio.CancelScope) -> None:
        self._scopes.discard(scope)

    @property
    def running(self) -> bool:
        return self.calls > 0

    def drain(self) -> None:
        self.draining = True

    def stop(self) -> None:
        self.draining = self.stopping = True
        for scope in list(self._scopes):
            scope.cancel()


class Admission:
    """Generation calls the server holds (running and queued); at most ``n_seq +
    max_queue``. :meth:`take` checks and counts in one step (no await in between), so
    every endpoint is bounded alike; :meth:`give_back` when the call ends."""

    def __init__(self, n_seq: int, max_queue: int | None, lifecycle: Lifecycle) -> None:
        self.capacity = None if max_queue is None else n_seq + max_queue
        self.max_queue = max_queue
        self.lifecycle = lifecycle

    def take(self) -> None:
        if self.lifecycle.draining:
            raise shutting_down()
        held = self.lifecycle.calls
        if self.capacity is not None and held >= self.capacity:
            raise HTTPError(
                429,
                f"the queue is full ({held} calls running or waiting, --max-queue {self.max_queue})",
                "rate_limit_error",
                None,
                "queue_full",
            )
        self.lifecycle.calls += 1

    def give_back(self) -> None:
        self.lifecycle.calls -= 1


async def whole(request: Request, lifecycle: Lifecycle, run: Callable[[], Awaitable[Any]]) -> Any:
    """Run a non-streamed call; a client that goes away cancels it, and so does the
    server's stop (503 ``shutting_down``)."""
    outcome: dict[str, Any] = {}

    async def until_disconnected(scope: anyio.CancelScope) -> None:
        while not await request.is_disconnected():
            await anyio.sleep(_DISCONNECT_POLL_S)
        scope.cancel()

    async def call(scope: anyio.CancelScope) -> None:
        try:
            outcome["value"] = await run()
        except Exception as exc:
            outcome["error"] = exc
        finally:
            scope.cancel()

    async with anyio.create_task_group() as tg:
        lifecycle.enter(tg.cancel_scope)
        try:
            tg.start_soon(until_disconnected, tg.cancel_scope)
            tg.start_soon(call, tg.cancel_scope)
        finally:
            lifecycle.leave(tg.cancel_scope)
    if "error" in outcome:
        raise outcome["error"]
    if "value" not in outcome:
        if lifecycle.stopping:
            raise shutting_down()
        raise HTTPError(499, "the client closed the request", "invalid_request_error")
    return outcome["value"]


def _body(frames: list[str], more: bool = True) -> Message:
    return {"type": "http.response.body", "body": "".join(frames).encode(), "more_body": more}


def sse(data: str, event: str | None = None) -> str:
    """One server-sent event: ``data`` (one line of JSON), named ``event`` if given."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data}\n\n"


class Framing(Protocol):
    """How a chunk stream becomes server-sent events, for one API's event shapes: the
    frames of each chunk (none, one or several), the frames that end a complete stream,
    and those that end it with an error (``body``: the OpenAI error object)."""

    def frames(self, chunk: Any) -> list[str]: ...

    def done(self) -> list[str]: ...

    def error(self, status: int, body: dict[str, Any]) -> list[str]: ...


class OpenAIFraming:
    """Chat Completions / Completions events: one ``data:`` line per chunk as
    ``render`` writes it, ``data: [DONE]`` at the end, the error object on failure."""

    def __init__(self, render: Callable[[Any], str]) -> None:
        self.render = render

    def frames(self, chunk: Any) -> list[str]:
        return [sse(self.render(chunk))]

    def done(self) -> list[str]:
        return [sse("[DONE]")]

    def error(self, status: int, body: dict[str, Any]) -> list[str]:
        return [sse(json.dumps(body))]


class SSEResponse(Response):
    """Server-sent events of a chunk stream (an ASGI app), framed by ``framing``. The
    client leaving cancels the generation; so does the server's stop, which ends the
    stream with an error event. ``done`` runs once when the response ends, however it
    ends."""

    sse_headers: ClassVar[list[tuple[bytes, bytes]]] = [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
    ]

    def __init__(
        self,
        chunks: AsyncIterator[Any],
        first: Any,
        framing: Framing,
        lifecycle: Lifecycle,
        done: Callable[[int], None],
    ) -> None:
        super().__init__(media_type="text/event-stream")
        self.chunks, self.first, self.framing, self.lifecycle, self.on_end = (
            chunks,
            first,
            framing,
            lifecycle,
            done,
        )
        self.status = 499  # the client left, until the stream says otherwise
        self.complete = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.sse_headers})
            async with anyio.create_task_group() as tg:
                self.lifecycle.enter(tg.cancel_scope)
                try:
                    tg.start_soon(self._until_disconnected, receive, tg.cancel_scope)
                    await self._events(send)
                    tg.cancel_scope.cancel()
                finally:
                    self.lifecycle.leave(tg.cancel_scope)
            if not self.complete and self.lifecycle.stopping:
                self.status = 503
                with anyio.move_on_after(_FINAL_SEND_S, shield=True):
                    await self._end(send, self.framing.error(503, shutting_down().body()))
        finally:
            with anyio.CancelScope(shield=True):
                await self.chunks.aclose()  # type: ignore[attr-defined]
            self.on_end(self.status)

    async def _until_disconnected(self, receive: Receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async def _events(self, send: Send) -> None:
        try:
            await send(_body(self.framing.frames(self.first)))
            async for chunk in self.chunks:
                frames = self.framing.frames(chunk)
                if frames:
                    await send(_body(frames))
            status, last = 200, self.framing.done()
        except MTPError as exc:
            err = mapped(exc)
            status, last = err.status, self.framing.error(err.status, err.body())
        await self._end(send, last)
        self.status = status

    async def _end(self, send: Send, frames: list[str]) -> None:
        await send(_body(frames, more=False))
        self.complete = True
