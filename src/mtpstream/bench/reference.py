"""Measurements on the reference level: time to first token, the async layer,
``stats()`` latency and the cost of idle sessions.

Private to :mod:`mtpstream.bench`. Each returns its raw figures as a dataclass whose
``as_json()`` is the result's JSON section; progress lines go to this module's logger.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio

from .. import MTP, DoneEvent, EogEvent, Model, MTPError, TokenEvent
from .env import paired_ratios, peak_rss_bytes, percentiles_us, reset_peak_rss, summarize
from .measure import DraftKey, Settings, draft_label, open_session, rotated, run_engine, run_once

__all__ = [
    "AsyncLayer",
    "CompanyCost",
    "StatsLatency",
    "Ttft",
    "async_layer",
    "company_cost",
    "stats_latency",
    "ttft_grid",
]

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------- first token
async def _first_token(mtp: MTP, prompt: Sequence[int]) -> float:
    t0 = time.perf_counter()
    first: float | None = None
    async for ev in mtp.stream_events(list(prompt), max_tokens=1):
        if isinstance(ev, TokenEvent) and first is None:
            first = time.perf_counter() - t0
    if first is None:
        raise MTPError("the generation produced no token")
    return first


def ttft_once(mtp: MTP, prompt: Sequence[int]) -> tuple[float, int]:
    """Seconds to the first TokenEvent under asyncio, and the engine's prefill time (µs)."""
    before = mtp.stats().timing_us.prefill
    reset_peak_rss()
    s = anyio.run(_first_token, mtp, prompt, backend="asyncio")
    return s, mtp.stats().timing_us.prefill - before


@dataclass(frozen=True)
class Ttft:
    """Time to first token on one long prompt, per ``n_draft`` (JSON key: its label)."""

    prompt_tokens: int
    ttft_ms: dict[str, list[float]]
    engine_prefill_ms: dict[str, list[float]]
    peak_rss_bytes: dict[str, int]

    def as_json(self) -> dict[str, Any]:
        """The ``ttft`` section (before :func:`.report.ttft_ratios` adds the ratios)."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "by_n_draft": {
                k: {
                    "ttft_ms": summarize(self.ttft_ms[k], 2),
                    "engine_prefill_ms": summarize(self.engine_prefill_ms[k], 2),
                    "peak_rss_bytes": self.peak_rss_bytes[k],
                }
                for k in self.ttft_ms
            },
        }


def ttft_grid(sessions: dict[DraftKey, MTP], prompt: Sequence[int], settings: Settings) -> Ttft:
    """Time to first token on a long prompt for every session, interleaved."""
    keys = list(sessions)
    for k in keys:
        for _ in range(settings.warmup):
            ttft_once(sessions[k], prompt)
    ttft: dict[DraftKey, list[float]] = {k: [] for k in keys}
    prefill: dict[DraftKey, list[float]] = {k: [] for k in keys}
    rss: dict[DraftKey, int] = {k: 0 for k in keys}
    for r in range(settings.runs):
        for k in rotated(keys, r):
            s, p_us = ttft_once(sessions[k], prompt)
            ttft[k].append(s * 1000)
            prefill[k].append(p_us / 1000)
            rss[k] = max(rss[k], peak_rss_bytes())
    _log.info(
        "    ttft ms " + "  ".join(f"k={draft_label(k)}:{statistics.median(ttft[k]):.0f}" for k in keys)
    )
    return Ttft(
        prompt_tokens=len(prompt),
        ttft_ms={draft_label(k): ttft[k] for k in keys},
        engine_prefill_ms={draft_label(k): prefill[k] for k in keys},
        peak_rss_bytes={draft_label(k): rss[k] for k in keys},
    )


# --------------------------------------------------------------------- async layer
async def _consume(mtp: MTP, prompt: Sequence[int], tokens: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    async for ev in mtp.stream_events(list(prompt), max_tokens=tokens):
        if isinstance(ev, TokenEvent):
            n += 1
        elif isinstance(ev, (DoneEvent, EogEvent)):
            n = ev.usage.completion_tokens
    return time.perf_counter() - t0, n


def _consume_once(mtp: MTP, prompt: Sequence[int], tokens: int, mode: str) -> tuple[float, int]:
    """Wall seconds and completion tokens of one generation consumed in ``mode``."""
    if mode == "native":
        # the engine's own time for the call: prompt processing and the decode loop
        before = mtp.stats().timing_us
        usage, _ = run_once(mtp, prompt, tokens)
        after = mtp.stats().timing_us
        engine_us = (after.prefill - before.prefill) + (after.total - before.total)
        return engine_us / 1e6, usage.completion_tokens
    return anyio.run(_consume, mtp, prompt, tokens, backend=mode)


@dataclass(frozen=True)
class AsyncLayer:
    """One generation's speed per consumer mode (``native``, ``asyncio``, ``trio``), run by run."""

    n_draft: int
    tokens_per_sec: dict[str, list[float]]
    completion_tokens: dict[str, set[int]]

    def as_json(self) -> dict[str, Any]:
        """The ``async_layer`` section."""
        tps = self.tokens_per_sec
        return {
            "n_draft": self.n_draft,
            "metric": "completion tokens / seconds of the whole call (prefill included): the engine's own "
            "time for native, the consumer's wall time for asyncio and trio",
            "modes": {
                m: {
                    "tokens_per_sec": summarize(tps[m], 2),
                    "completion_tokens": sorted(self.completion_tokens[m]),
                }
                for m in tps
            },
            "asyncio_over_native_paired": paired_ratios(tps["asyncio"], tps["native"]),
            "trio_over_native_paired": paired_ratios(tps["trio"], tps["native"]),
            "asyncio_over_native": paired_ratios(tps["asyncio"], tps["native"])["median"],
            "trio_over_native": paired_ratios(tps["trio"], tps["native"])["median"],
            "ratio_note": "median over rounds of the ratio within a round (runs interleaved)",
        }


def async_layer(mtp: MTP, prompt: Sequence[int], settings: Settings) -> AsyncLayer:
    """The same generation timed by the engine ("native") and as consumed under asyncio
    and under trio (wall time of the call), interleaved."""
    modes = ("native", "asyncio", "trio")
    for mode in modes:
        for _ in range(settings.warmup):
            _consume_once(mtp, prompt, settings.tokens, mode)
    tps: dict[str, list[float]] = {m: [] for m in modes}
    counts: dict[str, set[int]] = {m: set() for m in modes}
    for r in range(settings.runs):
        for mode in rotated(modes, r):
            wall, n = _consume_once(mtp, prompt, settings.tokens, mode)
            tps[mode].append(n / wall)
            counts[mode].add(n)
    med = {m: statistics.median(tps[m]) for m in modes}
    _log.info("    async tok/s " + "  ".join(f"{m}:{med[m]:.1f}" for m in modes))
    return AsyncLayer(n_draft=mtp.n_draft, tokens_per_sec=tps, completion_tokens=counts)


# --------------------------------------------------------------------- stats() latency
def _timed_stats(mtp: MTP) -> int:
    t0 = time.perf_counter_ns()
    mtp.stats()
    return time.perf_counter_ns() - t0


async def _stream_with_task_poller(
    mtp: MTP, prompt: Sequence[int], tokens: int, interval: float
) -> list[int]:
    samples: list[int] = []
    done = anyio.Event()

    async def poll() -> None:
        while not done.is_set():
            samples.append(_timed_stats(mtp))
            await anyio.sleep(interval)

    async with anyio.create_task_group() as tg:
        tg.start_soon(poll)
        await _consume(mtp, prompt, tokens)
        done.set()
    return samples


@contextmanager
def _thread_poller(mtp: MTP, interval: float) -> Iterator[list[int]]:
    samples: list[int] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            samples.append(_timed_stats(mtp))
            time.sleep(interval)

    th = threading.Thread(target=poll, name="bench-stats-poller", daemon=True)
    th.start()
    try:
        yield samples
    finally:
        stop.set()
        th.join()


@dataclass(frozen=True)
class StatsLatency:
    """``stats()`` call durations (ns) while a stream runs, from a task and from a thread."""

    n_draft: int
    poll_interval_s: float
    from_task_ns: list[int]
    from_thread_ns: list[int]

    def as_json(self) -> dict[str, Any]:
        """The ``stats_latency`` section."""
        return {
            "n_draft": self.n_draft,
            "poll_interval_s": self.poll_interval_s,
            "from_task": percentiles_us(self.from_task_ns),
            "from_thread": percentiles_us(self.from_thread_ns),
        }


def stats_latency(mtp: MTP, prompt: Sequence[int], settings: Settings) -> StatsLatency:
    """``stats()`` latency while an asyncio stream runs: from another task, another thread."""
    task: list[int] = []
    thread: list[int] = []
    interval = settings.stats_interval_s
    for _ in range(max(1, settings.runs // 2)):
        task += anyio.run(_stream_with_task_poller, mtp, prompt, settings.tokens, interval)
        with _thread_poller(mtp, interval) as samples:
            anyio.run(_consume, mtp, prompt, settings.tokens, backend="asyncio")
        thread += samples
    out = StatsLatency(mtp.n_draft, interval, task, thread)
    p99 = {side: percentiles_us(ns)["p99_us"] for side, ns in (("task", task), ("thread", thread))}
    _log.info(f"    stats() p99: task {p99['task']} us, thread {p99['thread']} us")
    return out


# --------------------------------------------------------------------- idle company
@dataclass
class _Company:
    """Idle sessions kept alive next to the measured one."""

    model: Model
    k: DraftKey
    settings: Settings
    prompt: Sequence[int]
    alive: list[MTP] = field(default_factory=list)

    def __enter__(self) -> _Company:
        return self

    def grow(self, n: int) -> None:
        """Open ``n`` sessions, run each once (so its contexts are warm), leave them idle."""
        for _ in range(n):
            s = open_session(self.model, self.k, self.settings)
            self.alive.append(s)
            run_once(s, self.prompt, 4)

    def __exit__(self, *exc: object) -> None:
        for s in self.alive:
            s.close()
        self.alive.clear()


@dataclass(frozen=True)
class CompanyCost:
    """Decode tokens/s of one session, run by run, per number of idle sessions beside it."""

    n_draft: int
    tokens_per_sec: dict[int, list[float]]

    def as_json(self) -> dict[str, Any]:
        """The ``company`` section: each count against the first (alone)."""
        tps = self.tokens_per_sec
        counts = list(tps)
        paired = {n: paired_ratios(tps[n], tps[counts[0]]) for n in counts}
        return {
            "n_draft": self.n_draft,
            "by_idle_sessions": {
                str(n): {"tokens_per_sec": summarize(tps[n], 2), f"over_{counts[0]}_paired": paired[n]}
                for n in counts
            },
            "ratio_vs_alone": {str(n): paired[n]["median"] for n in counts},
            "ratio_note": "median over rounds of the ratio within a round (runs interleaved)",
        }


def company_cost(model: Model, prompt: Sequence[int], settings: Settings) -> CompanyCost:
    """Decode speed of one session with 0, 1, 3... other sessions alive but idle."""
    k = settings.ref_n_draft
    counts = settings.company
    tps: dict[int, list[float]] = {n: [] for n in counts}
    with open_session(model, k, settings) as main:
        for _ in range(settings.warmup):
            run_engine(main, prompt, settings.tokens)
        for r in range(settings.runs):
            for n in rotated(counts, r):
                with _Company(model, k, settings, prompt) as company:
                    company.grow(n)
                    tps[n].append(run_engine(main, prompt, settings.tokens).decode_tokens_per_sec)
    _log.info("    company tok/s " + "  ".join(f"{n} idle:{statistics.median(tps[n]):.1f}" for n in counts))
    return CompanyCost(n_draft=k, tokens_per_sec=tps)
