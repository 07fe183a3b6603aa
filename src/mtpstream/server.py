"""An OpenAI-compatible HTTP server over one session (``mtpstream serve MODEL``).

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (whole results,
or server-sent events with ``"stream": true``), ``GET /v1/models``, ``GET /health``
and ``GET /metrics`` (Prometheus text). Errors are OpenAI error objects: 400 for a
bad request (the session keeps working), 401 for a wrong API key, 429 when the queue
is full, 500 when generation fails, 503 once the session is closed. A client that
disconnects cancels its generation.

Needs the ``server`` extra (``pip install 'mtpstream[server]'``: FastAPI, uvicorn).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio

from .chat import openai_options
from .errors import (
    ContextOverflowError,
    GenerationError,
    InvalidOptionError,
    MTPError,
    SessionBusyError,
    SessionClosedError,
)
from .session import MTP

try:  # the server extra; the annotations below must resolve at module level for FastAPI
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
except ImportError:  # pragma: no cover - depends on the environment
    FastAPI = None  # type: ignore[assignment,misc]

__all__ = ["create_app"]

_DISCONNECT_POLL_S = 0.1


class _HTTPError(Exception):
    def __init__(
        self, status: int, message: str, kind: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def _mapped(exc: BaseException) -> _HTTPError:
    """The one place errors become HTTP statuses."""
    if isinstance(exc, _HTTPError):
        return exc
    if isinstance(exc, ContextOverflowError):
        return _HTTPError(400, str(exc), "invalid_request_error", "messages", "context_length_exceeded")
    if isinstance(exc, InvalidOptionError):
        return _HTTPError(400, str(exc), "invalid_request_error", exc.field)
    if isinstance(exc, SessionBusyError):
        return _HTTPError(429, str(exc), "rate_limit_error", None, "queue_full")
    if isinstance(exc, SessionClosedError):
        return _HTTPError(503, str(exc), "server_error", None, "closed")
    if isinstance(exc, (GenerationError, MTPError)):
        return _HTTPError(500, str(exc), "server_error")
    return _HTTPError(500, f"internal error: {type(exc).__name__}", "server_error")


class _Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.started = time.time()

    def count(self, endpoint: str, status: int) -> None:
        self.requests[(endpoint, status)] = self.requests.get((endpoint, status), 0) + 1

    def render(self, mtp: MTP) -> str:
        st = mtp.stats()
        lines = [
            "# HELP mtpstream_tokens_total Tokens generated.",
            "# TYPE mtpstream_tokens_total counter",
            f"mtpstream_tokens_total {st.tokens_emitted}",
            "# HELP mtpstream_prompt_tokens_total Prompt tokens processed.",
            "# TYPE mtpstream_prompt_tokens_total counter",
            f"mtpstream_prompt_tokens_total {st.prompt_tokens}",
            "# HELP mtpstream_drafts_generated_total Draft tokens proposed by the MTP head.",
            "# TYPE mtpstream_drafts_generated_total counter",
            f"mtpstream_drafts_generated_total {st.drafts_generated}",
            "# HELP mtpstream_drafts_accepted_total Draft tokens the target accepted.",
            "# TYPE mtpstream_drafts_accepted_total counter",
            f"mtpstream_drafts_accepted_total {st.drafts_accepted}",
            "# HELP mtpstream_acceptance_rate Accepted over generated drafts since start.",
            "# TYPE mtpstream_acceptance_rate gauge",
            f"mtpstream_acceptance_rate {st.acceptance_rate:.6f}",
            "# HELP mtpstream_tokens_per_second Decode throughput over decode time since start.",
            "# TYPE mtpstream_tokens_per_second gauge",
            f"mtpstream_tokens_per_second {st.tokens_per_sec:.3f}",
            "# HELP mtpstream_active_sequences Calls holding a sequence.",
            "# TYPE mtpstream_active_sequences gauge",
            f"mtpstream_active_sequences {st.active_sequences}",
            "# HELP mtpstream_queued Calls waiting for a sequence.",
            "# TYPE mtpstream_queued gauge",
            f"mtpstream_queued {st.queued}",
            "# HELP mtpstream_requests_total HTTP requests by endpoint and status.",
            "# TYPE mtpstream_requests_total counter",
        ]
        for (endpoint, status), n in sorted(self.requests.items()):
            lines.append(f'mtpstream_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}')
        return "\n".join(lines) + "\n"


def _options(body: dict[str, Any], exclude: tuple[str, ...]) -> dict[str, Any]:
    return openai_options({k: v for k, v in body.items() if k not in exclude})


def create_app(
    mtp: MTP, *, model_alias: str | None = None, api_key: str | None = None, max_queue: int | None = None
) -> Any:
    """A FastAPI application serving ``mtp``.

    ``api_key``: requests must send ``Authorization: Bearer <api_key>`` (401 otherwise).
    ``max_queue``: at most this many calls wait for a free sequence; more get 429.

    Raises:
        ImportError: FastAPI is not installed (the ``server`` extra).
    """
    if FastAPI is None:  # pragma: no cover - depends on the environment
        raise ImportError("mtpstream's server needs FastAPI and uvicorn: pip install 'mtpstream[server]'")

    alias = model_alias or mtp.model_name
    metrics = _Metrics()
    app = FastAPI(title="mtpstream", version=_version())

    def check_auth(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else ""
        if not secrets.compare_digest(token.encode(), api_key.encode()):
            raise _HTTPError(
                401, "invalid or missing API key", "invalid_request_error", None, "invalid_api_key"
            )

    def check_queue() -> None:
        if max_queue is None:
            return
        st = mtp.stats()
        if st.active_sequences >= mtp.n_seq and st.queued >= max_queue:
            raise _HTTPError(
                429,
                f"the queue is full ({st.queued} calls waiting, --max-queue {max_queue})",
                "rate_limit_error",
                None,
                "queue_full",
            )

    async def body_of(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            raise _HTTPError(400, "the request body is not valid JSON", "invalid_request_error") from None
        if not isinstance(body, dict):
            raise _HTTPError(400, "the request body must be a JSON object", "invalid_request_error")
        return body

    async def admitted(request: Request) -> dict[str, Any]:
        """A generation request's body, once the key, the body and the queue allow it."""
        check_auth(request)
        body = await body_of(request)
        check_queue()
        return body

    def error_response(endpoint: str, exc: BaseException) -> Any:
        err = _mapped(exc)
        metrics.count(endpoint, err.status)
        return JSONResponse(err.body(), status_code=err.status)

    async def until_disconnected(request: Request, scope: anyio.CancelScope) -> None:
        while not await request.is_disconnected():
            await anyio.sleep(_DISCONNECT_POLL_S)
        scope.cancel()

    async def whole(request: Request, run: Callable[[], Awaitable[Any]]) -> Any:
        """Run a non-streamed call; a client that goes away cancels it."""
        outcome: dict[str, Any] = {}

        async def call(scope: anyio.CancelScope) -> None:
            try:
                outcome["value"] = await run()
            except Exception as exc:
                outcome["error"] = exc
            finally:
                scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(until_disconnected, request, tg.cancel_scope)
            tg.start_soon(call, tg.cancel_scope)
        if "error" in outcome:
            raise outcome["error"]
        if "value" not in outcome:
            raise _HTTPError(499, "the client closed the request", "invalid_request_error")
        return outcome["value"]

    def sse(endpoint: str, chunks: AsyncIterator[Any], first: Any) -> Any:
        async def gen() -> AsyncIterator[bytes]:
            # the stream is closed (the generation cancelled) when the client goes away:
            # Starlette cancels this generator, and aclose() acknowledges it
            try:
                yield f"data: {first.model_dump_json(exclude_none=True)}\n\n".encode()
                async for chunk in chunks:
                    yield f"data: {chunk.model_dump_json(exclude_none=True)}\n\n".encode()
                yield b"data: [DONE]\n\n"
                metrics.count(endpoint, 200)
            except MTPError as exc:
                err = _mapped(exc)
                metrics.count(endpoint, err.status)
                yield f"data: {json.dumps(err.body())}\n\n".encode()
            finally:
                with anyio.CancelScope(shield=True):
                    await chunks.aclose()  # type: ignore[attr-defined]

        return StreamingResponse(gen(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.exception_handler(_HTTPError)
    async def _on_http_error(request: Request, exc: _HTTPError) -> Any:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.get("/health")
    async def health() -> Any:
        if mtp.closed:
            return JSONResponse({"status": "closed"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics_text() -> Any:
        return PlainTextResponse(metrics.render(mtp), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        check_auth(request)
        return {
            "object": "list",
            "data": [
                {"id": alias, "object": "model", "created": int(metrics.started), "owned_by": "mtpstream"}
            ],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        endpoint = "/v1/chat/completions"
        try:
            body = await admitted(request)
            messages: Any = body.get("messages")
            opts = _options(body, ("messages", "chat_template"))
            template = body.get("chat_template")
            if body.get("stream"):
                chunks = mtp.stream_chat(messages, chat_template=template, model=alias, **opts)
                return sse(endpoint, chunks, await _first(chunks))
            result = await whole(
                request, lambda: mtp.chat(messages, chat_template=template, model=alias, **opts)
            )
            metrics.count(endpoint, 200)
            return JSONResponse(result.model_dump(exclude_none=True))
        except Exception as exc:
            return error_response(endpoint, exc)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        endpoint = "/v1/completions"
        try:
            body = await admitted(request)
            prompt = _prompt_of(body.get("prompt"))
            opts = {
                k: v for k, v in body.items() if k not in ("prompt", "echo", "suffix", "best_of", "model")
            }
            stream = mtp._stream_completion(prompt, alias, **opts)
            if body.get("stream"):
                return sse(endpoint, stream, await _first(stream))
            result = await whole(request, stream.collect)
            metrics.count(endpoint, 200)
            return JSONResponse(result.model_dump(exclude_none=True))
        except Exception as exc:
            return error_response(endpoint, exc)

    return app


async def _first(stream: Any) -> Any:
    """The first item of a stream, so that a refused call (busy, bad prompt) is an HTTP
    error rather than an event inside a 200 response; the stream is closed on failure."""
    try:
        return await stream.__anext__()
    except BaseException:
        await stream.aclose()
        raise


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


def _version() -> str:
    from . import __version__

    return __version__
