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

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import anyio

from .chat import openai_options
from .completions import ChatCompletion, ChatCompletionChoice, ChatCompletionChunk, ChatCompletionMessage
from .errors import InvalidOptionError
from .server_limits import ServerLimits
from .session import MTP
from .stats import STATS_FIELDS

try:  # the server extra
    from fastapi import Depends, FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, Response

    from ._server_calls import Admission, Lifecycle, SSEResponse, whole
    from ._server_http import HostCheck, install_error_handlers, key_dependency, mapped, read_json
except ImportError:  # pragma: no cover - depends on the environment
    FastAPI = None  # type: ignore[assignment,misc]

__all__ = ["ServerLimits", "create_app"]

_CHAT = "/v1/chat/completions"
_COMPLETIONS = "/v1/completions"
_PREPARE_THREADS = 2  # concurrent templating/tokenization, off the event loop


def create_app(
    mtp: MTP,
    *,
    model_alias: str | None = None,
    api_key: str | None = None,
    max_queue: int | None = None,
    limits: ServerLimits | None = None,
) -> Any:
    """A FastAPI application serving ``mtp``.

    ``api_key``: requests must send ``Authorization: Bearer <api_key>`` (401 otherwise);
    without one, only ``limits.allowed_hosts`` may be named in ``Host`` (against DNS
    rebinding). ``max_queue``: at most this many calls wait for a free sequence; more
    get 429 (overrides ``limits.max_queue``). ``limits``: :class:`ServerLimits`.
    ``app.state.lifecycle`` lets the server drain and stop the app's calls.

    Raises:
        ImportError: FastAPI is not installed (the ``server`` extra).
    """
    if FastAPI is None:  # pragma: no cover - depends on the environment
        raise ImportError("mtpstream's server needs FastAPI and uvicorn: pip install 'mtpstream[server]'")
    limits = limits or ServerLimits()
    if max_queue is not None:
        limits = replace(limits, max_queue=max_queue)
    server = _Server(mtp, model_alias or mtp.model_name, limits)
    app = FastAPI(title="mtpstream", version=_version(), docs_url=None, redoc_url=None, openapi_url=None)
    app.state.lifecycle = server.lifecycle
    install_error_handlers(app, lambda request, err: server.metrics.count(request.url.path, err.status))
    if api_key is None:
        app.add_middleware(HostCheck, allowed=frozenset(h.lower() for h in limits.allowed_hosts))
    _add_routes(app, server, Depends(key_dependency(api_key)))
    return app


def _add_routes(app: Any, server: _Server, key: Any) -> None:
    app.get("/health")(server.health)
    app.get("/metrics")(server.metrics_text)
    app.get("/v1/models", dependencies=[key])(server.models)
    app.post(_CHAT, dependencies=[key])(server.chat_completions)
    app.post(_COMPLETIONS, dependencies=[key])(server.completions)


class _Server:
    """The routes' state: the session, the limits, the calls and the metrics."""

    def __init__(self, mtp: MTP, alias: str, limits: ServerLimits) -> None:
        self.mtp, self.alias, self.limits = mtp, alias, limits
        self.metrics = _Metrics()
        self.lifecycle = Lifecycle()
        self.admission = Admission(mtp.n_seq, limits.max_queue, self.lifecycle)
        self._limiter: anyio.CapacityLimiter | None = None

    async def health(self) -> Any:
        if self.mtp.closed:
            return JSONResponse({"status": "closed"}, status_code=503)
        if self.lifecycle.draining:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return {"status": "ok"}

    async def metrics_text(self) -> Any:
        return PlainTextResponse(self.metrics.render(self.mtp), media_type="text/plain; version=0.0.4")

    async def models(self) -> Any:
        created = int(self.metrics.started)
        return {
            "object": "list",
            "data": [{"id": self.alias, "object": "model", "created": created, "owned_by": "mtpstream"}],
        }

    async def chat_completions(self, request: Request) -> Response:
        async def prepare() -> tuple[bool, Callable[[], Any]]:
            body = await read_json(request, self.limits)
            messages: Any = body.get("messages")
            template = body.get("chat_template")
            opts = _options(body, ("messages", "chat_template", "stream"))
            mtp, alias = self.mtp, self.alias
            return _stream_flag(body), lambda: mtp.stream_chat(
                messages, chat_template=template, model=alias, **opts
            )

        return await self._endpoint(_CHAT, request, prepare, _collect_chat)

    async def completions(self, request: Request) -> Response:
        async def prepare() -> tuple[bool, Callable[[], Any]]:
            body = await read_json(request, self.limits)
            prompt = _prompt_of(body.get("prompt"))
            dropped = ("prompt", "echo", "suffix", "best_of", "model", "stream")
            opts = {k: v for k, v in body.items() if k not in dropped}
            mtp, alias = self.mtp, self.alias
            return _stream_flag(body), lambda: mtp._stream_completion(prompt, alias, **opts)

        async def collect(chunks: Any) -> Any:
            return await chunks.collect()

        return await self._endpoint(_COMPLETIONS, request, prepare, collect)

    async def _endpoint(
        self,
        endpoint: str,
        request: Request,
        prepare: Callable[[], Awaitable[tuple[bool, Callable[[], Any]]]],
        collect: Callable[[Any], Awaitable[Any]],
    ) -> Response:
        """A generation call: the body, then admission (atomic), then the chunk stream
        made off the event loop (templating, tokenization), then SSE or a whole result."""
        try:
            stream, make = await prepare()
            self.admission.take()
        except Exception as exc:
            return self._error(endpoint, exc)
        handed_over = False
        try:
            chunks = await anyio.to_thread.run_sync(make, limiter=self._prepare_limiter())
            if stream:
                first = await whole(request, self.lifecycle, lambda: _first(chunks))
                handed_over = True
                return SSEResponse(chunks, first, self._render, self.lifecycle, self._ended(endpoint))
            result = await whole(request, self.lifecycle, lambda: collect(chunks))
            self.metrics.count(endpoint, 200)
            return JSONResponse(self._public(result.model_dump(exclude_none=True)))
        except Exception as exc:
            return self._error(endpoint, exc)
        finally:
            if not handed_over:
                self.admission.give_back()

    def _ended(self, endpoint: str) -> Callable[[int], None]:
        def done(status: int) -> None:
            self.admission.give_back()
            self.metrics.count(endpoint, status)

        return done

    def _error(self, endpoint: str, exc: Exception) -> Response:
        err = mapped(exc)
        self.metrics.count(endpoint, err.status)
        return err.response()

    def _prepare_limiter(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(_PREPARE_THREADS)
        return self._limiter

    def _public(self, result: dict[str, Any]) -> dict[str, Any]:
        """``result`` as clients see it: ``cached_tokens`` only with ``report_cached_tokens``
        (the prompt cache is shared by all clients)."""
        usage = result.get("usage")
        if isinstance(usage, dict) and not self.limits.report_cached_tokens:
            usage.pop("prompt_tokens_details", None)
        return result

    def _render(self, chunk: Any) -> str:
        if chunk.usage is None:
            return str(chunk.model_dump_json(exclude_none=True))
        return json.dumps(
            self._public(chunk.model_dump(exclude_none=True)), separators=(",", ":"), ensure_ascii=False
        )


async def _collect_chat(chunks: Any) -> ChatCompletion:
    """The whole answer of a chat chunk stream (what :meth:`MTP.chat` returns)."""
    parts: list[str] = []
    final: ChatCompletionChunk | None = None
    async with chunks:
        async for chunk in chunks:
            if chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
            final = chunk
    assert final is not None and final.usage is not None and final.mtp is not None
    reason = final.choices[0].finish_reason
    assert reason is not None
    message = ChatCompletionMessage(content="".join(parts))
    return ChatCompletion(
        id=final.id,
        created=final.created,
        model=final.model,
        choices=[ChatCompletionChoice(message=message, finish_reason=reason)],
        usage=final.usage,
        mtp=final.mtp,
    )


async def _first(stream: Any) -> Any:
    """The first item of a stream, so that a refused call (busy, bad prompt) is an HTTP
    error rather than an event inside a 200 response; the stream is closed on failure."""
    try:
        return await stream.__anext__()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await stream.aclose()
        raise


def _stream_flag(body: dict[str, Any]) -> bool:
    stream = body.get("stream")
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise InvalidOptionError(
            f"invalid option 'stream': must be true or false (got {type(stream).__name__})", field="stream"
        )
    return stream


def _options(body: dict[str, Any], exclude: tuple[str, ...]) -> dict[str, Any]:
    return openai_options({k: v for k, v in body.items() if k not in exclude})


def _prompt_of(prompt: Any) -> str | list[int]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return prompt
    raise InvalidOptionError(
        "prompt must be a string, a list of one string, or a list of token ids", field="prompt"
    )


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
