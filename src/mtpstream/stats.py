"""Session statistics: a frozen snapshot of the worker's lock-free counters."""

from __future__ import annotations

import sys
from typing import IO, Any

from pydantic import BaseModel, ConfigDict

__all__ = ["MTPStats", "TimingUs", "Usage"]


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
    prompt processing, reported in ``timing_us.prefill``).
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
    rollback_fallbacks: int = 0
    context_switches: int = 0
    """``n_draft="auto"`` only: how often the sequence moved between the target
    context that keeps recurrent-state snapshots (needed to roll drafts back) and a
    snapshot-free one that decodes faster while drafting does not pay."""

    @classmethod
    def _from_native(cls, t: tuple[Any, ...], calls: int) -> MTPStats:
        (iters, gen, acc, emitted, prompt, fallbacks, t_d, t_v, t_s, t_c, t_p, t_tot, n_draft, switches) = t
        other = max(0, t_tot - t_d - t_v - t_s - t_c)
        decoded = max(0, emitted - calls)
        timing = TimingUs.model_construct(
            draft=t_d, verify=t_v, sample=t_s, ckpt=t_c, other=other, total=t_tot, prefill=t_p
        )
        return cls.model_construct(
            iters=iters,
            drafts_generated=gen,
            drafts_accepted=acc,
            acceptance_rate=acc / gen if gen else 0.0,
            tokens_emitted=emitted,
            tokens_per_sec=decoded / (t_tot / 1e6) if t_tot else 0.0,
            timing_us=timing,
            n_draft=n_draft,
            prompt_tokens=prompt,
            rollback_fallbacks=fallbacks,
            context_switches=switches,
        )

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
            f"mtp: prefill {ms(t.prefill)}",
            f"mtp: draft   {ms(t.draft)}",
            f"mtp: verify  {ms(t.verify)}",
            f"mtp: sample  {ms(t.sample)}",
            f"mtp: ckpt    {ms(t.ckpt)}   (rollback fallbacks: {self.rollback_fallbacks}, "
            f"context switches: {self.context_switches})",
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

    @property
    def acceptance_rate(self) -> float:
        """Accepted / generated drafts of this call (0.0 without drafts)."""
        return self.drafts_accepted / self.drafts_generated if self.drafts_generated else 0.0
