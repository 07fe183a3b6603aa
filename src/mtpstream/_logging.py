"""Forwards llama.cpp's log output to the ``mtpstream.llama`` logger.

llama.cpp may log from the worker thread, which never holds the GIL, so the
native side buffers lines and they are forwarded here at convenient points
(after loading, after creating a session, while streaming). The logger is quiet
unless the application configures it.
"""

from __future__ import annotations

import logging

from ._loader import _native

logger = logging.getLogger("mtpstream.llama")
logger.addHandler(logging.NullHandler())

_GGML_TO_PY = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}

_bridge = _native.LogBridge()
_bridge.install()


def _ggml_level(py_level: int) -> int:
    if py_level <= logging.DEBUG:
        return 1
    if py_level <= logging.INFO:
        return 2
    if py_level <= logging.WARNING:
        return 3
    return 4


def sync_level() -> None:
    """Collect only what the logger would emit."""
    _bridge.set_min_level(_ggml_level(logger.getEffectiveLevel()))


def flush() -> list[str]:
    """Forward buffered llama.cpp log lines to the logger; return the error lines."""
    errors: list[str] = []
    for level, line in _bridge.drain():
        logger.log(_GGML_TO_PY.get(level, logging.INFO), "%s", line)
        if level >= 4:
            errors.append(line.strip())
    sync_level()
    return errors


def with_errors(message: str, errors: list[str]) -> str:
    """``message`` followed by llama.cpp's own error lines, if it logged any."""
    if not errors:
        return message
    return f"{message}: " + " / ".join(errors[-3:])


sync_level()
