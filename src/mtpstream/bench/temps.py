"""``mtpstream bench --temps``: sampled decoding, ``verify="match"`` against ``"rejection"``.

On the soft oracle (``mtpstream.testing.make_model(weights="soft")``: target and
head share a known, non-degenerate next-token distribution; the head is
``SOFT_ERROR_RATE`` of the way towards a skewed one), for every temperature and
every stream count N, the same N calls (one-token prompts, ``n_draft`` fixed, top-k
/ top-p / min-p off, seed ``round * 1000 + stream``) run concurrently on one session
with ``n_seq=N``, once per side, the sides rotated round by round:

- ``match``: ``verify="match"`` (greedy drafts, kept when the target samples them);
- ``rejection``: ``verify="rejection"`` (drafts sampled from the head, rejection
  sampling);
- ``upstream`` (with ``--with-upstream``): ``llama-server -np N --spec-type draft-mtp
  --spec-draft-n-max K`` on the same file with the same sampling options and seeds.

Each side reports delivered tokens / wall time (first request to last answer) and
accepted drafts per verify: ours from ``stats()`` (drafts accepted / iterations),
llama-server's from its ``timings`` (``draft_n_accepted`` over ``draft_n / K``,
i.e. assuming every verify checked K drafts). On the soft oracle the expected
accepted per verify of each verify mode is known (``expected_accepted_per_verify``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from .. import MTP, InvalidOptionError, Model, TokenEvent, init, load_model
from . import env
from .measure import Settings

__all__ = ["SOFT_ERROR_RATE", "TempsCell", "TempsResult", "format_table", "parse_temps", "run"]

_log = logging.getLogger(__name__)

SOFT_ERROR_RATE = 0.25
"""The soft oracle's head distance: q = 0.75 * (0.5, 0.3, 0.2) + 0.25 * (0.1, 0.1, 0.8)."""
_PAUSE_S = 0.2
_SIDES = ("match", "rejection", "upstream")


@dataclass
class TempRound:
    """One round of one side: N concurrent calls."""

    tokens: int = 0
    wall_s: float = 0.0
    verifies: float = 0.0
    accepted: int = 0
    drafts: int = 0
    fallbacks: int = 0

    @property
    def tokens_per_sec(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0

    @property
    def accepted_per_verify(self) -> float:
        return self.accepted / self.verifies if self.verifies else 0.0


def parse_temps(text: str) -> tuple[float, ...]:
    """``"0,0.6,0.8"`` → temperatures; raises :class:`InvalidOptionError` on anything else."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InvalidOptionError(
            f"--temps must be comma-separated numbers, not {text!r}", field="temps"
        ) from None
    if not values or any(not 0.0 <= v <= 10.0 for v in values):
        raise InvalidOptionError("--temps values must be from 0 to 10", field="temps")
    return values


def _sampling(temp: float, seed: int) -> dict[str, Any]:
    return {"temp": temp, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seed": seed}


async def _ours_round(mtp: MTP, prompts: list[list[int]], tokens: int, opts: dict[str, Any]) -> TempRound:
    out = TempRound()
    seed = opts.pop("seed")

    async def one(i: int, prompt: list[int]) -> None:
        async for ev in mtp.stream_events(prompt, max_tokens=tokens, seed=seed + i, **opts):
            if isinstance(ev, TokenEvent):
                out.tokens += 1

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i, p in enumerate(prompts):
            tg.start_soon(one, i, p)
    out.wall_s = time.perf_counter() - t0
    return out


def _ours(mtp: MTP, prompts: list[list[int]], tokens: int, temp: float, seed: int, verify: str) -> TempRound:
    before = mtp.stats()
    opts = {**_sampling(temp, seed), "verify": verify}
    out = anyio.run(_ours_round, mtp, prompts, tokens, opts, backend="asyncio")
    after = mtp.stats()
    out.verifies = after.iters - before.iters
    out.accepted = after.drafts_accepted - before.drafts_accepted
    out.drafts = after.drafts_generated - before.drafts_generated
    out.fallbacks = after.verify_fallbacks - before.verify_fallbacks
    return out


def _upstream(port: int, prompts: list[list[int]], tokens: int, temp: float, seed: int, k: int) -> TempRound:
    out = TempRound()
    timings: list[dict[str, Any]] = []

    def one(i: int, prompt: list[int]) -> None:
        body = {
            **_sampling(temp, seed + i),
            "prompt": prompt,
            "n_predict": tokens,
            "temperature": temp,
            "cache_prompt": False,
            "stream": False,
        }
        body.pop("temp")
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/completion",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=600) as resp:
            timings.append(json.loads(resp.read())["timings"])

    threads = [threading.Thread(target=one, args=(i, p)) for i, p in enumerate(prompts)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    out.wall_s = time.perf_counter() - t0
    out.tokens = sum(int(t.get("predicted_n", 0)) for t in timings)
    out.accepted = sum(int(t.get("draft_n_accepted", 0)) for t in timings)
    out.drafts = sum(int(t.get("draft_n", 0)) for t in timings)
    out.verifies = out.drafts / k
    return out


@dataclass(frozen=True)
class TempsCell:
    """Every round of every side at one (temperature, N streams)."""

    temp: float
    n: int
    rounds: dict[str, list[TempRound]]
    expected: dict[str, float | None] = field(default_factory=dict)
    rollback: str = ""  # what our session's rollback="auto" chose (replay drafts fewer after a rejection)

    def as_json(self) -> dict[str, Any]:
        """Per side: tok/s and accepted per verify (median, min-max), plus paired ratios."""
        out: dict[str, Any] = {"temp": self.temp, "n_seq": self.n, "rollback": self.rollback}
        for name, rs in self.rounds.items():
            if rs:
                out[name] = {
                    "tokens_per_sec": env.summarize([r.tokens_per_sec for r in rs], 2),
                    "accepted_per_verify": env.summarize([r.accepted_per_verify for r in rs], 4),
                    "verifies": round(sum(r.verifies for r in rs), 1),
                    "drafts_per_verify": round(
                        sum(r.drafts for r in rs) / max(sum(r.verifies for r in rs), 1e-9), 3
                    ),
                    "verify_fallbacks": sum(r.fallbacks for r in rs),
                    "expected_accepted_per_verify": self.expected.get(name),
                }
        out["rejection_over_match_accepted"] = self._ratio("rejection", "match", "accepted_per_verify")
        out["rejection_over_match_tok_s"] = self._ratio("rejection", "match", "tokens_per_sec")
        out["rejection_over_upstream_tok_s"] = self._ratio("rejection", "upstream", "tokens_per_sec")
        out["match_over_upstream_tok_s"] = self._ratio("match", "upstream", "tokens_per_sec")
        return out

    def _ratio(self, a: str, b: str, what: str) -> float | None:
        """Median of a/b, both pooled over rounds (accepted) or paired by round (tok/s)."""
        ra, rb = self.rounds.get(a) or [], self.rounds.get(b) or []
        if not ra or not rb:
            return None
        if what == "accepted_per_verify":
            va = sum(r.accepted for r in ra) / max(sum(r.verifies for r in ra), 1e-9)
            vb = sum(r.accepted for r in rb) / max(sum(r.verifies for r in rb), 1e-9)
            return round(va / vb, 4) if vb else None
        med: float | None = env.paired_ratios([r.tokens_per_sec for r in ra], [r.tokens_per_sec for r in rb])[
            "median"
        ]
        return med


@dataclass(frozen=True)
class TempsResult:
    """The ``temps`` section: settings and one cell per (temperature, n_seq)."""

    model: str
    mtp_error_rate: float | None
    n_draft: int
    tokens_per_stream: int
    runs: int
    cells: list[TempsCell]

    def as_json(self) -> dict[str, Any]:
        """The JSON section (cells in (n_seq, temperature) order)."""
        return {
            "model": self.model,
            "mtp_error_rate": self.mtp_error_rate,
            "n_draft": self.n_draft,
            "tokens_per_stream": self.tokens_per_stream,
            "runs": self.runs,
            "cells": [c.as_json() for c in self.cells],
        }


def _fmt(side: dict[str, Any] | None) -> str:
    if not side:
        return f"{'-':>24}"
    t, a = side["tokens_per_sec"], side["accepted_per_verify"]
    return f"{t['median']:7.1f} ({t['min']:.0f}-{t['max']:.0f}) {a['median']:5.2f}/v"


def format_table(section: dict[str, Any]) -> list[str]:
    """The ``temps`` section as a text table (tok/s median (min-max), accepted per verify)."""
    lines = [
        f"temps: {section['model']}, n_draft={section['n_draft']}, {section['tokens_per_stream']} tokens "
        f"per stream, {section['runs']} rounds; tok/s median (min-max), accepted drafts per verify",
        f"{'temp':>5} {'n':>3} | {'match':>24} | {'rejection':>24} | {'llama-server':>24} | rej/match acc",
    ]
    return lines + [_row(c) for c in section["cells"]]


def _row(c: dict[str, Any]) -> str:
    """One cell's line of the table."""
    r = c.get("rejection_over_match_accepted")
    return (
        f"{c['temp']:5.2f} {c['n_seq']:3d} | {_fmt(c.get('match'))} | {_fmt(c.get('rejection'))} | "
        f"{_fmt(c.get('upstream'))} | {'-' if r is None else f'{r:.2f}x'}"
    )


def _expected(spec: Any, temp: float, k: int) -> dict[str, float | None]:
    """The soft oracle's expected accepted drafts per verify of each verify mode."""
    if spec is None:
        return {}
    from ..testing import accepted_per_verify

    if temp <= 0.0:
        a = 1.0 if max(range(3), key=lambda i: spec.head_logits[i]) == 0 else 0.0
        return {
            "match": round(accepted_per_verify(a, k), 4),
            "rejection": round(accepted_per_verify(a, k), 4),
        }
    return {
        "match": round(accepted_per_verify(spec.match_acceptance(temp), k), 4),
        "rejection": round(accepted_per_verify(spec.rejection_acceptance(temp), k), 4),
    }


def _prompts(spec: Any, model: Model, n: int) -> list[list[int]]:
    """N one-token prompts: distinct successor tokens of the soft oracle (or text tokens)."""
    if spec is not None:
        return [[spec.successors[i % len(spec.successors)][0]] for i in range(n)]
    base = model.tokenize("The river and the road went on", add_special=True)
    return [[base[i % len(base)]] for i in range(n)]


def _rotate(sides: dict[str, Callable[[int], TempRound]], runs: int) -> dict[str, list[TempRound]]:
    """A warm-up round of every side, then ``runs`` rounds (seed = round), order rotated."""
    rounds: dict[str, list[TempRound]] = {name: [] for name in sides}
    names = list(sides)
    for name in names:
        sides[name](10_000_000)
    for r in range(runs):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            time.sleep(_PAUSE_S)
            rounds[name].append(sides[name](r * 1000))
    return rounds


def _cells_for_n(
    model: Model, path: Path, spec: Any, n: int, temps: Sequence[float], settings: Settings, exe: Path | None
) -> list[TempsCell]:
    """Every temperature at one n_seq (one session, one llama-server -np n)."""
    k = settings.ref_n_draft
    prompts = _prompts(spec, model, n)
    tok = settings.tokens
    cells = []
    opts: dict[str, Any] = {"n_draft": k, "n_ctx": settings.n_ctx, "n_seq": n, "n_threads": settings.threads}
    with init(model, **opts) as mtp, contextlib.ExitStack() as stack:
        port = None
        if exe is not None:
            from .upstream import server

            port = stack.enter_context(server(exe, path, k, settings, n_parallel=n))
        for t in temps:
            # each side is called with the round's seed
            sides: dict[str, Callable[[int], TempRound]] = {
                "match": functools.partial(_ours, mtp, prompts, tok, t, verify="match"),
                "rejection": functools.partial(_ours, mtp, prompts, tok, t, verify="rejection"),
            }
            if port is not None:
                sides["upstream"] = functools.partial(_upstream, port, prompts, tok, t, k=k)
            cell = TempsCell(t, n, _rotate(sides, settings.runs), _expected(spec, t, k), mtp.rollback or "")
            _log.info("  " + _row(cell.as_json()))
            cells.append(cell)
    return cells


def _model_file(model: Path | None, size: str, arch: str) -> tuple[Path, Any]:
    """The soft oracle of ``size`` (or the user's file) and its SoftSpec (None if not soft)."""
    from ..testing import load_soft_spec, make_model

    path = model or make_model(
        arch=arch,  # type: ignore[arg-type]
        weights="soft",
        size=size,  # type: ignore[arg-type]
        mtp_error_rate=SOFT_ERROR_RATE,
        head="token",
    )
    try:
        return path, load_soft_spec(path)
    except (ValueError, KeyError, OSError):
        return path, None


def run(
    model_path: Path | None,
    size: str,
    arch: str,
    settings: Settings,
    temps: Sequence[float],
    streams: Sequence[int],
    with_upstream: bool,
) -> TempsResult:
    """The temps scenario (llama-server only with_upstream, skipped with a warning when
    it cannot be built)."""
    path, spec = _model_file(model_path, size, arch)
    exe = None
    if with_upstream:
        from .upstream import server_binary

        try:
            exe = server_binary(settings)
        except Exception as exc:  # the comparison is optional: report and go on
            _log.warning(f"  llama-server unavailable: {exc}")
    k = settings.ref_n_draft
    _log.info(
        f"temps: {path.name}, n_draft={k}, {settings.runs} rounds x {settings.tokens} tokens per stream"
    )
    model = load_model(path)
    cells: list[TempsCell] = []
    try:
        for n in streams:
            cells += _cells_for_n(model, path, spec, n, temps, settings, exe)
    finally:
        model.close()
    return TempsResult(
        model=path.name,
        mtp_error_rate=spec.mtp_error_rate if spec is not None else None,
        n_draft=k,
        tokens_per_stream=settings.tokens,
        runs=settings.runs,
        cells=cells,
    )
