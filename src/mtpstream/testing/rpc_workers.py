"""Local ``mtpstream rpc-server`` workers on 127.0.0.1 for tests and benchmarks.

:func:`rpc_workers` starts them in subprocesses (each on a free port, its output in a
log file), waits until each accepts connections, and kills them on exit. A worker can
be killed (``SIGKILL``, as a crashed machine) and started again on the same port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = ["RpcWorker", "free_port", "rpc_workers"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RpcWorker:
    """One ``mtpstream rpc-server`` subprocess on 127.0.0.1."""

    def __init__(self, port: int, threads: int, log_dir: Path, mem_mib: int | None = None) -> None:
        self.port = port
        self.threads = threads
        self.mem_mib = mem_mib
        self.log = log_dir / f"rpc-{port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        """Start the worker and wait until it accepts connections.

        Raises:
            RuntimeError: it exited, or did not listen within ``timeout`` s (its log attached).
        """
        cmd = [sys.executable, "-m", "mtpstream", "rpc-server", "--port", str(self.port)]
        cmd += ["--threads", str(self.threads)]
        if self.mem_mib is not None:
            cmd += ["--mem", str(self.mem_mib)]
        start = self.log.stat().st_size if self.log.exists() else 0  # a restart appends
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if b"listening on" in self.log.read_bytes()[start:]:
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"rpc-server on port {self.port} did not start:\n{self.output()}")

    def kill(self) -> None:
        """SIGKILL the worker (as a machine that went away) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        """End the worker (SIGTERM, then SIGKILL after 10 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def rpc_workers(
    n: int = 2, threads: int = 1, timeout: float = 60.0, mem_mib: Sequence[int | None] = ()
) -> Iterator[list[RpcWorker]]:
    """``n`` running workers on 127.0.0.1 (``threads`` each; worker i offering
    ``mem_mib[i]`` MiB when given, ``rpc-server --mem``); all stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="mtpstream-rpc-") as tmp:
        mems = [*mem_mib, *[None] * n][:n]
        workers = [RpcWorker(free_port(), threads, Path(tmp), mems[i]) for i in range(n)]
        try:
            for w in workers:
                w.start(timeout)
            yield workers
        finally:
            for w in workers:
                w.stop()
