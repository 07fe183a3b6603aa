"""uvicorn for ``mtpstream serve``: an h11 protocol with the transport's limits (a
header deadline, a write-stall timeout, a connection cap, OpenAI-shaped errors on
malformed HTTP) and a server that shuts down gracefully (needs the server extra)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ._server_calls import Lifecycle
from ._server_http import HTTPError
from .server_limits import ServerLimits

_log = logging.getLogger("mtpstream.server")
_SEND_BUFFER_BYTES = 64 * 1024  # the kernel send buffer per connection (else autotuned to ~4 MiB)
_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 503: b"Service Unavailable"}


def _raw_response(status: int, message: str, code: str) -> bytes:
    body = json.dumps(HTTPError(status, message, code=code).body()).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS[status].decode()}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with :attr:`limits`' header deadline, write-stall timeout,
    connection cap and send buffer."""

    limits: ClassVar[ServerLimits] = ServerLimits()
    _header_timer: asyncio.TimerHandle | None = None
    _stall_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            _log.warning("refusing a connection: %d open (--max-connections)", len(self.connections) - 1)
            transport.write(_raw_response(503, "too many connections", "too_many_connections"))
            transport.close()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:  # a reader that stalls is noticed after this much, not megabytes
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER_BYTES)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._header_timer, self._stall_timer):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        self._arm_header_timer()
        super().on_response_complete()

    def _arm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timed_out)

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return  # a request is running: its body and response have their own limits
        if self.conn.trailing_data[0]:  # part of a request came: say why it is dropped
            message = f"the request headers did not arrive within {self.limits.header_timeout:g} s"
            self.transport.write(_raw_response(408, message, "request_timeout"))
        self.transport.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall_timer is None:
            self._stall_timer = self.loop.call_later(self.limits.stream_idle_timeout, self._write_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _write_stalled(self) -> None:
        self._stall_timer = None
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        _log.warning(
            "dropping %s: it read nothing for %g s (--stream-idle-timeout)",
            client,
            self.limits.stream_idle_timeout,
        )
        self.transport.abort()  # connection_lost: the response (and its generation) is cancelled

    def send_400_response(self, msg: str) -> None:
        self.transport.write(_raw_response(400, "invalid HTTP request", "invalid_http"))
        self.transport.close()


def protocol_class(limits: ServerLimits) -> type[asyncio.Protocol]:
    """:class:`LimitedH11Protocol` with ``limits``."""
    return type("LimitedH11Protocol", (LimitedH11Protocol,), {"limits": limits})


def config(app: Any, host: str, port: int, limits: ServerLimits) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        http=protocol_class(limits),
        timeout_keep_alive=limits.keep_alive_timeout,  # type: ignore[arg-type]
        h11_max_incomplete_event_size=limits.max_header_bytes,
        timeout_graceful_shutdown=1,
    )


class GracefulServer(uvicorn.Server):
    """SIGINT/SIGTERM stop accepting connections and new calls, give the running ones
    ``shutdown_grace`` seconds, end the rest (an error event for streams, 503 for whole
    results), then exit with code 0 (uvicorn itself re-raises the signal at the end)."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, limits: ServerLimits) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.limits = limits

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def stop(sig: int, frame: Any) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def shutdown(self, sockets: Any = None) -> None:
        for server in self.servers:
            server.close()
        self.lifecycle.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.shutdown_grace
        while self.lifecycle.running and loop.time() < deadline and not self.force_exit:
            await asyncio.sleep(0.05)
        self.lifecycle.stop()
        await asyncio.sleep(0)
        await super().shutdown(sockets)
