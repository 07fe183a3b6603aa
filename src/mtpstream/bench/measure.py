"""Benchmark measurements: settings, levels, one timed generation and the n_draft grid
(the other measurements of the reference level are in :mod:`.reference`).

Private to :mod:`mtpstream.bench`. Every function here measures and returns its raw
figures as a dataclass whose ``as_json()`` is the result's JSON section; deriving
speedups, ideal bounds and verdicts is :mod:`.report`'s job. Progress lines go to
this module's logger (``mtpstream bench`` prints them on stderr).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import anyio

from .. import MTP, DoneEvent, EogEvent, Model, MTPError, MTPStats, TokenEvent, Usage, init
from .env import (
    CpuSnapshot,
    peak_rss_bytes,
    reset_peak_rss,
    summarize,
)

__all__ = [
    "DraftKey",
    "Level",
    "RunSample",
    "Settings",
    "delivered_decode_tps",
    "draft_label",
    "generation_prompt",
    "grid",
    "long_prompt",
    "open_session",
    "rotated",
    "row_summary",
    "run_engine",
    "run_once",
]

DraftKey = Union[int, Literal["auto"]]  # noqa: UP007
"""An ``n_draft`` value: a draft length or ``"auto"``."""

_log = logging.getLogger(__name__)

_TIMING_FIELDS = ("draft", "verify", "sample", "ckpt", "other", "total", "prefill")
_TEXT = (
    "The quiet river carried the last light of the evening past the old mill, "
    "where a keeper wrote down the names of the boats and the weather of the day. "
)


def draft_label(k: DraftKey) -> str:
    """The JSON key of an ``n_draft`` value."""
    return str(k)


@dataclass(frozen=True)
class Settings:
    """How much to measure (see ``mtpstream bench --help``)."""

    n_drafts: tuple[int, ...]
    runs: int
    warmup: int
    tokens: int
    threads: int
    n_ctx: int
    ttft_prompt_tokens: int
    ref_n_draft: int
    company: tuple[int, ...] = (0, 1, 3)
    stats_interval_s: float = 0.0005
    flash_attn: bool | None = None
    upstream_load_mode: str | None = None
    """llama-server's ``-lm`` (None: the server's default, which maps the file)."""

    def as_json(self) -> dict[str, Any]:
        """Every setting, JSON-able."""
        return {
            "n_drafts": list(self.n_drafts),
            "runs": self.runs,
            "warmup": self.warmup,
            "tokens": self.tokens,
            "n_threads": self.threads,
            "n_ctx": self.n_ctx,
            "ttft_prompt_tokens": self.ttft_prompt_tokens,
            "ref_n_draft": self.ref_n_draft,
            "company_idle_sessions": list(self.company),
            "stats_poll_interval_s": self.stats_interval_s,
            "flash_attn": self.flash_attn,
            "model_load": "load_model() default: use_mmap=True (mapped, as llama-server)",
            "upstream_load_mode": self.upstream_load_mode or "server default (auto: mmap)",
            "sampling": "greedy (temp=0)",
        }


@dataclass(frozen=True)
class Level:
    """One acceptance level: a model file and what is known about its MTP head."""

    name: str
    weights: str
    """``"oracle"``, ``"random"`` or ``"file"`` (a user-supplied GGUF)."""
    path: Path
    mtp_error_rate: float | None = None
    chain_start: int | None = None
    oracle_chain: tuple[int, ...] = ()
    """For oracle models: the target's greedy chain after ``chain_start``."""

    @property
    def nominal_acceptance(self) -> float | None:
        """Per-draft-token agreement of the oracle head (``1 - mtp_error_rate``)."""
        return None if self.mtp_error_rate is None else round(1.0 - self.mtp_error_rate, 4)

    def as_json(self) -> dict[str, Any]:
        """Identity of the level, JSON-able."""
        return {
            "name": self.name,
            "weights": self.weights,
            "mtp_error_rate": self.mtp_error_rate,
            "nominal_acceptance": self.nominal_acceptance,
            "model_path": str(self.path),
            "model_file_bytes": self.path.stat().st_size if self.path.exists() else None,
        }


def generation_prompt(level: Level, model: Model) -> list[int]:
    """A short prompt: the oracle's chain start, or a sentence of text."""
    if level.chain_start is not None:
        return [level.chain_start]
    return model.tokenize(_TEXT.split(",")[0], add_special=True)


def long_prompt(level: Level, model: Model, n_tokens: int) -> list[int]:
    """A prompt of exactly ``n_tokens`` tokens (for time to first token)."""
    if level.chain_start is not None and len(level.oracle_chain) >= n_tokens - 1:
        return [level.chain_start, *level.oracle_chain[: n_tokens - 1]]
    tokens = model.tokenize(_TEXT, add_special=True)
    body = model.tokenize(_TEXT, add_special=False) or tokens
    while len(tokens) < n_tokens:
        tokens.extend(body)
    return tokens[:n_tokens]


def open_session(model: Model, k: DraftKey, settings: Settings, rollback: str = "auto") -> MTP:
    """An MTP session with the benchmark's context options."""
    return init(
        model,
        n_draft=k,
        n_ctx=settings.n_ctx,
        n_threads=settings.threads,
        flash_attn=settings.flash_attn,
        rollback=rollback,
    )


# --------------------------------------------------------------------- one run
@dataclass
class RunSample:
    """One generation: wall time, the session's counters over it, and the machine's load."""

    wall_s: float
    completion_tokens: int
    finish_reason: str
    iters: int
    drafts_generated: int
    drafts_accepted: int
    timing_us: dict[str, int]
    peak_rss_bytes: int
    foreign_cpu_cores: float = 0.0
    """Other processes' CPU use during the run, in cores (0 on a quiet machine)."""
    steal_cores: float = 0.0

    @property
    def decode_tokens_per_sec(self) -> float:
        """Tokens after the first over decode time (the engine's ``tokens_per_sec``)."""
        total = self.timing_us["total"]
        return (self.completion_tokens - 1) / (total / 1e6) if total > 0 else 0.0

    @property
    def wall_tokens_per_sec(self) -> float:
        """Tokens over the wall time of the whole call (prefill included)."""
        return self.completion_tokens / self.wall_s if self.wall_s > 0 else 0.0

    def per_iter_us(self, phase: str) -> float | None:
        """Time of ``phase`` per decode iteration in this run."""
        return self.timing_us[phase] / self.iters if self.iters else None


def _delta(before: MTPStats, after: MTPStats) -> dict[str, Any]:
    t0, t1 = before.timing_us, after.timing_us
    timing = {f: getattr(t1, f) - getattr(t0, f) for f in _TIMING_FIELDS}
    # "other" is derived; recompute it from this run's deltas (the first token's
    # sampling is counted in "sample" but happens during prefill, outside "total")
    phases = sum(timing[f] for f in ("draft", "verify", "sample", "ckpt"))
    timing["other"] = max(0, timing["total"] - phases)
    return {
        "iters": after.iters - before.iters,
        "drafts_generated": after.drafts_generated - before.drafts_generated,
        "drafts_accepted": after.drafts_accepted - before.drafts_accepted,
        "timing_us": timing,
    }


async def _terminal(mtp: MTP, prompt: Sequence[int], tokens: int) -> tuple[Usage, str]:
    """One generation through the public stream; only its terminal event is kept."""
    end: DoneEvent | EogEvent | None = None
    async for ev in mtp.stream_events(list(prompt), max_tokens=tokens):
        if isinstance(ev, (DoneEvent, EogEvent)):
            end = ev
    if end is None:
        raise MTPError("the generation ended without a terminal event")
    return end.usage, ("eog" if isinstance(end, EogEvent) else end.finish_reason)


def run_once(mtp: MTP, prompt: Sequence[int], tokens: int) -> tuple[Usage, str]:
    """Run one generation to its end (asyncio); its usage and finish reason."""
    return anyio.run(_terminal, mtp, prompt, tokens, backend="asyncio")


def run_engine(mtp: MTP, prompt: Sequence[int], tokens: int) -> RunSample:
    """One generation, timed by the engine itself (``stats()`` deltas: the decode
    loop's own clock, so Python consuming the events is not in the figure)."""
    reset_peak_rss()
    before = mtp.stats()
    cpu0 = CpuSnapshot.take()
    usage, reason = run_once(mtp, prompt, tokens)
    cpu = CpuSnapshot.take().since(cpu0)
    d = _delta(before, mtp.stats())
    return RunSample(
        wall_s=cpu["wall_s"],
        completion_tokens=usage.completion_tokens,
        finish_reason=reason,
        peak_rss_bytes=peak_rss_bytes(),
        foreign_cpu_cores=cpu["foreign_cpu_cores"],
        steal_cores=cpu["steal_cores"],
        **d,
    )


def rotated(items: Sequence[Any], shift: int) -> list[Any]:
    """``items`` rotated left by ``shift`` (so each item takes every position in turn)."""
    if not items:
        return []
    s = shift % len(items)
    return [*items[s:], *items[:s]]


# --------------------------------------------------------------------- the grid
def grid(
    sessions: dict[DraftKey, MTP], prompt: Sequence[int], settings: Settings
) -> dict[DraftKey, list[RunSample]]:
    """``runs`` interleaved rounds over every (warm) session, the order rotated per round."""
    keys = list(sessions)
    samples: dict[DraftKey, list[RunSample]] = {k: [] for k in keys}
    for r in range(settings.runs):
        for k in rotated(keys, r):
            samples[k].append(run_engine(sessions[k], prompt, settings.tokens))
        last = "  ".join(f"k={draft_label(k)}:{samples[k][-1].decode_tokens_per_sec:.1f}" for k in keys)
        busy = max(samples[k][-1].foreign_cpu_cores for k in keys)
        _log.info(f"    round {r + 1}/{settings.runs}  tok/s {last}  (other processes: {busy:.2f} cores)")
    return samples


def _median_per_iter(samples: Sequence[RunSample], phase: str) -> float | None:
    values = [v for v in (s.per_iter_us(phase) for s in samples) if v is not None]
    return round(statistics.median(values), 1) if values else None


def row_summary(samples: Sequence[RunSample]) -> dict[str, Any]:
    """Everything one (level, n_draft) cell reports."""
    iters = sum(s.iters for s in samples)
    gen = sum(s.drafts_generated for s in samples)
    acc = sum(s.drafts_accepted for s in samples)
    timing = {f: sum(s.timing_us[f] for s in samples) for f in _TIMING_FIELDS}
    per_iter = {f: _median_per_iter(samples, f) for f in _TIMING_FIELDS if f != "prefill"}
    per_iter["prefill_per_run"] = round(statistics.median(s.timing_us["prefill"] for s in samples), 1)
    return {
        "tokens_per_sec": summarize([s.decode_tokens_per_sec for s in samples], 2),
        "wall_tokens_per_sec": summarize([s.wall_tokens_per_sec for s in samples], 2),
        "acceptance_rate": round(acc / gen, 4) if gen else None,
        "accepted_per_iter": round(acc / iters, 4) if iters else None,
        "tokens_per_iter": round((acc + iters) / iters, 4) if iters else None,
        "iters": iters,
        "drafts_generated": gen,
        "drafts_accepted": acc,
        "completion_tokens": sum(s.completion_tokens for s in samples),
        "finish_reasons": sorted({s.finish_reason for s in samples}),
        "timing_us": timing,
        "timing_us_per_iter": per_iter,
        "timing_note": "timing_us: sums over the measured runs; timing_us_per_iter: median over "
        "runs of each run's time per iteration (prefill: per run)",
        "peak_rss_bytes": max((s.peak_rss_bytes for s in samples), default=None),
        "foreign_cpu_cores": summarize([s.foreign_cpu_cores for s in samples], 3),
        "steal_cores_max": max((s.steal_cores for s in samples), default=None),
        "runs": [
            {
                "tokens_per_sec": round(s.decode_tokens_per_sec, 3),
                "tokens_per_iter": round((s.drafts_accepted + s.iters) / s.iters, 4) if s.iters else None,
                "verify_us_per_iter": _round(s.per_iter_us("verify")),
                "draft_us_per_iter": _round(s.per_iter_us("draft")),
                "foreign_cpu_cores": s.foreign_cpu_cores,
            }
            for s in samples
        ],
    }


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


async def _delivered(mtp: MTP, prompt: Sequence[int], tokens: int) -> tuple[float, int]:
    t_first: float | None = None
    n = 0
    async for ev in mtp.stream_events(list(prompt), max_tokens=tokens):
        if isinstance(ev, TokenEvent):
            n += 1
            if t_first is None:
                t_first = time.perf_counter()
    if t_first is None or n < 2:
        raise MTPError("the generation produced fewer than two tokens")
    return time.perf_counter() - t_first, n


def delivered_decode_tps(mtp: MTP, prompt: Sequence[int], tokens: int) -> float:
    """Decode tokens/s as a Python consumer sees them: ``async for`` under asyncio, from
    the first token to the end of the stream (the first token's prefill excluded)."""
    wall, n = anyio.run(_delivered, mtp, prompt, tokens, backend="asyncio")
    return (n - 1) / wall
