"""``mtpstream rpc-server`` (an RPC worker from this install) and the ``--rpc`` flags."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from . import _bridge, _rpc
from ._console import Field
from .errors import InvalidOptionError, ModelLoadError, MTPError

__all__ = [
    "RPC_SERVER_DESCRIPTION",
    "RPC_SERVER_HELP",
    "add_rpc_args",
    "add_rpc_server_args",
    "capture_placement",
    "placement_fields",
    "rpc_load_options",
]

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_NO_AUTH = "the RPC protocol has no authentication: anyone who reaches this port can use the worker"


# ------------------------------------------------------------------ rpc-server
RPC_SERVER_HELP = "serve this machine's CPU to --rpc clients (llama.cpp's RPC backend; no authentication)"
RPC_SERVER_DESCRIPTION = (
    "An RPC worker (llama.cpp's rpc-server) from this install: clients "
    "(load_model(rpc=...), `mtpstream serve --rpc`, llama-server --rpc) offload layers to it. "
    f"It binds loopback unless told otherwise; {_NO_AUTH}, so bind other addresses on a "
    "trusted network only. It serves one client at a time and runs until interrupted."
)


def add_rpc_server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=50052, help="port (default 50052)")
    p.add_argument(
        "-t", "--threads", type=_positive, default=None, metavar="N",
        help="threads of the CPU device (default: all cores)",
    )  # fmt: skip
    p.add_argument(
        "--cache", default=None, metavar="DIR",
        help="keep large tensors a client sends in DIR and take them from there next time (by hash)",
    )  # fmt: skip
    p.add_argument(
        "-m", "--mem", type=_positive, default=None, metavar="MiB",
        help="offer each client at most this much memory: reported as the device's, and an "
        "allocation past it refused (default: the device's own)",
    )  # fmt: skip
    p.set_defaults(func=cmd_rpc_server)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"a port is 1..65535, not {text!r}")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a count >= 1, not {text!r}")
    return int(text)


def cmd_rpc_server(args: argparse.Namespace) -> int:
    """Run the worker in the foreground until interrupted (the server loop runs on a
    thread so that Ctrl-C and SIGTERM end the process); returns only on failure."""
    if not _bridge.rpc_available():
        raise MTPError(
            "this llama.cpp build has no RPC backend: reinstall llama-cpp-python with "
            'CMAKE_ARGS="-DGGML_RPC=on" (`bash scripts/dev.sh setup` does)'
        )
    if args.host not in _LOOPBACK:
        print(f"warning: binding {args.host}: {_NO_AUTH}; use a trusted network only", file=sys.stderr)
    threads = args.threads or os.cpu_count() or 1
    cache = ""
    if args.cache is not None:
        os.makedirs(args.cache, exist_ok=True)
        cache = os.path.abspath(args.cache)
    stopped: list[str] = []
    worker = threading.Thread(
        target=lambda: stopped.append(_rpc.serve(args.host, args.port, threads, cache, args.mem or 0)),
        name="mtpstream-rpc-server",
        daemon=True,
    )
    worker.start()
    _announce(args.host, args.port, worker)
    while worker.is_alive():
        worker.join(0.5)
    raise MTPError(stopped[0] if stopped else "the RPC server stopped")


def _announce(host: str, port: int, worker: threading.Thread) -> None:
    """Print one line once the worker accepts connections (what scripts wait for)."""
    target = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    while worker.is_alive():
        try:
            _rpc.probe(f"{target}:{port}", timeout_s=1.0, handshake=False)
        except ModelLoadError:
            worker.join(0.05)
            continue
        print(f"mtpstream rpc-server: listening on {host}:{port}", flush=True)
        return


# ------------------------------------------------------------------ --rpc on serve and info
def add_rpc_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rpc", default=None, metavar="HOST:PORT,...",
        help="offload layers to these `mtpstream rpc-server` workers (llama.cpp's RPC backend)",
    )  # fmt: skip
    p.add_argument(
        "-ts", "--tensor-split", default=None, metavar="N0,N1,...",
        help="shares of the offloaded layers per device: the --rpc workers, then local GPUs",
    )  # fmt: skip
    p.add_argument(
        "--rpc-timeout", type=float, default=None, metavar="SECONDS",
        help="a worker that has not replied for this long counts as lost (default 300)",
    )  # fmt: skip
    p.add_argument(
        "--mtp-local", action="store_true",
        help="keep the MTP layers and the output layer on this host's CPU, not on the last worker",
    )  # fmt: skip


def rpc_load_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``rpc``, ``rpc_timeout``, ``mtp_local`` and ``tensor_split`` keywords of
    ``load_model`` from the flags."""
    out: dict[str, Any] = {}
    if getattr(args, "rpc", None):
        out["rpc"] = args.rpc
        if getattr(args, "rpc_timeout", None) is not None:
            out["rpc_timeout"] = args.rpc_timeout
        if getattr(args, "mtp_local", False):
            out["mtp_local"] = True
    split = getattr(args, "tensor_split", None)
    if split:
        try:
            out["tensor_split"] = [float(x) for x in split.split(",")]
        except ValueError:
            raise InvalidOptionError(
                f"--tensor-split takes numbers separated by commas, not {split!r}", field="tensor_split"
            ) from None
    return out


# llama.cpp's lines (load_tensors, at debug and info level) that tell the placement
_LAYER_LINE = re.compile(r"layer\s+(\d+) assigned to device (\S+?),")
_BUFFER_LINE = re.compile(r"load_tensors:\s+(\S+) model buffer size =\s+([0-9.]+) MiB")
_DEVICE_LINE = re.compile(r"using device (\S+) \(.*\) - (\d+) MiB free")


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextmanager
def capture_placement() -> Iterator[list[str]]:
    """Collect llama.cpp's log lines (debug level included) while loading."""
    logger = logging.getLogger("mtpstream.llama")
    handler = _Lines()
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.lines
    finally:
        logger.setLevel(old)
        logger.removeHandler(handler)


def placement_fields(
    lines: list[str], endpoints: tuple[str, ...] = (), relays: Sequence[str] = ()
) -> list[Field]:
    """Which device holds which layers, and each device's weight buffers, from llama.cpp's log.

    llama.cpp names RPC devices ``RPC0``, ``RPC1``, ... in the order they were added in
    this process; when those are exactly ``endpoints`` (a fresh process), each name
    gets its endpoint. llama.cpp's client talks to each worker through mtpstream's
    relay on loopback (``relays``, in the order of ``endpoints``), so its buffer names
    hold the relay's address: each is shown as its worker's. The last "layer" is the
    output layer."""
    worker_of = dict(zip(relays, endpoints, strict=False))
    layers: dict[str, list[int]] = {}
    for line in lines:
        m = _LAYER_LINE.search(line)
        if m:
            layers.setdefault(m.group(2), []).append(int(m.group(1)))
    rpc_names = sorted(d for d in layers if d.startswith("RPC"))
    named = {f"RPC{i}": f"RPC{i} ({e})" for i, e in enumerate(endpoints)}
    if not set(rpc_names) <= set(named):
        named = {}
    out: list[Field] = [(f"layers on {named.get(dev, dev)}", _ranges(ids)) for dev, ids in layers.items()]
    for line in lines:
        m = _DEVICE_LINE.search(line)
        if m:  # what each device offered when the model loaded (a worker's --mem caps it)
            out.append((f"memory on {named.get(m.group(1), m.group(1))}", f"{m.group(2)} MiB free"))
    for line in lines:
        m = _BUFFER_LINE.search(line)
        if m:
            # an RPC buffer is named "RPC<device index on its server>[endpoint]"
            where = m.group(1)
            where = where[where.index("[") + 1 : -1] if where.startswith("RPC") and "[" in where else where
            where = worker_of.get(where, where)
            out.append((f"weights on {where}", f"{float(m.group(2)):.2f} MiB"))
    return out


def _ranges(ids: list[int]) -> str:
    parts: list[str] = []
    start = prev = ids[0]
    for i in [*ids[1:], -1]:
        if i != prev + 1:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = i
        prev = i
    return ", ".join(parts)
