"""A counting relay for llama.cpp's RPC protocol (``scripts/rpc_traffic.py``, tests).

:class:`Relay` listens on 127.0.0.1, forwards every connection to one real worker and
parses the framing both ways:

    request  | cmd (1 byte) | size (8 bytes LE) | payload |
    response | size (8 bytes LE) | payload |      (only the commands in ``_ANSWERED``)

It tallies, per command, the count, request bytes, response bytes and round trips
(commands the client waits an answer for), and can keep an ordered log of the
commands (with the tensor name of SET/GET/COPY_TENSOR and the node count of
GRAPH_COMPUTE) for reading one iteration by eye. The HELLO request goes out with
its transport capabilities zeroed, so client and worker stay on TCP (through here)
even where both could do RDMA.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field

__all__ = ["CMD_NAMES", "LogEntry", "Relay", "Tally", "diff", "wait_quiet"]

# ggml/src/ggml-rpc/ggml-rpc.cpp, enum rpc_cmd (protocol 7.0.0)
CMD_NAMES = (
    "ALLOC_BUFFER",
    "GET_ALIGNMENT",
    "GET_MAX_SIZE",
    "BUFFER_GET_BASE",
    "FREE_BUFFER",
    "BUFFER_CLEAR",
    "SET_TENSOR",
    "SET_TENSOR_HASH",
    "GET_TENSOR",
    "COPY_TENSOR",
    "GRAPH_COMPUTE",
    "GET_DEVICE_MEMORY",
    "INIT_TENSOR",
    "GET_ALLOC_SIZE",
    "HELLO",
    "DEVICE_COUNT",
    "GRAPH_RECOMPUTE",
    "MEMSET_TENSOR",
)
# the commands whose request the server answers (rpc_serve_client's switch)
_ANSWERED = frozenset(
    {
        "ALLOC_BUFFER",
        "GET_ALIGNMENT",
        "GET_MAX_SIZE",
        "BUFFER_GET_BASE",
        "SET_TENSOR_HASH",
        "GET_TENSOR",
        "COPY_TENSOR",
        "GET_DEVICE_MEMORY",
        "GET_ALLOC_SIZE",
        "HELLO",
        "DEVICE_COUNT",
    }
)
_HELLO = CMD_NAMES.index("HELLO")
_CAPS_SIZE = 24
_TENSOR_SIZE = 296  # sizeof(rpc_tensor), packed
_NAME_AT = 228  # offsetof(rpc_tensor, name)
_NAME_SIZE = 64
_CHUNK = 1 << 20


def _name_at(head: bytes, at: int) -> str:
    raw = head[at + _NAME_AT : at + _NAME_AT + _NAME_SIZE]
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def _detail(cmd: str, head: bytes) -> str:
    """What the log line says besides the command: a tensor's name, a graph's size."""
    if cmd in ("SET_TENSOR", "GET_TENSOR", "SET_TENSOR_HASH", "MEMSET_TENSOR") and len(head) >= _TENSOR_SIZE:
        return _name_at(head, 0)
    if cmd == "COPY_TENSOR" and len(head) >= 2 * _TENSOR_SIZE:
        return f"{_name_at(head, 0)} -> {_name_at(head, _TENSOR_SIZE)}"
    if cmd == "GRAPH_COMPUTE" and len(head) >= 8:
        device, n_nodes = struct.unpack_from("<II", head)
        return f"dev {device}, {n_nodes} nodes"
    return ""


@dataclass
class Tally:
    """One command's totals (bytes include the framing)."""

    count: int = 0
    request_bytes: int = 0
    response_bytes: int = 0
    round_trips: int = 0

    def minus(self, other: Tally) -> Tally:
        return Tally(
            self.count - other.count,
            self.request_bytes - other.request_bytes,
            self.response_bytes - other.response_bytes,
            self.round_trips - other.round_trips,
        )


@dataclass
class LogEntry:
    cmd: str
    request_bytes: int
    detail: str
    response_bytes: int = 0
    t_ns: int = field(default_factory=time.monotonic_ns)
    worker: int = 0


@dataclass
class _Conn:
    pending: deque[LogEntry] = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), _CHUNK))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return bytes(buf)


def _pipe(src: socket.socket, dst: socket.socket, n: int, keep: int) -> bytes:
    """Forward ``n`` bytes from ``src`` to ``dst``; the first ``keep`` of them."""
    head = bytearray()
    left = n
    while left > 0:
        chunk = src.recv(min(left, _CHUNK))
        if not chunk:
            raise ConnectionError("closed")
        if len(head) < keep:
            head += chunk[: keep - len(head)]
        dst.sendall(chunk)
        left -= len(chunk)
    return bytes(head)


class Relay:
    """A relay on 127.0.0.1 in front of the worker at ``host:port``."""

    def __init__(self, host: str, port: int, worker: int = 0) -> None:
        self.upstream = (host, port)
        self.worker = worker
        self._lock = threading.Lock()
        self._tallies: dict[str, Tally] = {}
        self._log: list[LogEntry] | None = None
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._socks: list[socket.socket] = []
        self.last_ns = time.monotonic_ns()  # the last command or response seen
        self.thread_ids: set[int] = set()  # native ids of the relay's threads (for CPU accounting)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    # ------------------------------------------------------------ counters
    def snapshot(self) -> dict[str, Tally]:
        """A copy of the per-command totals so far."""
        with self._lock:
            return {k: Tally(**vars(v)) for k, v in self._tallies.items()}

    def start_log(self) -> None:
        """Keep the commands from now on, in order (see :meth:`take_log`)."""
        with self._lock:
            self._log = []

    def take_log(self) -> list[LogEntry]:
        """The commands since :meth:`start_log`; logging stops."""
        with self._lock:
            log, self._log = self._log or [], None
        return log

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.close()

    # ------------------------------------------------------------ the relay
    def _accept(self) -> None:
        self.thread_ids.add(threading.get_native_id())
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._socks += [client, server]
            conn = _Conn()
            threading.Thread(target=self._requests, args=(client, server, conn), daemon=True).start()
            threading.Thread(target=self._responses, args=(server, client, conn), daemon=True).start()

    def _count(self, cmd: str, req: int = 0, rsp: int = 0, trip: int = 0, n: int = 0) -> None:
        t = self._tallies.setdefault(cmd, Tally())
        t.count += n
        t.request_bytes += req
        t.response_bytes += rsp
        t.round_trips += trip

    def _requests(self, client: socket.socket, server: socket.socket, conn: _Conn) -> None:
        self.thread_ids.add(threading.get_native_id())
        try:
            while True:
                cmd_byte, size_raw = _recv_exact(client, 1), _recv_exact(client, 8)
                size = struct.unpack("<Q", size_raw)[0]
                cmd = CMD_NAMES[cmd_byte[0]] if cmd_byte[0] < len(CMD_NAMES) else f"CMD_{cmd_byte[0]}"
                entry = LogEntry(cmd, 9 + size, "", worker=self.worker)
                self.last_ns = entry.t_ns
                with self._lock:
                    self._count(cmd, req=9 + size, n=1)
                    if self._log is not None:
                        self._log.append(entry)
                if cmd in _ANSWERED:  # before the request can reach the worker
                    with conn.lock:
                        conn.pending.append(entry)
                if cmd_byte[0] == _HELLO:
                    head = _recv_exact(client, size)
                    server.sendall(cmd_byte + size_raw + bytes(min(size, _CAPS_SIZE)) + head[_CAPS_SIZE:])
                else:
                    server.sendall(cmd_byte + size_raw)
                    head = _pipe(client, server, size, 2 * _TENSOR_SIZE)
                entry.detail = _detail(cmd, head)
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_WR)

    def _responses(self, server: socket.socket, client: socket.socket, conn: _Conn) -> None:
        self.thread_ids.add(threading.get_native_id())
        try:
            while True:
                size_raw = _recv_exact(server, 8)
                size = struct.unpack("<Q", size_raw)[0]
                with conn.lock:
                    entry = conn.pending.popleft() if conn.pending else None
                client.sendall(size_raw)
                _pipe(server, client, size, 0)
                cmd = entry.cmd if entry is not None else "UNEXPECTED_RESPONSE"
                with self._lock:
                    self._count(cmd, rsp=8 + size, trip=1)
                self.last_ns = time.monotonic_ns()
                if entry is not None:
                    entry.response_bytes = 8 + size
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_WR)


def wait_quiet(relays: list[Relay], quiet_s: float = 0.5, timeout_s: float = 30.0) -> None:
    """Wait until no relay has seen traffic for ``quiet_s`` (a server may still be
    talking to its workers after it answered its client)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        idle = (time.monotonic_ns() - max(r.last_ns for r in relays)) / 1e9
        if idle >= quiet_s:
            return
        time.sleep(quiet_s - idle)
    raise TimeoutError(f"RPC traffic did not stop within {timeout_s} s")


def diff(after: dict[str, Tally], before: dict[str, Tally]) -> dict[str, Tally]:
    """Per-command totals of ``after`` minus ``before`` (commands with no traffic left out)."""
    out: dict[str, Tally] = {}
    for cmd, t in after.items():
        d = t.minus(before.get(cmd, Tally()))
        if d.count or d.round_trips:
            out[cmd] = d
    return out
