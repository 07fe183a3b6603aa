"""What guarding ggml's RPC client against a lost worker costs (native/rpc_guard.hpp):
the same split model loaded under each guard (``MTPSTREAM_RPC_GUARD``: ``hooks``, the
default; ``relay``; ``off``, ggml's client on its own), plain decoding and MTP,
interleaved rounds in one process.

Two loopback ``mtpstream rpc-server`` workers per guard (a worker serves one client at
a time), all on this machine's cores.

    python scripts/rpc_guard_cost.py [--size bench|small|tiny] [--rounds 5] [--tokens 96]

Prints, per n_draft, each guard's tokens/s (engine clock) and its per-round ratio to
``off`` (median [min, max]); writes the figures as JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from pathlib import Path
from typing import Any

import mtpstream
from mtpstream.bench import measure as meas
from mtpstream.bench.report import write_json
from mtpstream.testing import make_model, rpc_workers

GUARDS = ("off", "hooks", "relay")


def load(path: Path, endpoints: list[str], n_layers: int, guard: str) -> mtpstream.Model:
    os.environ["MTPSTREAM_RPC_GUARD"] = guard
    try:
        return mtpstream.load_model(path, rpc=endpoints, n_gpu_layers=n_layers)
    finally:
        os.environ.pop("MTPSTREAM_RPC_GUARD", None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=("tiny", "small", "bench"), default="bench")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--n-draft", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    path = make_model(arch="qwen35", weights="oracle", size=args.size, mtp_error_rate=0.25)
    n_layers = mtpstream.load_model(path).n_layer
    ks = (0, args.n_draft)
    with rpc_workers(2 * len(GUARDS), threads=1) as ws:
        models = {
            g: load(path, [w.endpoint for w in ws[2 * i : 2 * i + 2]], n_layers, g)
            for i, g in enumerate(GUARDS)
        }
        assert models["relay"].native.rpc_relays and not models["hooks"].native.rpc_relays
        prompt = models["off"].tokenize("The quiet river carried", add_special=True)
        sessions = {
            (side, k): mtpstream.init(m, n_draft=k, n_ctx=1024, n_threads=1, rollback="snapshots")
            for side, m in models.items()
            for k in ks
        }
        for mtp in sessions.values():  # warm-up
            meas.run_engine(mtp, prompt, 16)
        rates: dict[tuple[str, int], list[float]] = {key: [] for key in sessions}
        accepted: dict[tuple[str, int], list[int]] = {key: [] for key in sessions}
        for r in range(args.rounds):
            for key in meas.rotated(list(sessions), r):
                s = meas.run_engine(sessions[key], prompt, args.tokens)
                rates[key].append(s.decode_tokens_per_sec)
                accepted[key].append(s.drafts_accepted)
            print(f"round {r + 1}/{args.rounds}", flush=True)
        # free the split models while their workers run (a session, even closed, holds
        # its model's weights; without the relay, freeing them after the workers end aborts)
        for mtp in sessions.values():
            mtp.close()
        for m in models.values():
            m.close()
        del sessions, models, mtp, m
        gc.collect()
    result: dict[str, Any] = {"size": args.size, "rounds": args.rounds, "tokens": args.tokens, "n_draft": {}}
    for k in ks:
        entry: dict[str, Any] = {"off_tok_s": rates[("off", k)]}
        line = [f"n_draft={k}: off {statistics.median(rates[('off', k)]):.1f} tok/s"]
        for g in GUARDS[1:]:
            ratios = [a / b for a, b in zip(rates[(g, k)], rates[("off", k)], strict=True)]
            entry[g] = {
                "tok_s": rates[(g, k)],
                "ratio_median": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "same_acceptance": accepted[(g, k)] == accepted[("off", k)],
            }
            line.append(
                f"{g} {statistics.median(rates[(g, k)]):.1f} tok/s, /off {statistics.median(ratios):.3f} "
                f"[{min(ratios):.3f}, {max(ratios):.3f}] (same acceptance: {entry[g]['same_acceptance']})"
            )
        result["n_draft"][str(k)] = entry
        print("; ".join(line))
    out = write_json(result, args.out / f"rpc-guard-{time.strftime('%Y%m%d-%H%M%S')}.json")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
