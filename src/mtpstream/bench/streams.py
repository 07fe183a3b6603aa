"""``mtpstream bench --streams``: many streams at once on one session.

For every acceptance level and every stream count N, three sides run the same N
calls (different one-token prompts along the oracle's chain, greedy, ``n_draft``
fixed), rotated round by round:

- ``batched``: one session with ``n_seq=N``, the N calls concurrent (``async for``
  under asyncio, through the public API);
- ``batched_snapshots``: the same with ``rollback="snapshots"`` (the default is
  ``"replay"``), so both ways of dropping rejected drafts are compared in one run;
- ``single``: one session with ``n_seq=1``, the same N calls concurrent (they queue);
- ``upstream`` (with ``--with-upstream``): ``llama-server -np N --spec-type draft-mtp
  --spec-draft-n-max K``, the N requests concurrent (streamed).

Each side reports aggregate tokens/s (all tokens over the wall time from the
first request to the last token), per-stream time to first token and inter-token
p50/p99 (gaps between token arrivals at the client), and acceptance per stream
(per slot for the server). ``ideal`` is the aggregate the batched session would
reach if it spent its time only in decodes: tokens over its measured draft +
verify decode time (the engine's timings), so ``efficiency`` = measured / ideal.
"""

from __future__ import annotations

import json
import logging
import statistics
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from .. import MTP, DoneEvent, EogEvent, Model, TokenEvent, init, load_model
from . import env
from .measure import Level, Settings

_log = logging.getLogger(__name__)

_PAUSE_S = 0.3
# the sides every cell runs (and "upstream" with --with-upstream), in rotation order
_SIDES = ("batched", "batched_snapshots", "single", "upstream")


@dataclass
class StreamRound:
    """One round of one side: N concurrent calls, what the client saw of them."""

    tokens: int = 0
    wall_s: float = 0.0
    """From the first request to the last stream's end."""
    ttfts: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    """Seconds between token arrivals at the client, every stream pooled."""
    acceptance: dict[int, float] = field(default_factory=dict)
    """Per stream (prompt index): its acceptance rate."""
    decode_s: float | None = None
    """Our sessions only: the engine's draft + verify time over the round."""

    @property
    def tokens_per_sec(self) -> float:
        return self.tokens / self.wall_s


def stream_prompts(level: Level, model: Model, n: int) -> list[list[int]]:
    """N one-token prompts: starts spread along the oracle's chain (or text tokens)."""
    if level.chain_start is not None and level.oracle_chain:
        chain = [level.chain_start, *level.oracle_chain]
        step = max(1, len(chain) // max(n, 1))
        return [[chain[(i * step) % len(chain)]] for i in range(n)]
    base = model.tokenize("The river and the road went on", add_special=True)
    return [[base[i % len(base)]] for i in range(n)]


def _gaps_summary(ttfts: list[float], gaps: list[float]) -> dict[str, Any]:
    def pct(values: list[float], q: float) -> float | None:
        if not values:
            return None
        s = sorted(values)
        return round(s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))] * 1000, 2)

    return {
        "ttft_ms_p50": pct(ttfts, 0.5),
        "ttft_ms_max": pct(ttfts, 1.0),
        "inter_token_ms_p50": pct(gaps, 0.5),
        "inter_token_ms_p99": pct(gaps, 0.99),
    }


async def _ours_round(mtp: MTP, prompts: list[list[int]], tokens: int) -> StreamRound:
    out = StreamRound()
    t0 = time.perf_counter()
    ends: list[float] = []

    async def one(i: int, prompt: list[int]) -> None:
        start = time.perf_counter()
        last = None
        async for ev in mtp.stream_events(prompt, max_tokens=tokens):
            now = time.perf_counter()
            if isinstance(ev, TokenEvent):
                out.tokens += 1
                if last is None:
                    out.ttfts.append(now - start)
                else:
                    out.gaps.append(now - last)
                last = now
            elif isinstance(ev, (DoneEvent, EogEvent)):
                out.acceptance[i] = ev.usage.acceptance_rate
        ends.append(time.perf_counter())

    async with anyio.create_task_group() as tg:
        for i, p in enumerate(prompts):
            tg.start_soon(one, i, p)
    out.wall_s = max(ends) - t0
    return out


def _ours(mtp: MTP, prompts: list[list[int]], tokens: int) -> StreamRound:
    before = mtp.stats()
    out = anyio.run(_ours_round, mtp, prompts, tokens, backend="asyncio")
    after = mtp.stats()
    decode_us = (after.timing_us.draft - before.timing_us.draft) + (
        after.timing_us.verify - before.timing_us.verify
    )
    out.decode_s = decode_us / 1e6
    return out


def _server_stream(
    port: int, i: int, prompt: list[int], tokens: int, sink: StreamRound, ends: list[float]
) -> None:
    body = {
        "prompt": prompt,
        "n_predict": tokens,
        "temperature": 0.0,
        "top_k": 1,
        "cache_prompt": False,
        "stream": True,
    }
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/completion",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    start = time.perf_counter()
    last = None
    arrivals = 0
    with urllib.request.urlopen(req, timeout=600) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            msg = json.loads(line[6:])
            now = time.perf_counter()
            if msg.get("content") or msg.get("tokens"):
                n = max(1, len(msg.get("tokens") or [0]))
                arrivals += n
                if last is None:
                    sink.ttfts.append(now - start)
                    sink.gaps.extend([0.0] * (n - 1))
                else:
                    sink.gaps.extend([now - last] + [0.0] * (n - 1))
                last = now
            if msg.get("stop"):
                t = msg.get("timings", {})
                if t.get("draft_n"):
                    sink.acceptance[i] = t.get("draft_n_accepted", 0) / t["draft_n"]
                sink.tokens += int(t.get("predicted_n", arrivals))
    ends.append(time.perf_counter())


def _upstream(port: int, prompts: list[list[int]], tokens: int) -> StreamRound:
    sink = StreamRound()
    ends: list[float] = []
    t0 = time.perf_counter()
    threads = [
        threading.Thread(target=_server_stream, args=(port, i, p, tokens, sink, ends))
        for i, p in enumerate(prompts)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    sink.wall_s = max(ends) - t0
    return sink


def _summary(rounds: list[StreamRound]) -> dict[str, Any]:
    """One side's JSON: aggregate tokens/s, acceptance per stream, TTFT and gaps."""
    agg = [r.tokens_per_sec for r in rounds]
    ttfts = [x for r in rounds for x in r.ttfts]
    gaps = [x for r in rounds for x in r.gaps]
    acc = [x for r in rounds for x in r.acceptance.values()]
    # per stream (prompt index): the median over rounds (greedy: the same every round)
    streams = sorted({i for r in rounds for i in r.acceptance})
    by_stream = {
        str(i): round(statistics.median(r.acceptance[i] for r in rounds if i in r.acceptance), 4)
        for i in streams
    }
    out: dict[str, Any] = {
        "aggregate_tokens_per_sec": env.summarize(agg, 2),
        "per_stream_acceptance": {
            "min": round(min(acc), 4) if acc else None,
            "max": round(max(acc), 4) if acc else None,
            "median": round(statistics.median(acc), 4) if acc else None,
            "by_stream": by_stream,
        },
        **_gaps_summary(ttfts, gaps),
    }
    decode = [r.decode_s for r in rounds]
    if all(d is not None for d in decode):
        ideal = [r.tokens / r.decode_s for r in rounds if r.decode_s]
        eff = [r.decode_s / r.wall_s for r in rounds if r.decode_s is not None]
        out["ideal_tokens_per_sec"] = env.summarize(ideal, 2)
        out["efficiency"] = round(statistics.median(eff), 4)
    return out


@dataclass(frozen=True)
class StreamsCell:
    """Every round of every side at one (level, N streams)."""

    level: str
    n: int
    rounds: dict[str, list[StreamRound]]

    def as_json(self) -> dict[str, Any]:
        """The cell's JSON: each side's summary and the paired ratios between sides."""
        out = {name: _summary(rs) for name, rs in self.rounds.items() if rs}
        rate = self.rates()
        b, sn, s = rate["batched"], rate["batched_snapshots"], rate["single"]
        out["batched_over_single_rounds"] = env.paired_ratios(b, s)
        out["batched_over_snapshots_rounds"] = env.paired_ratios(b, sn)
        if "upstream" in rate:
            u = rate["upstream"]
            out["batched_over_upstream_rounds"] = env.paired_ratios(b, u)
            out["snapshots_over_upstream_rounds"] = env.paired_ratios(sn, u)
        return out

    def rates(self) -> dict[str, list[float]]:
        """Aggregate tokens/s of each round, per side that ran."""
        return {name: [r.tokens_per_sec for r in rs] for name, rs in self.rounds.items() if rs}

    def log_line(self, out: dict[str, Any]) -> str:
        """The progress line of this cell (``out``: its :meth:`as_json`)."""
        rate = {name: statistics.median(v) for name, v in self.rates().items()}
        line = (
            f"    {self.level} n={self.n}: batched {rate['batched']:.1f} tok/s, "
            f"single {rate['single']:.1f} ({out['batched_over_single_rounds']['median']:.2f}x), "
            f"snapshots {rate['batched_snapshots']:.1f} "
            f"(batched/snapshots {out['batched_over_snapshots_rounds']['median']:.2f}x)"
        )
        if "upstream" in rate:
            line += (
                f", llama-server -np {self.n} {rate['upstream']:.1f} "
                f"({out['batched_over_upstream_rounds']['median']:.2f}x, "
                f"snapshots {out['snapshots_over_upstream_rounds']['median']:.2f}x)"
            )
        return line + f", efficiency {out['batched'].get('efficiency')}"


def _rotate_sides(sides: dict[str, Callable[[], StreamRound]], runs: int) -> dict[str, list[StreamRound]]:
    """A warm-up round of every side, then ``runs`` rounds, the order rotated per round."""
    rounds: dict[str, list[StreamRound]] = {name: [] for name in _SIDES}
    names = list(sides)
    for name in names:  # warm-up
        sides[name]()
    for r in range(runs):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            time.sleep(_PAUSE_S)
            rounds[name].append(sides[name]())
    return rounds


def _cell(
    model: Model,
    level: Level,
    n: int,
    k: int,
    settings: Settings,
    single: MTP,
    server: _Servers | None,
) -> dict[str, Any]:
    prompts = stream_prompts(level, model, n)
    tokens = settings.tokens
    opts: dict[str, Any] = {"n_draft": k, "n_ctx": settings.n_ctx, "n_seq": n, "n_threads": settings.threads}
    with init(model, **opts) as batched, init(model, rollback="snapshots", **opts) as snapshots:
        sides: dict[str, Callable[[], StreamRound]] = {
            "batched": lambda: _ours(batched, prompts, tokens),
            "batched_snapshots": lambda: _ours(snapshots, prompts, tokens),
            "single": lambda: _ours(single, prompts, tokens),
        }
        port = server(n) if server is not None else None
        try:
            if port is not None:
                sides["upstream"] = lambda: _upstream(port, prompts, tokens)
            cell = StreamsCell(level.name, n, _rotate_sides(sides, settings.runs))
        finally:
            if server is not None and port is not None:
                server(None)
    out = cell.as_json()
    _log.info(cell.log_line(out))
    return out


class _Servers:
    """Starts llama-server -np N on demand (one at a time)."""

    def __init__(self, exe: Path, model_path: Path, k: int, settings: Settings) -> None:
        self.exe, self.model_path, self.k, self.settings = exe, model_path, k, settings
        self._cm: Any = None

    def __call__(self, n: int | None) -> int | None:
        from .upstream import server

        if self._cm is not None:
            self._cm.__exit__(None, None, None)
            self._cm = None
        if n is None:
            return None
        self._cm = server(self.exe, self.model_path, self.k, self.settings, n_parallel=n)
        port: int = self._cm.__enter__()
        return port


def run(
    levels: Sequence[Level], settings: Settings, streams: Sequence[int], k: int, with_upstream: bool
) -> dict[str, Any]:
    """The streams scenario on every level (the server side only with_upstream)."""
    out: dict[str, Any] = {
        "n_draft": k,
        "streams": list(streams),
        "tokens_per_stream": settings.tokens,
        "levels": {},
    }
    exe = None
    if with_upstream:
        from .upstream import server_binary

        try:
            exe = server_binary(settings)
        except Exception as exc:
            _log.warning(f"  llama-server unavailable: {exc}")
            out["upstream_error"] = str(exc)
    _log.info(f"streams: n_draft={k}, {settings.runs} rounds x {settings.tokens} tokens per stream")
    for level in levels:
        model = load_model(level.path)
        cells: dict[str, Any] = {}
        try:
            servers = _Servers(exe, level.path, k, settings) if exe is not None else None
            with init(model, n_draft=k, n_ctx=settings.n_ctx, n_seq=1, n_threads=settings.threads) as single:
                for n in streams:
                    cells[str(n)] = _cell(model, level, n, k, settings, single, servers)
        finally:
            model.close()
        out["levels"][level.name] = cells
    return out
