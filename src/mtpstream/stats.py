"""Session statistics: a frozen snapshot of the worker's lock-free counters."""

from __future__ import annotations

import sys
from typing import IO, NamedTuple

from pydantic import BaseModel, ConfigDict

from ._loader import _native

__all__ = ["MTPStats", "SequenceInfo", "TimingUs", "Usage"]


class StatsField(NamedTuple):
    """One session counter of the native engine (``native/stats.hpp``'s field list).

    ``kind`` is ``"counter"`` (only grows), ``"gauge"`` (a current value) or ``"time"``
    (microseconds of a phase, only grows, in :attr:`MTPStats.timing_us`); ``metric``
    is its ``/metrics`` series (after ``mtpstream_``).
    """

    name: str
    kind: str
    metric: str
    help: str

    @property
    def timing_key(self) -> str:
        """The :class:`TimingUs` field of a ``"time"`` counter (``t_draft_us``: ``draft``)."""
        return self.name.removeprefix("t_").removesuffix("_us")

    def value(self, stats: MTPStats) -> int:
        """This counter's value in ``stats``."""
        if self.kind == "time":
            return int(getattr(stats.timing_us, self.timing_key))
        return int(getattr(stats, self.name))


STATS_FIELDS: tuple[StatsField, ...] = tuple(StatsField(*f) for f in _native.STATS_FIELDS)
"""The native counters, in the engine's order: what ``_bridge.stats`` copies and the
server's ``/metrics`` exports."""


class TimingUs(BaseModel):
    """Time spent per phase, in microseconds (monotonic clock), cumulative."""

    model_config = ConfigDict(frozen=True)

    draft: int = 0
    verify: int = 0
    sample: int = 0
    ckpt: int = 0
    other: int = 0
    total: int = 0
    prefill: int = 0


class MTPStats(BaseModel):
    """Cumulative counters of one session (see :meth:`mtpstream.MTP.stats`).

    ``tokens_per_sec`` is decode throughput: tokens emitted after the first one
    of each call, over the decode-phase time (``timing_us.total``, which excludes
    prompt processing, reported in ``timing_us.prefill``). With ``n_seq > 1`` it is
    the session's total over all sequences, and ``iters`` counts one iteration per
    sequence per round.
    """

    model_config = ConfigDict(frozen=True)

    iters: int = 0
    drafts_generated: int = 0
    drafts_accepted: int = 0
    acceptance_rate: float = 0.0
    tokens_emitted: int = 0
    tokens_per_sec: float = 0.0
    timing_us: TimingUs = TimingUs()
    n_draft: int = 0
    prompt_tokens: int = 0
    prompt_tokens_cached: int = 0
    """Prompt tokens reused from the sessions' memory instead of processed (prompt cache)."""
    checkpoints: int = 0
    """Prompt-cache checkpoints held now (points a diverging prompt can restart from)."""
    checkpoint_bytes: int = 0
    """Memory those checkpoints take, in bytes (at most ``prompt_cache_checkpoint_bytes``)."""
    rollback_fallbacks: int = 0
    replayed_tokens: int = 0
    """``rollback="replay"`` only: accepted tokens decoded a second time because a
    rejection restored the state from before them (the price of snapshot-free
    verifies)."""
    context_switches: int = 0
    """``n_draft="auto"`` with ``n_seq=1`` only: how often the sequence moved between
    the target context that keeps recurrent-state snapshots (needed to roll drafts
    back) and a snapshot-free one that decodes faster while drafting does not pay."""
    rejection_iters: int = 0
    """``verify="rejection"``: iterations (verifies) whose drafts were sampled from the
    head and verified by rejection sampling (part of ``iters``)."""
    rejection_drafts: int = 0
    """``verify="rejection"``: drafts those iterations proposed (part of ``drafts_generated``)."""
    rejection_accepted: int = 0
    """``verify="rejection"``: drafts of those the target kept (part of ``drafts_accepted``)."""
    verify_fallbacks: int = 0
    """Calls that asked for ``verify="rejection"`` at temperature > 0 and ran ``"match"``
    instead: a grammar, or repetition/frequency/presence penalties, make the target's
    distribution incomparable with the head's."""
    n_seq: int = 1
    """Sequences the session decodes together."""
    active_sequences: int = 0
    """Calls holding a sequence right now (at most ``n_seq``)."""
    queued: int = 0
    """Calls waiting for a free sequence."""
    state_bytes: int = 0
    """KV cache and recurrent state of the session's contexts, in bytes."""

    def format(self) -> str:
        """A multi-line, human-readable summary (what ``print_stats`` prints)."""
        t = self.timing_us
        per_iter = (self.drafts_accepted + self.iters) / self.iters if self.iters else 0.0

        def ms(us: int) -> str:
            return f"{us / 1000:10.2f} ms"

        lines = [
            f"mtp: n_draft = {self.n_draft}, iterations = {self.iters}, tokens = {self.tokens_emitted}, "
            f"prompt tokens = {self.prompt_tokens}",
            f"mtp: draft acceptance rate = {self.acceptance_rate:.5f} "
            f"({self.drafts_accepted} accepted / {self.drafts_generated} generated), "
            f"{per_iter:.2f} tokens/iteration",
            f"mtp: decode speed = {self.tokens_per_sec:.2f} tokens/s",
        ]
        if self.rejection_iters or self.verify_fallbacks:
            per_verify = self.rejection_accepted / self.rejection_iters if self.rejection_iters else 0.0
            lines.append(
                f"mtp: verify=rejection: {self.rejection_accepted} accepted / {self.rejection_drafts} drafts "
                f"in {self.rejection_iters} iterations ({per_verify:.2f} accepted/verify), "
                f"fallbacks to match: {self.verify_fallbacks}"
            )
        lines += [
            f"mtp: prompt cache = {self.prompt_tokens_cached} of {self.prompt_tokens} prompt tokens reused, "
            f"{self.checkpoints} checkpoints ({self.checkpoint_bytes / 2**20:.2f} MiB)",
            f"mtp: prefill {ms(t.prefill)}",
            f"mtp: draft   {ms(t.draft)}",
            f"mtp: verify  {ms(t.verify)}",
            f"mtp: sample  {ms(t.sample)}",
            f"mtp: ckpt    {ms(t.ckpt)}   (rollback fallbacks: {self.rollback_fallbacks}, "
            f"context switches: {self.context_switches}, replayed tokens: {self.replayed_tokens})",
            f"mtp: other   {ms(t.other)}",
            f"mtp: total   {ms(t.total)}",
        ]
        return "\n".join(lines)

    def print(self, file: IO[str] | None = None) -> None:
        """Print :meth:`format` to ``file`` (stderr by default)."""
        print(self.format(), file=file if file is not None else sys.stderr)


class Usage(BaseModel):
    """What one call consumed and produced."""

    model_config = ConfigDict(frozen=True)

    prompt_tokens: int
    completion_tokens: int
    drafts_generated: int = 0
    drafts_accepted: int = 0
    cached_tokens: int = 0
    """Prompt tokens reused from the session's memory instead of processed (0: none)."""

    @property
    def acceptance_rate(self) -> float:
        """Accepted / generated drafts of this call (0.0 without drafts)."""
        return self.drafts_accepted / self.drafts_generated if self.drafts_generated else 0.0


class SequenceInfo(BaseModel):
    """One of a session's ``n_seq`` sequences, as of the engine's last step (see
    :meth:`mtpstream.MTP.sequences`).

    ``busy``: a call holds it; then ``n_prompt`` is that call's prompt length,
    ``n_cached`` the prompt tokens reused from the prompt cache, ``n_decoded`` the
    tokens generated so far and ``n_past`` the tokens in the sequence's memory. Idle:
    ``cache_tokens`` is what the prompt cache keeps of it (the last call's tokens),
    ``cache_extendable`` whether a prompt extending them continues from the memory as
    it is (else only from one of its ``cache_checkpoints``).
    """

    model_config = ConfigDict(frozen=True)

    id: int
    busy: bool
    n_prompt: int = 0
    n_cached: int = 0
    n_decoded: int = 0
    n_past: int = 0
    cache_tokens: int = 0
    cache_extendable: bool = False
    cache_checkpoints: int = 0
