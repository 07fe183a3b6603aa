"""The server's HTTP edge: OpenAI-shaped errors (Anthropic-shaped under
``/v1/messages``), the request body (size, time, JSON depth), the API key as a
dependency and the Host allow-list (needs the server extra)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from ._anthropic import error_body as anthropic_error
from .errors import (
    ContextOverflowError,
    GenerationError,
    GrammarCostError,
    InvalidOptionError,
    MTPError,
    SessionBusyError,
    SessionClosedError,
    WorkerLostError,
)
from .server_limits import ServerLimits, host_name

_THREAD_PARSE_BYTES = 64 * 1024  # larger bodies are parsed off the event loop
_KINDS = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}
_ANTHROPIC = "/v1/messages"  # the routes under it answer errors in Anthropic's shape


class HTTPError(Exception):
    """An error response: ``{"error": {"message", "type", "param", "code"}}`` (under
    ``/v1/messages``: ``{"type": "error", "error": {"type", "message"}}``)."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str | None = None,
        param: str | None = None,
        code: str | None = None,
        close: bool = False,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.close = status, message, param, code, close
        if kind is None:
            kind = _KINDS.get(status, "invalid_request_error" if status < 500 else "server_error")
        self.kind = kind

    def body(self, path: str = "") -> dict[str, Any]:
        """The error object the API of ``path`` answers with."""
        if path == _ANTHROPIC or path.startswith(_ANTHROPIC + "/"):
            return anthropic_error(self.status, self.message)
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self, path: str = "") -> JSONResponse:
        headers = {"Connection": "close"} if self.close else None
        return JSONResponse(self.body(path), status_code=self.status, headers=headers)


def error_bytes(status: int, message: str, code: str | None = None) -> bytes:
    return json.dumps(HTTPError(status, message, code=code).body()).encode()


def mapped(exc: BaseException) -> HTTPError:
    """The one place errors become HTTP statuses."""
    if isinstance(exc, HTTPError):
        return exc
    if isinstance(exc, ClientDisconnect):
        return HTTPError(499, "the client closed the request")
    if isinstance(exc, ContextOverflowError):
        return HTTPError(400, str(exc), "invalid_request_error", "messages", "context_length_exceeded")
    if isinstance(exc, InvalidOptionError):
        return HTTPError(400, str(exc), "invalid_request_error", exc.field)
    if isinstance(exc, SessionBusyError):
        return HTTPError(429, str(exc), "rate_limit_error", None, "queue_full")
    if isinstance(exc, SessionClosedError):
        return HTTPError(503, str(exc), "server_error", None, "closed")
    if isinstance(exc, TimeoutError):  # the request's own `timeout` option
        return HTTPError(
            408,
            f"no token within the request's timeout: {exc}",
            "invalid_request_error",
            "timeout",
            "timeout",
        )
    if isinstance(exc, WorkerLostError):  # the server cannot serve until restarted
        return HTTPError(503, str(exc), "server_error", None, "rpc_worker_lost")
    if isinstance(exc, GrammarCostError):  # the request's grammar, not the server
        return HTTPError(400, str(exc), "invalid_request_error", exc.field, "grammar_too_costly")
    if isinstance(exc, (GenerationError, MTPError)):
        return HTTPError(500, str(exc), "server_error")
    return HTTPError(500, f"internal error: {type(exc).__name__}", "server_error")


def install_error_handlers(app: FastAPI, on_error: Callable[[Request, HTTPError], None]) -> None:
    """Every error the app answers (ours, routing's 404/405, validation) is an error
    object of the route's API (:meth:`HTTPError.body`)."""

    async def ours(request: Request, exc: Exception) -> JSONResponse:
        err = mapped(exc)
        on_error(request, err)
        return err.response(request.url.path)

    async def routing(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        response = HTTPError(exc.status_code, str(exc.detail)).response(request.url.path)
        response.headers.update(exc.headers or {})  # 405's Allow
        return response

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        return HTTPError(400, "the request is malformed").response(request.url.path)

    app.add_exception_handler(HTTPError, ours)
    app.add_exception_handler(StarletteHTTPException, routing)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(Exception, ours)


# ------------------------------------------------------------------ the body
async def read_json(request: Request, limits: ServerLimits) -> dict[str, Any]:
    """The request's JSON object, read within ``body_timeout`` and ``max_body_bytes``
    (413 on ``Content-Length`` or as soon as the body passes it) and no deeper than
    ``max_json_depth`` (400)."""
    limit = limits.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    raw = bytearray()
    with anyio.move_on_after(limits.body_timeout) as scope:
        async for piece in request.stream():
            raw += piece
            if len(raw) > limit:
                raise _too_large(limit)
    if scope.cancelled_caught:
        raise HTTPError(
            408,
            f"the request body did not arrive within {limits.body_timeout:g} s",
            code="request_timeout",
            close=True,
        )
    if len(raw) > _THREAD_PARSE_BYTES:
        return await anyio.to_thread.run_sync(parse_json, bytes(raw), limits.max_json_depth)
    return parse_json(bytes(raw), limits.max_json_depth)


def _too_large(limit: int) -> HTTPError:
    return HTTPError(
        413,
        f"the request body is larger than {limit} bytes (--max-body-bytes)",
        code="request_too_large",
        close=True,
    )


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(raw: bytes, max_depth: int) -> dict[str, Any]:
    """A JSON object no deeper than ``max_depth`` (400 otherwise; NaN and Infinity are
    refused as the JSON standard does)."""
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise _too_deep(max_depth) from None
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError, bad UTF-8, huge ints
        raise HTTPError(400, "the request body is not valid JSON", "invalid_request_error") from None
    if not isinstance(body, dict):
        raise HTTPError(400, "the request body must be a JSON object", "invalid_request_error")
    if _depth_exceeds(body, max_depth):
        raise _too_deep(max_depth)
    return body


def _too_deep(max_depth: int) -> HTTPError:
    return HTTPError(400, f"the request body nests JSON deeper than {max_depth} levels", code="too_deep")


def _depth_exceeds(value: Any, max_depth: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > max_depth:
                    return True
                stack.append((child, depth + 1))
    return False


# ------------------------------------------------------------------ key and host
async def require_key(request: Request) -> None:
    """A FastAPI dependency: one of ``app.state.api_keys`` in ``Authorization: Bearer
    KEY`` (OpenAI's clients) or ``x-api-key: KEY`` (Anthropic's), or 401 (nothing to
    check when the app has no key). Every key is compared in constant time."""
    keys: tuple[str, ...] = request.app.state.api_keys
    if not keys:
        return
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
    sent = token.encode()
    matched = False
    for key in keys:  # no early exit: the time does not say which key came close
        matched |= secrets.compare_digest(sent, key.encode())
    if not matched:
        raise HTTPError(401, "invalid or missing API key", "invalid_request_error", None, "invalid_api_key")


class HostCheck:
    """Pure ASGI middleware: a request whose ``Host`` is not allowed gets 400 (against
    DNS rebinding, for a server without an API key). A request without ``Host`` (HTTP/1.0)
    passes: browsers always send one."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "*" not in self.allowed:
            host = next((v for k, v in scope["headers"] if k == b"host"), None)
            if host is not None and host_name(host.decode("latin-1")) not in self.allowed:
                err = HTTPError(
                    400,
                    "this Host is not allowed: set an API key, or add it with --allowed-hosts",
                    code="invalid_host",
                )
                await err.response(scope.get("path", ""))(scope, receive, send)
                return
        await self.app(scope, receive, send)
