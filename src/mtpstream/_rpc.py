"""llama.cpp's RPC backend: checking worker endpoints before a load, and the worker itself.

ggml's RPC client ends the process (``GGML_ABORT``) when it cannot connect to a
worker or loses one, and blocks for good on a worker that accepts the connection
but never answers (``rpc-server`` serves one client at a time). So before llama.cpp
sees an endpoint, :func:`check_endpoints` makes sure, within a bounded time, that
something speaking the RPC protocol answers there.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Sequence

from . import _bridge
from .errors import InvalidOptionError, ModelLoadError

__all__ = ["check_endpoints", "parse_endpoints", "probe", "serve"]

# seconds to connect to a worker and to get its answer to the handshake
CONNECT_TIMEOUT_S = 5.0

# the protocol's handshake: command 14 (HELLO, fixed across versions), then the
# request's size and the request (the client's transport capabilities: none)
_HELLO_CMD = 14
_CAPS_SIZE = 24
_HELLO_REPLY_SIZE = 4 + _CAPS_SIZE

# endpoints this process has handed to llama.cpp: its connection to them may still be
# open, and a worker serves one client at a time, so a handshake of ours would wait
# behind it; those only must not refuse a connection
_used: set[str] = set()
_used_lock = threading.Lock()


def parse_endpoints(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"host:port,host:port"`` or a list of ``"host:port"`` as a tuple of endpoints.

    Raises:
        InvalidOptionError: an empty list, or an entry that is not ``host:port`` with a
            port in 1..65535 (``field="rpc"``).
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise InvalidOptionError(f"rpc endpoints must be 'host:port' strings, not {item!r}", field="rpc")
        host, port = _split(item.strip())
        out.append(f"{host}:{port}")
    if not out:
        raise InvalidOptionError("rpc needs at least one 'host:port' endpoint", field="rpc")
    if len(set(out)) != len(out):
        raise InvalidOptionError(f"rpc lists an endpoint twice: {out}", field="rpc")
    return tuple(out)


def _split(endpoint: str) -> tuple[str, int]:
    host, sep, port_text = endpoint.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidOptionError(f"rpc endpoint {endpoint!r} is not 'host:port'", field="rpc")
    return host, int(port_text)


def probe(endpoint: str, timeout_s: float = CONNECT_TIMEOUT_S, handshake: bool = True) -> None:
    """Connect to the worker at ``endpoint`` and (``handshake``) exchange the protocol's HELLO.

    Raises:
        ModelLoadError: nothing accepts the connection within ``timeout_s``, the worker
            does not answer the handshake in that time (busy with another client), or it
            speaks another protocol version.
    """
    host, port = _split(endpoint)
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            if handshake:
                _hello(sock, endpoint, timeout_s)
    except TimeoutError:
        raise ModelLoadError(
            f"RPC worker {endpoint} did not answer within {timeout_s:g} s (unreachable, or busy: "
            "an rpc-server serves one client at a time)"
        ) from None
    except OSError as exc:
        raise ModelLoadError(f"RPC worker {endpoint} is unreachable: {exc.strerror or exc}") from None


def _hello(sock: socket.socket, endpoint: str, timeout_s: float) -> None:
    sock.settimeout(timeout_s)
    sock.sendall(struct.pack("<BQ", _HELLO_CMD, _CAPS_SIZE) + bytes(_CAPS_SIZE))
    reply = _recv_exact(sock, 8 + _HELLO_REPLY_SIZE)
    (size,) = struct.unpack_from("<Q", reply)
    major = reply[8]
    if size != _HELLO_REPLY_SIZE or major != _bridge.rpc_protocol_major():
        raise ModelLoadError(
            f"RPC worker {endpoint} speaks RPC protocol {major}.{reply[9]} (reply size {size}); this "
            f"build speaks {_bridge.rpc_protocol_major()}.x: run the worker from the same install "
            "(`mtpstream rpc-server`)"
        )


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionResetError(0, "the worker closed the connection during the handshake")
        buf += chunk
    return buf


def check_endpoints(endpoints: Sequence[str]) -> None:
    """Raise before llama.cpp sees an endpoint that would end or hang the process.

    Raises:
        ModelLoadError: this llama.cpp build has no RPC backend (naming ``-DGGML_RPC=on``),
            or a worker is unreachable (naming its endpoint).
    """
    if not _bridge.rpc_available():
        raise ModelLoadError(
            "this llama.cpp build has no RPC backend: reinstall llama-cpp-python with "
            'CMAKE_ARGS="-DGGML_RPC=on" (`bash scripts/dev.sh setup` does)'
        )
    for endpoint in endpoints:
        with _used_lock:
            used = endpoint in _used
        if not used:
            probe(endpoint)
            continue
        # this process may be the worker's one client: its backlog of one may leave our
        # connection unanswered; only a refusal says the worker is gone
        if _refused(endpoint):
            raise ModelLoadError(f"RPC worker {endpoint} is unreachable: connection refused")


def _refused(endpoint: str) -> bool:
    """Whether nothing listens at ``endpoint`` (an unanswered connection is not a refusal)."""
    host, port = _split(endpoint)
    try:
        socket.create_connection((host, port), timeout=1.0).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


def mark_used(endpoints: Sequence[str]) -> None:
    """Remember that llama.cpp holds (or held) a connection to these endpoints."""
    with _used_lock:
        _used.update(endpoints)


def serve(host: str, port: int, threads: int, cache_dir: str, mem_mib: int = 0) -> str:
    """Run an RPC worker on the CPU device (blocks); returns why it stopped. ``mem_mib``
    > 0: the memory it offers each client (reported, and allocations past it refused)."""
    return _bridge.rpc_serve(f"{host}:{port}", cache_dir, threads, mem_mib * 2**20)
