"""An OpenAI-compatible HTTP server over one session (``mtpstream serve MODEL``).

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (whole results,
or server-sent events with ``"stream": true``), ``GET /v1/models``, ``GET /health``
and ``GET /metrics`` (Prometheus text). Errors are OpenAI error objects
(``{"error": {"message", "type", "param", "code"}}``): 400 for a bad request (the
session keeps working), 401 for a wrong API key, 404/405 for a wrong route, 408 for a
body that does not arrive in time, 413 for a body over ``max_body_bytes``, 429 when
the queue is full, 500 when generation fails, 503 once the session is closed or the
server stops. A client that disconnects, or stops reading, cancels its generation.
The limits are :class:`~mtpstream.server_limits.ServerLimits`.

Needs the ``server`` extra (``pip install 'mtpstream[server]'``: FastAPI, uvicorn).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, TypeVar

import anyio

from ._chunk_streams import CompletionStream, PreparingChatStream, collect_chat
from ._openai import ChatBody, CompletionBody, RequestBody
from ._reasoning import with_defaults
from ._stream_usage import UsageChunks, openai_chunk
from .completions import ChatCompletion, ChatCompletionChunk, Completion
from .server_limits import ServerLimits
from .session import MTP
from .stats import STATS_FIELDS

try:  # the server extra
    from fastapi import APIRouter, Depends, FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, Response

    from ._server_calls import Admission, Lifecycle, SSEResponse, whole
    from ._server_http import HostCheck, HTTPError, install_error_handlers, mapped, read_json, require_key
except ImportError:  # pragma: no cover - depends on the environment
    FastAPI = None  # type: ignore[assignment,misc]

__all__ = ["ServerLimits", "create_app"]

_CHAT = "/v1/chat/completions"
_COMPLETIONS = "/v1/completions"
_PREPARE_THREADS = 2  # concurrent templating/tokenization, off the event loop

Chunks = PreparingChatStream | CompletionStream
Result = ChatCompletion | Completion
_Body = TypeVar("_Body", bound=RequestBody)


def create_app(
    mtp: MTP,
    *,
    model_alias: str | None = None,
    api_key: str | None = None,
    max_queue: int | None = None,
    limits: ServerLimits | None = None,
    chat_defaults: Mapping[str, Any] | None = None,
) -> Any:
    """A FastAPI application serving ``mtp``.

    ``api_key``: requests must send ``Authorization: Bearer <api_key>`` (401 otherwise);
    without one, only ``limits.allowed_hosts`` may be named in ``Host`` (against DNS
    rebinding). ``max_queue``: at most this many calls wait for a free sequence; more
    get 429 (overrides ``limits.max_queue``). ``limits``: :class:`ServerLimits`.
    ``app.state.lifecycle`` lets the server drain and stop the app's calls.
    ``chat_defaults``: chat options a request does not set (``reasoning_format``,
    ``chat_template_kwargs``, merged key by key; CLI ``--reasoning-format``,
    ``--chat-template-kwargs``).

    Raises:
        ImportError: FastAPI is not installed (the ``server`` extra).
    """
    if FastAPI is None:  # pragma: no cover - depends on the environment
        raise ImportError("mtpstream's server needs FastAPI and uvicorn: pip install 'mtpstream[server]'")
    limits = limits or ServerLimits()
    if max_queue is not None:
        limits = replace(limits, max_queue=max_queue)
    state = ServerState(mtp, model_alias or mtp.model_name, limits)
    state.chat_defaults = dict(chat_defaults or {})
    app = FastAPI(title="mtpstream", version=_version(), docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state
    app.state.lifecycle = state.lifecycle
    app.state.api_key = api_key
    install_error_handlers(app, lambda request, err: state.metrics.count(request.url.path, err.status))
    if api_key is None:
        app.add_middleware(HostCheck, allowed=frozenset(h.lower() for h in limits.allowed_hosts))
    app.include_router(router)
    return app


class ServerState:
    """What the routes share (``app.state.server``): the session, the limits, the
    calls and the metrics."""

    def __init__(self, mtp: MTP, alias: str, limits: ServerLimits) -> None:
        self.mtp, self.alias, self.limits = mtp, alias, limits
        self.metrics = _Metrics()
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
        return err.response()

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


def _state(request: Request) -> ServerState:
    state = request.app.state.server
    assert isinstance(state, ServerState)
    return state


# ------------------------------------------------------------------ routes
if FastAPI is not None:
    router = APIRouter()
    _key = [Depends(require_key)]

    @router.get("/health")
    async def health(request: Request) -> Any:
        state = _state(request)
        if state.mtp.closed:
            return JSONResponse({"status": "closed"}, status_code=503)
        if state.lifecycle.draining:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return {"status": "ok"}

    @router.get("/metrics")
    async def metrics(request: Request) -> Any:
        state = _state(request)
        return PlainTextResponse(state.metrics.render(state.mtp), media_type="text/plain; version=0.0.4")

    @router.get("/v1/models", dependencies=_key)
    async def models(request: Request) -> Any:
        return {"object": "list", "data": [_state(request).model_card()]}

    @router.get("/v1/models/{model_id:path}", dependencies=_key)
    async def model(request: Request, model_id: str) -> Any:
        state = _state(request)
        if model_id != state.alias:
            message = f"The model '{model_id}' does not exist (this server serves '{state.alias}')"
            err = HTTPError(404, message, kind="invalid_request_error", param="model", code="model_not_found")
            return err.response()
        return state.model_card()

    @router.post(_CHAT, dependencies=_key)
    async def chat_completions(request: Request) -> Response:
        return await _endpoint(request, _CHAT, ChatBody.of, _chat_chunks)

    @router.post(_COMPLETIONS, dependencies=_key)
    async def completions(request: Request) -> Response:
        return await _endpoint(request, _COMPLETIONS, CompletionBody.of, _completion_chunks)


def _chat_chunks(state: ServerState, body: ChatBody) -> PreparingChatStream:
    options = with_defaults(state.chat_defaults, body.options)
    return state.mtp.stream_chat(
        body.messages, chat_template=body.chat_template, model=state.alias, **options
    )


def _completion_chunks(state: ServerState, body: CompletionBody) -> CompletionStream:
    events = state.mtp.stream_events(body.prompt, **body.options)
    echo = ""
    if body.echo:
        echo = body.prompt if isinstance(body.prompt, str) else state.mtp.model.detokenize(body.prompt)
    return CompletionStream(events, state.alias, echo=echo)


async def _collect(chunks: Chunks) -> Result:
    if isinstance(chunks, CompletionStream):
        return await chunks.collect()
    return await collect_chat(chunks)


async def _endpoint(
    request: Request,
    endpoint: str,
    parse: Callable[[dict[str, Any]], _Body],
    make: Callable[[ServerState, _Body], Chunks],
) -> Response:
    """A generation call: the body, then admission (atomic), then the chunk stream
    made off the event loop (templating, tokenization), then SSE or a whole result."""
    state = _state(request)
    try:
        body = parse(await read_json(request, state.limits))
        state.admission.take()
    except Exception as exc:
        return state.error(endpoint, exc)
    handed_over = False
    try:
        chunks = await anyio.to_thread.run_sync(functools.partial(make, state, body), limiter=state.limiter())
        if body.stream:
            stream = UsageChunks(chunks, body.include_usage)
            first = await whole(request, state.lifecycle, lambda: _first(stream))
            handed_over = True
            return SSEResponse(stream, first, state.render, state.lifecycle, _ended(state, endpoint))
        result = await whole(request, state.lifecycle, lambda: _collect(chunks))
        state.metrics.count(endpoint, 200)
        return JSONResponse(state.public(openai_chunk(result.model_dump(exclude_none=True))))
    except Exception as exc:
        return state.error(endpoint, exc)
    finally:
        if not handed_over:
            state.admission.give_back()


def _ended(state: ServerState, endpoint: str) -> Callable[[int], None]:
    def done(status: int) -> None:
        state.admission.give_back()
        state.metrics.count(endpoint, status)

    return done


async def _first(stream: UsageChunks) -> ChatCompletionChunk | Completion:
    """The first item of a stream, so that a refused call (busy, bad prompt) is an HTTP
    error rather than an event inside a 200 response; the stream is closed on failure."""
    try:
        return await stream.__anext__()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await stream.aclose()
        raise


class _Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.started = time.time()

    def count(self, endpoint: str, status: int) -> None:
        if endpoint in (_CHAT, _COMPLETIONS, "/v1/models"):  # not one series per probed path
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


def _version() -> str:
    from . import __version__

    return __version__
