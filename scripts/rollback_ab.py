"""Decode speed of rollback="auto" (the default) against "replay" and "snapshots",
interleaved in one run, on the synthetic model classes (issue 21, item 1).

Per model and n_seq, one session per rollback is opened (the default first, so its
choice is printed), warmed up, then every round runs each session once, in an order
that flips each round: n_seq calls of ``--tokens`` tokens at once. Reported per cell:
each rollback's median tok/s (delivered tokens over wall time, prefill included, as a
user sees it; with ``--clock cpu``, over the process's CPU time, one thread, which a
loaded machine disturbs far less) and the paired round ratios default/best-of-the-two
with their median and min-max. Written to JSON.

    python scripts/rollback_ab.py --rounds 7 --tokens 128 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from pathlib import Path
from typing import Any

import anyio

import mtpstream
from mtpstream.testing import make_model

MODES = ("default", "replay", "snapshots")
MODELS = {"small": ("qwen35", "small"), "bench": ("qwen35", "bench"), "moe": ("qwen35moe", "bench")}


async def _calls(mtp: mtpstream.MTP, n_seq: int, tokens: int) -> int:
    prompts = [[1 + 7 * i + j for j in range(16)] for i in range(n_seq)]
    async with anyio.create_task_group() as tg:
        for p in prompts:
            tg.start_soon(functools.partial(mtp.generate, p, max_tokens=tokens))
    return n_seq * tokens


def cell(model: mtpstream.Model, n_seq: int, args: argparse.Namespace) -> dict[str, Any]:
    sessions: dict[str, mtpstream.MTP] = {}
    for mode in MODES:
        kw: dict[str, Any] = {"n_ctx": 1024, "n_seq": n_seq, "flash_attn": False}
        if args.threads:
            kw |= {"n_threads": args.threads, "n_threads_batch": args.threads}
        if mode != "default":
            kw["rollback"] = mode
        sessions[mode] = mtpstream.init(model, n_draft=args.n_draft, **kw)
        anyio.run(_calls, sessions[mode], n_seq, args.tokens)  # warm-up
    chosen = sessions["default"].rollback
    ratio = sessions["default"].rollback_verify_cost_ratio
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(args.rounds):
        order = MODES if r % 2 == 0 else tuple(reversed(MODES))
        for mode in order:
            clock = time.process_time if args.clock == "cpu" else time.perf_counter
            t0 = clock()
            n = anyio.run(_calls, sessions[mode], n_seq, args.tokens)
            rates[mode].append(n / (clock() - t0))
    for s in sessions.values():
        s.close()
    rounds = zip(rates["default"], rates["replay"], rates["snapshots"], strict=True)
    paired = [d / max(rp, sn) for d, rp, sn in rounds]
    return {
        "chosen": chosen,
        "verify_cost_ratio": ratio,
        "tok_s": {m: rates[m] for m in MODES},
        "median_tok_s": {m: statistics.median(rates[m]) for m in MODES},
        "default_over_best": {"median": statistics.median(paired), "min": min(paired), "max": max(paired)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="small,bench,moe")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="cpu: CPU time, 1 thread")
    ap.add_argument("--n-seq", default="1,4")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--n-draft", type=int, default=3)
    ap.add_argument("--error-rate", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    if args.clock == "cpu":
        args.threads = 1  # CPU time of one thread: what the work costs, not the waits
    result: dict[str, Any] = {"args": vars(args), "cells": {}}
    for name in args.models.split(","):
        arch, size = MODELS[name]
        path = make_model(arch=arch, size=size, mtp_error_rate=args.error_rate, head="hidden")
        model = mtpstream.load_model(path)
        for n_seq in (int(x) for x in args.n_seq.split(",")):
            c = cell(model, n_seq, args)
            result["cells"][f"{name}/n_seq={n_seq}"] = c
            med, d = c["median_tok_s"], c["default_over_best"]
            print(
                f"{name:5} n_seq={n_seq}: auto chose {c['chosen']} (ratio {c['verify_cost_ratio']:.2f}); "
                f"tok/s default {med['default']:.1f}, replay {med['replay']:.1f}, "
                f"snapshots {med['snapshots']:.1f}; "
                f"default/best {d['median']:.3f} [{d['min']:.3f}-{d['max']:.3f}]",
                flush=True,
            )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / time.strftime("rollback-ab-%Y%m%d-%H%M%S.json")
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
