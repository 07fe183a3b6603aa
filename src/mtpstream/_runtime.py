"""The process's single native worker (see native/runtime.hpp for why one)."""

from __future__ import annotations

import threading
from typing import Any

from ._loader import _native

_lock = threading.Lock()
_runtime: Any = None


def get() -> Any:
    """The shared native runtime, started on first use."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = _native.Runtime()
        return _runtime
