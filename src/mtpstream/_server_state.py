"""What the server's routes share: the state (session, limits, admission, metrics) and
one generation call, from the body to a whole JSON result or a server-sent stream.

An API (Chat Completions, Completions, and any other served shape) plugs in with a
parser for its body, a maker of the chunk stream, and a :class:`Presenter` that turns
the result or the stream into that API's JSON and events.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ._chunk_streams import CompletionStream, PreparingChatStream, collect_chat
from ._openai import ChatBody, RequestBody
from ._reasoning import with_defaults
from ._server_calls import Admission, Framing, Lifecycle, OpenAIFraming, SSEResponse, whole
from ._server_http import mapped, read_json
from ._stream_usage import UsageChunks, openai_chunk
from .completions import ChatCompletion, ChatCompletionChunk, Completion
from .server_limits import ServerLimits
from .session import MTP
from .stats import STATS_FIELDS

__all__ = ["COUNTED_ENDPOINTS", "OPENAI", "Presenter", "ServerState", "chat_chunks", "generation", "state_of"]

Chunks = PreparingChatStream | CompletionStream
Result = ChatCompletion | Completion
Body = TypeVar("Body", bound=RequestBody)
_PREPARE_THREADS = 2  # concurrent templating/tokenization, off the event loop

# the endpoints /metrics counts requests of (not one series per probed path)
COUNTED_ENDPOINTS: set[str] = {"/v1/chat/completions", "/v1/completions", "/v1/models"}


class ServerState:
    """What the routes share (``app.state.server``): the session, the limits, the
    calls and the metrics."""

    def __init__(self, mtp: MTP, alias: str, limits: ServerLimits) -> None:
        self.mtp, self.alias, self.limits = mtp, alias, limits
        self.metrics = Metrics()
        self.lifecycle = Lifecycle()
        self.admission = Admission(mtp.n_seq, limits.max_queue, self.lifecycle)
        self.prepare_limiter: anyio.CapacityLimiter | None = None
        self.chat_defaults: dict[str, Any] = {}

    def limiter(self) -> anyio.CapacityLimiter:
        if self.prepare_limiter is None:
            self.prepare_limiter = anyio.CapacityLimiter(_PREPARE_THREADS)
        return self.prepare_limiter

    def error(self, endpoint: str, exc: Exception) -> Response:
        err = mapped(exc)
        self.metrics.count(endpoint, err.status)
        return err.response(endpoint)

    def public(self, result: dict[str, Any]) -> dict[str, Any]:
        """``result`` as clients see it: ``cached_tokens`` only with ``report_cached_tokens``
        (the prompt cache is shared by all clients)."""
        usage = result.get("usage")
        if isinstance(usage, dict) and not self.limits.report_cached_tokens:
            usage.pop("prompt_tokens_details", None)
        return result

    def render(self, chunk: ChatCompletionChunk | Completion) -> str:
        """A chunk's JSON: ``finish_reason`` and ``logprobs`` on every choice (null
        until set), usage as :meth:`public` shows it."""
        dumped = self.public(openai_chunk(chunk.model_dump(exclude_none=True)))
        return json.dumps(dumped, separators=(",", ":"), ensure_ascii=False)

    def model_card(self) -> dict[str, Any]:
        """The served model as ``GET /v1/models`` lists it."""
        created = int(self.metrics.started)
        return {"id": self.alias, "object": "model", "created": created, "owned_by": "mtpstream"}


def state_of(request: Request) -> ServerState:
    """The :class:`ServerState` of the app serving ``request``."""
    state = request.app.state.server
    assert isinstance(state, ServerState)
    return state


def chat_chunks(state: ServerState, body: ChatBody) -> PreparingChatStream:
    """The chat chunk stream of ``body`` (the server's chat defaults under the
    request's options): what every chat-shaped API streams or collects."""
    options = with_defaults(state.chat_defaults, body.options)
    return state.mtp.stream_chat(
        body.messages, chat_template=body.chat_template, model=state.alias, **options
    )


class Presenter(Protocol):
    """How one API shows a call: the chunk stream it streams (e.g. with usage moved),
    the SSE framing of that stream, and the JSON of a whole result."""

    def stream(self, state: ServerState, body: Any, chunks: Chunks) -> AsyncIterator[Any]: ...

    def framing(self, state: ServerState, body: Any) -> Framing: ...

    def whole(self, state: ServerState, body: Any, result: Result) -> dict[str, Any]: ...


class _OpenAIPresenter:
    """Chat Completions and Completions: OpenAI's chunks, ``include_usage`` followed."""

    def stream(self, state: ServerState, body: Any, chunks: Chunks) -> AsyncIterator[Any]:
        return UsageChunks(chunks, body.include_usage)

    def framing(self, state: ServerState, body: Any) -> Framing:
        return OpenAIFraming(state.render)

    def whole(self, state: ServerState, body: Any, result: Result) -> dict[str, Any]:
        return state.public(openai_chunk(result.model_dump(exclude_none=True)))


OPENAI: Presenter = _OpenAIPresenter()


async def generation(
    request: Request,
    endpoint: str,
    parse: Callable[[dict[str, Any]], Body],
    make: Callable[[ServerState, Body], Chunks],
    present: Presenter = OPENAI,
) -> Response:
    """A generation call: the body, then admission (atomic), then the chunk stream
    made off the event loop (templating, tokenization), then SSE or a whole result,
    as ``present`` shows them. Every failure is an error response of the API's
    error mapping (:func:`~mtpstream._server_http.mapped`)."""
    state = state_of(request)
    try:
        body = parse(await read_json(request, state.limits))
        state.admission.take()
    except Exception as exc:
        return state.error(endpoint, exc)
    handed_over = False
    try:
        chunks = await anyio.to_thread.run_sync(functools.partial(make, state, body), limiter=state.limiter())
        if body.stream:
            stream = present.stream(state, body, chunks)
            first = await whole(request, state.lifecycle, lambda: _first(stream))
            handed_over = True
            framing = present.framing(state, body)
            return SSEResponse(stream, first, framing, state.lifecycle, _ended(state, endpoint))
        result = await whole(request, state.lifecycle, lambda: _collect(chunks))
        state.metrics.count(endpoint, 200)
        return JSONResponse(present.whole(state, body, result))
    except Exception as exc:
        return state.error(endpoint, exc)
    finally:
        if not handed_over:
            state.admission.give_back()


async def _collect(chunks: Chunks) -> Result:
    if isinstance(chunks, CompletionStream):
        return await chunks.collect()
    return await collect_chat(chunks)


def _ended(state: ServerState, endpoint: str) -> Callable[[int], None]:
    def done(status: int) -> None:
        state.admission.give_back()
        state.metrics.count(endpoint, status)

    return done


async def _first(stream: AsyncIterator[Any]) -> Any:
    """The first item of a stream, so that a refused call (busy, bad prompt) is an HTTP
    error rather than an event inside a 200 response; the stream is closed on failure."""
    try:
        return await stream.__anext__()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await stream.aclose()  # type: ignore[attr-defined]
        raise


class Metrics:
    """Request counts by endpoint and status, and the Prometheus text of ``/metrics``."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.started = time.time()

    def count(self, endpoint: str, status: int) -> None:
        if endpoint in COUNTED_ENDPOINTS:
            self.requests[(endpoint, status)] = self.requests.get((endpoint, status), 0) + 1

    def render(self, mtp: MTP) -> str:
        st = mtp.stats()
        series: list[tuple[str, str, str, object]] = [
            (f.metric, "gauge" if f.kind == "gauge" else "counter", f.help, f.value(st)) for f in STATS_FIELDS
        ]
        series += [
            ("acceptance_rate", "gauge", "Accepted over generated drafts.", f"{st.acceptance_rate:.6f}"),
            ("tokens_per_second", "gauge", "Decode throughput since start.", f"{st.tokens_per_sec:.3f}"),
            ("active_sequences", "gauge", "Calls holding a sequence.", st.active_sequences),
            ("queued", "gauge", "Calls waiting for a sequence.", st.queued),
        ]
        lines: list[str] = []
        for name, kind, text, value in series:
            metric = f"mtpstream_{name}"
            lines += [f"# HELP {metric} {text}", f"# TYPE {metric} {kind}", f"{metric} {value}"]
        lines += [
            "# HELP mtpstream_requests_total HTTP requests by endpoint and status.",
            "# TYPE mtpstream_requests_total counter",
        ]
        for (endpoint, status), n in sorted(self.requests.items()):
            lines.append(f'mtpstream_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}')
        return "\n".join(lines) + "\n"
