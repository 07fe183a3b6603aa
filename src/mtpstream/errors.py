"""Exceptions raised by mtpstream. Every failure is a subclass of :class:`MTPError`."""

from __future__ import annotations

__all__ = [
    "ContextOverflowError",
    "GenerationError",
    "InvalidOptionError",
    "MTPError",
    "ModelLoadError",
    "NoMTPHeadError",
    "SessionBusyError",
    "SessionClosedError",
]


class MTPError(Exception):
    """Base class of every error mtpstream raises."""


class ModelLoadError(MTPError):
    """A GGUF file could not be loaded (missing, not GGUF, truncated, unsupported...)."""


class NoMTPHeadError(MTPError):
    """Speculation was requested on a model that has no usable MTP head."""


class InvalidOptionError(MTPError, ValueError):
    """An option or input is invalid. ``field`` names the offending option (if one does)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ContextOverflowError(MTPError, ValueError):
    """The prompt does not fit into the session's context (``n_ctx``)."""


class GenerationError(MTPError):
    """llama.cpp failed while generating; the session stays usable."""


class SessionClosedError(MTPError):
    """The session (or model) was closed."""


class SessionBusyError(MTPError):
    """The session is already generating and ``wait=False`` was given."""


# codes of mtpstream._native.NativeError (native/status.hpp)
_BY_CODE: dict[int, type[MTPError]] = {
    1: InvalidOptionError,
    2: ModelLoadError,
    3: NoMTPHeadError,
    4: MTPError,
    5: ContextOverflowError,
    6: GenerationError,
    7: SessionClosedError,
    8: SessionBusyError,
}


def from_native(exc: BaseException) -> MTPError:
    """Translate a ``NativeError(code, message)`` into the matching typed error."""
    args: tuple[object, ...] = tuple(getattr(exc, "args", ()))
    if len(args) in (2, 3) and isinstance(args[0], int):
        code, message = args[0], str(args[1])
        field = str(args[2]) if len(args) == 3 and args[2] else None
        cls = _BY_CODE.get(code, MTPError)
        if cls is InvalidOptionError:
            return InvalidOptionError(message, field=field)
        return cls(message)
    return MTPError(str(exc))
