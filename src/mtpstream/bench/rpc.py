"""``mtpstream bench --rpc``: MTP's speedup over plain decoding with the layers on RPC
workers, against the same speedup with everything local.

Four sessions (plain and ``n_draft`` MTP, each on the local model and on the model
split over the workers) generate from the same prompt in interleaved rounds, the
order rotated per round, timed by the engine's own clock. Per round: the local ratio
(MTP / plain decode tokens/s), the RPC ratio, and RPC ratio / local ratio, whose
median is the figure (target >= 0.95: MTP loses at most 5% of its speedup over RPC).
Acceptance must be equal on both sides (the same tokens are drafted and accepted).
Without endpoints, two ``mtpstream rpc-server`` workers are started on 127.0.0.1
(loopback: no network latency, but they share this machine's cores).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .. import MTP, Model, load_model
from ..testing import make_model
from ..testing.rpc_workers import rpc_workers
from . import env, report
from . import measure as meas

__all__ = ["run_rpc"]

_log = logging.getLogger(__name__)

TARGET = 0.95


@contextlib.contextmanager
def _endpoints(given: Sequence[str], threads: int) -> Iterator[list[str]]:
    if given:
        yield list(given)
        return
    with rpc_workers(2, threads=threads) as workers:
        yield [w.endpoint for w in workers]


def _sessions(local: Model, remote: Model, k: int, settings: meas.Settings) -> dict[str, MTP]:
    return {
        "local-plain": meas.open_session(local, 0, settings, rollback="snapshots"),
        f"local-k{k}": meas.open_session(local, k, settings, rollback="snapshots"),
        "rpc-plain": meas.open_session(remote, 0, settings, rollback="snapshots"),
        f"rpc-k{k}": meas.open_session(remote, k, settings, rollback="snapshots"),
    }


Samples = dict[str, list[meas.RunSample]]


def _close(sessions: dict[str, MTP], model: Model) -> None:
    for mtp in sessions.values():
        mtp.close()
    sessions.clear()
    model.close()


def _rounds(sessions: dict[str, MTP], prompt: list[int], settings: meas.Settings) -> Samples:
    keys = list(sessions)
    for key in keys:  # warm-up
        for _ in range(settings.warmup):
            meas.run_engine(sessions[key], prompt, settings.tokens)
    samples: Samples = {k: [] for k in keys}
    for r in range(settings.runs):
        for key in meas.rotated(keys, r):
            samples[key].append(meas.run_engine(sessions[key], prompt, settings.tokens))
        _log.info(f"rpc bench: round {r + 1}/{settings.runs}")
    return samples


def _summary(samples: Samples, k: int) -> dict[str, Any]:
    tps = {key: [s.decode_tokens_per_sec for s in runs] for key, runs in samples.items()}
    local = [m / p for m, p in zip(tps[f"local-k{k}"], tps["local-plain"], strict=True)]
    rpc = [m / p for m, p in zip(tps[f"rpc-k{k}"], tps["rpc-plain"], strict=True)]
    rel = sorted(r / lo for r, lo in zip(rpc, local, strict=True))
    acceptance = {
        key: (sum(s.drafts_accepted for s in runs), sum(s.drafts_generated for s in runs))
        for key, runs in samples.items()
        if not key.endswith("plain")
    }
    figure = statistics.median(rel)
    return {
        "decode_tps_median": {key: round(statistics.median(v), 2) for key, v in tps.items()},
        "decode_tps": {key: [round(x, 2) for x in v] for key, v in tps.items()},
        "local_ratio_median": round(statistics.median(local), 4),
        "rpc_ratio_median": round(statistics.median(rpc), 4),
        "rpc_over_local_median": round(figure, 4),
        "rpc_over_local_range": [round(rel[0], 4), round(rel[-1], 4)],
        "acceptance_equal": len(set(acceptance.values())) == 1,
        "drafts_accepted_generated": acceptance,
        "target": {"rpc_over_local_ge": TARGET, "pass": figure >= TARGET},
    }


def run_rpc(
    settings: meas.Settings,
    model_path: Path | None,
    endpoints: Sequence[str],
    n_gpu_layers: int | None,
    worker_threads: int,
    out: Path,
) -> dict[str, Any]:
    """Run the RPC comparison and write ``<out>/bench-<time>-rpc.json``; the result."""
    path = model_path or make_model(arch="qwen35", weights="oracle", size="bench", mtp_error_rate=0.25)
    k = settings.ref_n_draft
    local = load_model(path)
    ngl = n_gpu_layers if n_gpu_layers is not None else local.n_layer
    prompt = local.tokenize("The quiet river carried", add_special=True)
    with _endpoints(endpoints, worker_threads) as eps:
        remote = load_model(path, rpc=eps, n_gpu_layers=ngl)
        sessions = _sessions(local, remote, k, settings)
        try:
            samples = _rounds(sessions, prompt, settings)
        finally:
            # free the remote model while its workers run: ggml's RPC client aborts the
            # process when it cannot send the frees
            _close(sessions, remote)
            del sessions, remote
            gc.collect()
    result = {
        "scenario": "rpc",
        "time": env.utc_now(),
        "machine": env.machine_info(),
        "versions": env.versions(),
        "model": str(path),
        "endpoints": eps if endpoints else f"2 loopback workers ({worker_threads} threads each)",
        "n_gpu_layers": ngl,
        "n_draft": k,
        "runs": settings.runs,
        "tokens": settings.tokens,
        "threads": settings.threads,
        **_summary(samples, k),
    }
    stem = "bench-" + time.strftime("%Y%m%d-%H%M%S") + "-rpc"
    result["json"] = str(report.write_json(result, out / f"{stem}.json"))
    return result


def format_rpc(result: dict[str, Any]) -> str:
    """The summary lines of :func:`run_rpc`'s result."""
    tps = result["decode_tps_median"]
    lines = [
        f"RPC bench ({result['endpoints']}; n_gpu_layers={result['n_gpu_layers']}, "
        f"n_draft={result['n_draft']}, {result['runs']} rounds of {result['tokens']} tokens)",
        *(f"  {key:<12} {v:8.1f} tok/s (median)" for key, v in tps.items()),
        f"  MTP/plain local {result['local_ratio_median']:.3f}x, over RPC {result['rpc_ratio_median']:.3f}x",
        f"  RPC ratio / local ratio: {result['rpc_over_local_median']:.3f} "
        f"[{result['rpc_over_local_range'][0]:.3f}, {result['rpc_over_local_range'][1]:.3f}] "
        f"(target >= {TARGET}: {'pass' if result['target']['pass'] else 'FAIL'})",
        f"  acceptance equal: {result['acceptance_equal']} {result['drafts_accepted_generated']}",
        f"  wrote {result['json']}",
    ]
    return "\n".join(lines)
