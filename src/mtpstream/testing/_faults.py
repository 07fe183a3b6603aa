"""Test-only fault injection: put a known engine bug back, to prove the oracle heads see it."""

from __future__ import annotations

from typing import Literal

from .. import _bridge
from ..session import MTP, native_engine

Fault = Literal["none", "masked_draft_rows", "skip_draft_catch_up"]
FAULTS: tuple[Fault, ...] = ("none", "masked_draft_rows", "skip_draft_catch_up")


def inject_fault(mtp: MTP, fault: Fault) -> None:
    """Make ``mtp``'s engine misbehave on purpose from its next decode step on.

    ``"masked_draft_rows"`` reads the MTP context's hidden rows the way the
    engine did before it was fixed (llama.cpp's masked mode, which returns the
    batch's first row for a catch-up batch); ``"skip_draft_catch_up"`` never
    feeds the accepted tokens to the MTP context, so its KV goes stale;
    ``"none"`` restores the real engine. For tests only.

    Raises:
        ValueError: ``fault`` is not one of :data:`FAULTS`.
        SessionClosedError: the session is closed.
    """
    if fault not in FAULTS:
        raise ValueError(f"fault must be one of {FAULTS}, got {fault!r}")
    _bridge.set_fault(native_engine(mtp), fault)
