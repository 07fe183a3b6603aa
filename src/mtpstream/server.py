"""An OpenAI-compatible HTTP server over one session (``mtpstream serve MODEL``).

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (whole results,
or server-sent events with ``"stream": true``), ``GET /v1/models``, ``GET /health``
and ``GET /metrics`` (Prometheus text); llama-server's ``POST /tokenize``,
``/detokenize``, ``/apply-template``, ``GET /props`` and ``/slots``
(:mod:`._server_utility`); ``POST /v1/responses`` serves OpenAI's Responses API over
the same chat calls (:mod:`._server_responses`, stateless); ``POST /v1/messages`` and
``POST /v1/messages/count_tokens`` speak Anthropic's Messages API
(:mod:`._server_anthropic`, with Anthropic's error objects). Other errors are OpenAI
error objects (``{"error": {"message", "type", "param", "code"}}``): 400 for a bad request (the
session keeps working), 401 for a wrong API key, 404/405 for a wrong route, 408 for a
body that does not arrive in time, 413 for a body over ``max_body_bytes``, 429 when
the queue is full, 500 when generation fails, 503 once the session is closed or the
server stops. A client that disconnects, or stops reading, cancels its generation.
The limits are :class:`~mtpstream.server_limits.ServerLimits`.

Needs the ``server`` extra (``pip install 'mtpstream[server]'``: FastAPI, uvicorn).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from ._chunk_streams import CompletionStream
from ._openai import ChatBody, CompletionBody
from .server_limits import ServerLimits
from .session import MTP

try:  # the server extra
    from fastapi import APIRouter, Depends, FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, Response

    from ._server_anthropic import router as messages_router
    from ._server_http import HostCheck, HTTPError, install_error_handlers, require_key
    from ._server_responses import router as responses_router
    from ._server_state import ServerState, chat_chunks, generation, state_of
    from ._server_utility import router as utility_router
except ImportError:  # pragma: no cover - depends on the environment
    FastAPI = None  # type: ignore[assignment,misc]

__all__ = ["ServerLimits", "create_app"]

_CHAT = "/v1/chat/completions"
_CORS: dict[str, Any] = {
    "allow_methods": ["GET", "POST", "OPTIONS"],
    "allow_headers": ["Authorization", "Content-Type", "x-api-key"],
    "max_age": 600,
}
_COMPLETIONS = "/v1/completions"


def create_app(
    mtp: MTP,
    *,
    model_alias: str | None = None,
    api_key: str | Sequence[str] | None = None,
    max_queue: int | None = None,
    limits: ServerLimits | None = None,
    chat_defaults: Mapping[str, Any] | None = None,
) -> Any:
    """A FastAPI application serving ``mtp``.

    ``api_key``: one key or several; requests must send one of them as
    ``Authorization: Bearer KEY`` or ``x-api-key: KEY`` (401 otherwise); without a key,
    only ``limits.allowed_hosts`` may be named in ``Host`` (against DNS rebinding).
    ``max_queue``: at most this many calls wait for a free sequence; more
    get 429 (overrides ``limits.max_queue``). ``limits``: :class:`ServerLimits` (with
    ``cors_origins``, CORS headers for those web origins).
    ``app.state.lifecycle`` lets the server drain and stop the app's calls;
    ``app.state.endpoints`` lists the paths served by HTTP method.
    ``chat_defaults``: chat options a request does not set (``reasoning_format``,
    ``chat_template_kwargs``, merged key by key; CLI ``--reasoning-format``,
    ``--chat-template-kwargs``).

    Raises:
        ImportError: FastAPI is not installed (the ``server`` extra).
        ValueError: an empty API key.
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
    keys = (api_key,) if isinstance(api_key, str) else tuple(api_key or ())
    if any(not isinstance(k, str) or not k for k in keys):
        raise ValueError("an API key must be a non-empty string")
    app.state.api_keys = keys
    install_error_handlers(app, lambda request, err: state.metrics.count(request.url.path, err.status))
    if not keys:
        app.add_middleware(HostCheck, allowed=frozenset(h.lower() for h in limits.allowed_hosts))
    if limits.cors_origins:  # outermost: a preflight is answered before the key is checked
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(limits.cors_origins), **_CORS)
    routers = (router, responses_router, messages_router, utility_router)
    for each in routers:
        app.include_router(each)
    app.state.endpoints = _endpoints(routers)
    return app


def _endpoints(routers: Sequence[Any]) -> dict[str, list[str]]:
    """The paths the routers serve by HTTP method (POST first), in the order added."""
    out: dict[str, list[str]] = {"POST": [], "GET": []}
    for each in routers:
        for route in each.routes:
            for method in sorted(route.methods - {"HEAD"}):
                out.setdefault(method, []).append(route.path.replace(":path}", "}"))
    return {m: paths for m, paths in out.items() if paths}


# ------------------------------------------------------------------ routes
if FastAPI is not None:
    router = APIRouter()
    _key = [Depends(require_key)]

    @router.get("/health")
    async def health(request: Request) -> Any:
        state = state_of(request)
        if state.mtp.closed:
            return JSONResponse({"status": "closed"}, status_code=503)
        if state.lifecycle.draining:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        loss = state.mtp.model.rpc_loss if not state.mtp.model.closed else None
        if loss:  # the model lost an RPC worker: restart the server once the worker is back
            return JSONResponse({"status": "rpc worker lost", "error": loss}, status_code=503)
        return {"status": "ok"}

    @router.get("/metrics")
    async def metrics(request: Request) -> Any:
        state = state_of(request)
        return PlainTextResponse(state.metrics.render(state.mtp), media_type="text/plain; version=0.0.4")

    @router.get("/v1/models", dependencies=_key)
    async def models(request: Request) -> Any:
        return {"object": "list", "data": [state_of(request).model_card()]}

    @router.get("/v1/models/{model_id:path}", dependencies=_key)
    async def model(request: Request, model_id: str) -> Any:
        state = state_of(request)
        if model_id != state.alias:
            message = f"The model '{model_id}' does not exist (this server serves '{state.alias}')"
            err = HTTPError(404, message, kind="invalid_request_error", param="model", code="model_not_found")
            return err.response()
        return state.model_card()

    @router.post(_CHAT, dependencies=_key)
    async def chat_completions(request: Request) -> Response:
        return await generation(request, _CHAT, ChatBody.of, chat_chunks)

    @router.post(_COMPLETIONS, dependencies=_key)
    async def completions(request: Request) -> Response:
        return await generation(request, _COMPLETIONS, CompletionBody.of, _completion_chunks)


def _completion_chunks(state: ServerState, body: CompletionBody) -> CompletionStream:
    events = state.mtp.stream_events(body.prompt, **body.options)
    echo = ""
    if body.echo:
        echo = body.prompt if isinstance(body.prompt, str) else state.mtp.model.detokenize(body.prompt)
    return CompletionStream(events, state.alias, echo=echo)


def _version() -> str:
    from . import __version__

    return __version__
