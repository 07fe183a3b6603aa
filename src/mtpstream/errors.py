"""Exceptions raised by mtpstream. Every failure is a subclass of :class:`MTPError`."""

from __future__ import annotations

__all__ = [
    "ContextOverflowError",
    "GenerationError",
    "GrammarCostError",
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


class WorkerLostError(GenerationError):
    """An RPC worker holding part of the model was lost (its connection reset or
    closed, or it went silent): the calls that ran on it end with this error, which
    names it and why, and so does every later call on the model (``Model.rpc_loss``).
    Its share of the weights went with it: load the model again once it is back."""


class GrammarCostError(GenerationError):
    """A call's grammar was too costly while generating: one of its steps ran over
    ``grammar_step_budget`` (CPU time), or did not finish and had the grammar host
    stopped. The call ends; the session stays usable, and the same grammar is refused
    up front (``InvalidOptionError``) from then on. ``field`` names the option the
    grammar came from (``grammar``, ``response_format``, ``tools``)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SessionClosedError(MTPError):
    """The session (or model) was closed."""


class SessionBusyError(MTPError):
    """The session is already generating and ``wait=False`` was given."""
