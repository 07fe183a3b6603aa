"""``mtpstream bench --rpc``: MTP's speedup over plain decoding with the layers on RPC
workers, against the same speedup with everything local.

Six sessions (plain and ``n_draft`` MTP, each on the local model, on the model split
over the workers as llama.cpp places it (``rpc``: the MTP layer and the output layer on
the last worker) and on that split with ``mtp_local=True`` (``rpc-tail``: those on this
host's CPU)) generate from the same prompt in interleaved rounds, the order rotated per
round, timed by the engine's own clock. Per round and placement: the local ratio (MTP /
plain decode tokens/s), the RPC ratio, and RPC ratio / local ratio, whose median is the
figure (target >= 0.95: MTP loses at most 5% of its speedup over RPC).
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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .. import MTP, Model, load_model
from ..testing import make_model, rpc_workers
from . import env, report, upstream
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


# the placements over RPC: llama.cpp's (the tail on the last worker) and mtp_local's
PLACEMENTS = {"rpc": False, "rpc-tail": True}


def _sessions(local: Model, remotes: dict[str, Model], k: int, settings: meas.Settings) -> dict[str, MTP]:
    models = {"local": local, **remotes}
    return {
        f"{side}-{label}": meas.open_session(model, n, settings, rollback="snapshots")
        for side, model in models.items()
        for label, n in (("plain", 0), (f"k{k}", k))
    }


Samples = dict[str, list[meas.RunSample]]


def _close(sessions: dict[str, MTP], models: dict[str, Model]) -> None:
    for mtp in sessions.values():
        mtp.close()
    sessions.clear()
    for model in models.values():
        model.close()


def _rounds(sides: dict[str, Callable[[], meas.RunSample]], settings: meas.Settings) -> Samples:
    keys = list(sides)
    for key in keys:  # warm-up
        for _ in range(settings.warmup):
            sides[key]()
    samples: Samples = {k: [] for k in keys}
    for r in range(settings.runs):
        for key in meas.rotated(keys, r):
            samples[key].append(sides[key]())
        _log.info(f"rpc bench: round {r + 1}/{settings.runs}")
    return samples


def _ours(mtp: MTP, prompt: list[int], tokens: int) -> Callable[[], meas.RunSample]:
    return lambda: meas.run_engine(mtp, prompt, tokens)


def _upstream(port: int, prompt: list[int], tokens: int) -> Callable[[], meas.RunSample]:
    """llama-server's completion as a sample: its decode speed (``predicted_per_second``)
    and draft counters (per-phase times unknown: zero)."""

    def run() -> meas.RunSample:
        t = upstream.complete(port, prompt, tokens)
        n = int(t["predicted_n"])
        timing = dict.fromkeys(("draft", "verify", "sample", "ckpt", "other", "prefill"), 0)
        # decode_tokens_per_sec is (n - 1) / total: make it n / predicted_ms
        timing["total"] = int(float(t["predicted_ms"]) * 1000 * (n - 1) / n) if n > 1 else 0
        return meas.RunSample(
            wall_s=(float(t["prompt_ms"]) + float(t["predicted_ms"])) / 1000,
            completion_tokens=n,
            finish_reason="length",
            iters=0,
            drafts_generated=int(t.get("draft_n", 0)),
            drafts_accepted=int(t.get("draft_n_accepted", 0)),
            timing_us=timing,
            peak_rss_bytes=0,
        )

    return run


def _median_per_iter(runs: list[meas.RunSample], phase: str) -> float | None:
    """The median time of ``phase`` per iteration (None for llama-server: not known)."""
    values = [x for s in runs if (x := s.per_iter_us(phase)) is not None]
    return round(statistics.median(values), 1) if values else None


def _ratios(tps: dict[str, list[float]], side: str, k: int) -> list[float]:
    return [m / p for m, p in zip(tps[f"{side}-k{k}"], tps[f"{side}-plain"], strict=True)]


def _placement(tps: dict[str, list[float]], side: str, k: int, local: list[float]) -> dict[str, Any]:
    """One RPC placement's figures: its MTP/plain ratio against the local one, and its
    MTP speed against llama-server's (when measured)."""
    rpc = _ratios(tps, side, k)
    rel = sorted(r / lo for r, lo in zip(rpc, local, strict=True))
    figure = statistics.median(rel)
    out: dict[str, Any] = {
        "rpc_ratio_median": round(statistics.median(rpc), 4),
        "rpc_over_local_median": round(figure, 4),
        "rpc_over_local_range": [round(rel[0], 4), round(rel[-1], 4)],
        "target": {"rpc_over_local_ge": TARGET, "pass": figure >= TARGET},
    }
    up = f"upstream-k{k}"
    if up in tps:
        ours = sorted(o / u for o, u in zip(tps[f"{side}-k{k}"], tps[up], strict=True))
        out |= {
            "ours_over_upstream_median": round(statistics.median(ours), 4),
            "ours_over_upstream_range": [round(ours[0], 4), round(ours[-1], 4)],
            "upstream_target": {"ours_over_upstream_ge": 1.0, "pass": statistics.median(ours) >= 1.0},
        }
    return out


def _summary(samples: Samples, k: int) -> dict[str, Any]:
    """The figures: top-level keys for llama.cpp's placement, ``mtp_local`` for the tail
    kept on this host."""
    tps = {key: [s.decode_tokens_per_sec for s in runs] for key, runs in samples.items()}
    local = _ratios(tps, "local", k)
    acceptance = {
        key: (sum(s.drafts_accepted for s in runs), sum(s.drafts_generated for s in runs))
        for key, runs in samples.items()
        if not key.endswith("plain")
    }
    phases = ("draft", "verify", "sample", "ckpt", "other")
    per_iter = {key: {ph: _median_per_iter(runs, ph) for ph in phases} for key, runs in samples.items()}
    return {
        "per_iter_us_median": per_iter,
        "decode_tps_median": {key: round(statistics.median(v), 2) for key, v in tps.items()},
        "decode_tps": {key: [round(x, 2) for x in v] for key, v in tps.items()},
        "local_ratio_median": round(statistics.median(local), 4),
        **_placement(tps, "rpc", k, local),
        "mtp_local": _placement(tps, "rpc-tail", k, local),
        "acceptance_equal": all(
            acceptance[f"{side}-k{k}"] == acceptance[f"local-k{k}"] for side in PLACEMENTS
        ),
        "drafts_accepted_generated": acceptance,
    }


def _upstream_server(
    exe: Path, path: Path, eps: list[str], ngl: int, k: int, settings: meas.Settings
) -> contextlib.AbstractContextManager[int]:
    """llama-server with ``--rpc`` on the same split and ``k`` MTP drafts (its own workers:
    a worker serves one client at a time)."""
    t = str(settings.threads)
    args = ["-m", str(path), "-t", t, "-tb", t, "-c", str(settings.n_ctx), "-np", "1", "--no-webui"]
    args += [
        "--rpc",
        ",".join(eps),
        "-ngl",
        str(ngl),
        "--spec-type",
        "draft-mtp",
        "--spec-draft-n-max",
        str(k),
    ]
    if settings.flash_attn is not None:
        args += ["-fa", "on" if settings.flash_attn else "off"]
    return upstream.launched(exe, args)


def _measure(
    path: Path,
    local: Model,
    eps: list[str],
    ngl: int,
    settings: meas.Settings,
    upstream_at: tuple[Path, int] | None,
) -> Samples:
    """The interleaved rounds; ``upstream_at``: llama-server and the threads of its workers."""
    k = settings.ref_n_draft
    prompt = local.tokenize("The quiet river carried", add_special=True)
    remotes = {
        side: load_model(path, rpc=eps, n_gpu_layers=ngl, mtp_local=tail) for side, tail in PLACEMENTS.items()
    }
    sessions = _sessions(local, remotes, k, settings)
    try:
        sides = {key: _ours(mtp, prompt, settings.tokens) for key, mtp in sessions.items()}
        with contextlib.ExitStack() as stack:
            if upstream_at is not None:
                workers = stack.enter_context(rpc_workers(len(eps), threads=upstream_at[1]))
                up_eps = [w.endpoint for w in workers]
                port = stack.enter_context(_upstream_server(upstream_at[0], path, up_eps, ngl, k, settings))
                sides[f"upstream-k{k}"] = _upstream(port, prompt, settings.tokens)
            return _rounds(sides, settings)
    finally:
        # free the remote model while its workers run: ggml's RPC client aborts the
        # process when it cannot send the frees
        _close(sessions, remotes)
        del sessions, remotes
        gc.collect()


def run_rpc(
    settings: meas.Settings,
    model_path: Path | None,
    endpoints: Sequence[str],
    n_gpu_layers: int | None,
    worker_threads: int,
    out: Path,
    with_upstream: bool = False,
    size: str = "bench",
) -> dict[str, Any]:
    """Run the RPC comparison and write ``<out>/bench-<time>-rpc.json``; the result.
    Without ``model_path``, the synthetic model of ``size`` (``--size``)."""
    path = model_path or make_model(arch="qwen35", weights="oracle", size=size, mtp_error_rate=0.25)  # type: ignore[arg-type]
    k = settings.ref_n_draft
    local = load_model(path)
    ngl = n_gpu_layers if n_gpu_layers is not None else local.n_layer
    exe = _rpc_llama_server(settings) if with_upstream else None
    with _endpoints(endpoints, worker_threads) as eps:
        samples = _measure(path, local, eps, ngl, settings, (exe, worker_threads) if exe else None)
    result = {
        "scenario": "rpc",
        "time": env.utc_now(),
        "machine": env.machine_info(),
        "versions": env.versions(),
        "model": str(path),
        "model_size": None if model_path else size,
        "endpoints": eps if endpoints else f"2 loopback workers ({worker_threads} threads each)",
        "n_gpu_layers": ngl,
        "n_draft": k,
        "runs": settings.runs,
        "tokens": settings.tokens,
        "threads": settings.threads,
        "llama_server": str(exe) if exe else None,
        **_summary(samples, k),
    }
    stem = "bench-" + time.strftime("%Y%m%d-%H%M%S") + "-rpc"
    result["json"] = str(report.write_json(result, out / f"{stem}.json"))
    return result


def _rpc_llama_server(settings: meas.Settings) -> Path:
    """llama-server built with -DGGML_RPC=ON from the pinned llama.cpp (once, cached)."""
    return upstream.server_binary(settings, rpc=True)


def _placement_lines(name: str, fig: dict[str, Any], local_ratio: float) -> list[str]:
    lo, hi = fig["rpc_over_local_range"]
    lines = [
        f"  {name}: MTP/plain {fig['rpc_ratio_median']:.3f}x (local {local_ratio:.3f}x); "
        f"RPC ratio / local ratio {fig['rpc_over_local_median']:.3f} [{lo:.3f}, {hi:.3f}] "
        f"(target >= {TARGET}: {'pass' if fig['target']['pass'] else 'FAIL'})"
    ]
    if "ours_over_upstream_median" in fig:
        lo, hi = fig["ours_over_upstream_range"]
        lines.append(
            f"    ours / llama-server --rpc (its own placement): "
            f"{fig['ours_over_upstream_median']:.3f} [{lo:.3f}, {hi:.3f}]"
        )
    return lines


def format_rpc(result: dict[str, Any]) -> str:
    """The summary lines of :func:`run_rpc`'s result."""
    tps = result["decode_tps_median"]
    lines = [
        f"RPC bench ({result['endpoints']}; n_gpu_layers={result['n_gpu_layers']}, "
        f"n_draft={result['n_draft']}, {result['runs']} rounds of {result['tokens']} tokens)",
        *(f"  {key:<15} {v:8.1f} tok/s (median)" for key, v in tps.items()),
        *_placement_lines("llama.cpp's placement (rpc)", result, result["local_ratio_median"]),
        *_placement_lines("mtp_local (rpc-tail)", result["mtp_local"], result["local_ratio_median"]),
        *(
            f"  {key:<15} per iteration (us): {phases}"
            for key, phases in result["per_iter_us_median"].items()
        ),
        f"  acceptance equal: {result['acceptance_equal']} {result['drafts_accepted_generated']}",
        f"  wrote {result['json']}",
    ]
    return "\n".join(lines)
