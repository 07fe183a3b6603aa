"""The process's single native worker (see native/runtime.hpp for why one), and the
bookkeeping that keeps native work from racing interpreter exit and fork."""

from __future__ import annotations

import atexit
import os
import threading

from ._loader import _native

_lock = threading.Lock()
_runtime: _native.Runtime | None = None
# runtimes inherited through fork(): their worker thread did not survive the fork, so
# they are never used again (and never destroyed before exit, which then leaks them)
_inherited: list[_native.Runtime] = []

_EXIT_WAIT_S = 60.0


def get() -> _native.Runtime:
    """The shared native runtime, started on first use."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = _native.Runtime()
        return _runtime


def _at_exit() -> None:
    """Before finalization, while daemon threads still run: cancel every generation and
    join the worker, then let no thread take the GIL back from llama.cpp (it would be
    killed in C++ code, which aborts the process) and wait for llama.cpp to be idle."""
    with _lock:
        runtime = _runtime
    if runtime is not None:
        runtime.shutdown()
    _native.begin_exit(_EXIT_WAIT_S)


def _after_fork_in_child() -> None:
    global _runtime, _lock
    _lock = threading.Lock()  # the parent's may have been held by another thread
    if _runtime is not None:
        _inherited.append(_runtime)
        _runtime = None


atexit.register(_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
