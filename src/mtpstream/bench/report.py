"""Benchmark analysis and output: speedups, the ideal bound, targets, table, plot, JSON.

Private to :mod:`mtpstream.bench`. Works on the JSON-able dictionaries the
measurements produce, so a saved result can be re-analysed.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .env import bootstrap_median_ci, paired_ratios

__all__ = [
    "IDEAL_METHOD",
    "TARGET_THRESHOLDS",
    "add_derived",
    "evaluate_targets",
    "format_summary",
    "judge",
    "markdown",
    "plot",
    "reanalyze",
    "ttft_ratios",
    "write_json",
]

IDEAL_METHOD = (
    "Runs are interleaved in rounds (every n_draft once per round, order rotated), and ratios "
    "are paired: computed within a round, then the median over rounds is reported. "
    "speedup(k) = decode tokens/s at k / at n_draft=0. ideal speedup(k) = tokens_per_iter(k) "
    "* plain_step_us / (verify_batch_us(k) + draft_us_per_iter(k)), where plain_step_us is the "
    "verify (single-token decode) time per iteration at n_draft=0, verify_batch_us(k) the "
    "verify time per iteration at k (a k+1-token batch), draft_us_per_iter(k) the draft time "
    "per iteration (draft_step_us(k) = draft time / drafts_generated) and tokens_per_iter(k) = "
    "(drafts_accepted + iters) / iters, all from the engine's timing_us in the same run: the "
    "speedup a loop with no cost besides its decodes would reach at the measured acceptance. "
    "efficiency = speedup / ideal speedup. ideal_speedup_flat_verify uses plain_step_us in "
    "place of verify_batch_us(k): the bound if a (k+1)-token batch cost what one token costs."
)

TARGET_THRESHOLDS: dict[str, float] = {
    "async_asyncio_over_native": 0.98,
    "async_trio_over_native": 0.97,
    "efficiency_at_best_n_draft": 0.90,
    "full_acceptance_best_over_plain": 1.10,
    "random_auto_over_plain": 0.97,
    "stats_p99_us": 50.0,
    "ttft_mtp_over_plain": 1.10,
    "idle_company_over_alone": 0.97,
    "mtpstream_over_upstream": 1.0,
    "acceptance_vs_upstream_abs_diff": 0.02,
    "auto_over_upstream_default": 1.05,
    "auto_over_best_fixed": 0.95,
}


# --------------------------------------------------------------------- derived figures
def _series(row: dict[str, Any], field: str) -> list[float]:
    """One per-run figure of a cell, in round order (missing values as 0)."""
    return [float(r[field] or 0.0) for r in row["runs"]]


def _cell_costs(row: dict[str, Any], plain_step_us: float | None) -> dict[str, Any]:
    """Costs of one (level, n_draft) cell (medians over runs, µs)."""
    verify = row["timing_us_per_iter"].get("verify")
    draft = row["timing_us_per_iter"].get("draft")
    gen = row["drafts_generated"]
    tpi = row["tokens_per_iter"]
    flat = None
    if plain_step_us and draft is not None and tpi:
        flat = round(tpi * plain_step_us / (plain_step_us + draft), 4)
    return {
        "verify_batch_us": verify,
        "draft_us_per_iter": draft,
        "draft_step_us": round(row["timing_us"]["draft"] / gen, 1) if gen else None,
        "verify_over_plain_step": round(verify / plain_step_us, 4) if verify and plain_step_us else None,
        "ideal_speedup_flat_verify": flat,
    }


def _paired(row: dict[str, Any], plain: dict[str, Any]) -> dict[str, Any]:
    """Speedup, ideal speedup and efficiency of a cell, paired round by round with plain.

    Each round's ideal uses that run's own tokens per iteration, so a cell whose
    behaviour changes between runs (``"auto"`` adapting) is judged run by run.
    """
    rounds = zip(
        _series(row, "tokens_per_sec"),
        _series(row, "tokens_per_iter"),
        _series(row, "verify_us_per_iter"),
        _series(row, "draft_us_per_iter"),
        _series(plain, "tokens_per_sec"),
        _series(plain, "verify_us_per_iter"),
        strict=True,
    )
    speed: list[float] = []
    ideal: list[float] = []
    for tps, tpi, verify, draft, p_tps, p_step in rounds:
        if p_tps and verify + draft and tpi:
            speed.append(tps / p_tps)
            ideal.append(tpi * p_step / (verify + draft))
    eff = [sp / i for sp, i in zip(speed, ideal, strict=True) if i]

    def med(values: list[float]) -> float | None:
        return round(statistics.median(values), 4) if values else None

    return {
        "speedup": med(speed),
        "speedup_min": round(min(speed), 4) if speed else None,
        "speedup_max": round(max(speed), 4) if speed else None,
        "ideal_speedup": med(ideal),
        "efficiency": med(eff),
    }


def _best_key(rows: dict[str, Any]) -> str | None:
    """The fixed n_draft >= 1 with the highest (paired, median) speedup."""
    fixed = {
        k: float(r["speedup"])
        for k, r in rows.items()
        if k.isdigit() and int(k) >= 1 and r.get("speedup") is not None
    }
    return max(fixed, key=lambda k: fixed[k]) if fixed else None


def add_derived(level: dict[str, Any]) -> None:
    """Add costs, speedups, the ideal bound and efficiency to a level's rows (in place)."""
    rows: dict[str, Any] = level["rows"]
    plain = rows.get("0")
    plain_step = plain["timing_us_per_iter"].get("verify") if plain else None
    for row in rows.values():
        row.update(_cell_costs(row, plain_step))
        if plain is not None:
            row.update(_paired(row, plain))
    best = _best_key(rows)
    level["costs"] = {
        "plain_step_us": plain_step,
        "verify_batch_us": {k: r["verify_batch_us"] for k, r in rows.items() if k != "0"},
        "draft_step_us": {k: r["draft_step_us"] for k, r in rows.items() if k != "0"},
    }
    level["best_n_draft"] = int(best) if best is not None else None
    level["best_speedup"] = rows[best]["speedup"] if best else None
    level["efficiency_at_best"] = rows[best]["efficiency"] if best else None


# --------------------------------------------------------------------- targets
def _verdict(
    description: str, measured: Any, ok: bool | None, threshold: float, note: str = ""
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "target": description,
        "threshold": threshold,
        "measured": measured,
        "pass": ok,
    }
    if note:
        out["note"] = note
    return out


def _t_async(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    a = result["async_layer"]
    t_b, t_c = TARGET_THRESHOLDS["async_asyncio_over_native"], TARGET_THRESHOLDS["async_trio_over_native"]
    b, c = a["asyncio_over_native"], a["trio_over_native"]
    return {
        "async_asyncio_over_native": _verdict("(b) asyncio / (a) native >= 0.98", b, b >= t_b, t_b),
        "async_trio_over_native": _verdict("(c) trio / (a) native >= 0.97", c, c >= t_c, t_c),
    }


def _t_efficiency(result: dict[str, Any]) -> dict[str, Any]:
    t = TARGET_THRESHOLDS["efficiency_at_best_n_draft"]
    measured = {lv["name"]: lv["efficiency_at_best"] for lv in result["levels"]}
    values = [v for v in measured.values() if v is not None]
    ok = bool(values) and all(v >= t for v in values)
    return _verdict(
        "efficiency >= 0.90 of the ideal at every acceptance level, at its best n_draft >= 1",
        measured,
        ok if values else None,
        t,
    )


def _full_level(result: dict[str, Any]) -> dict[str, Any] | None:
    levels: list[dict[str, Any]] = result["levels"]
    return next((lv for lv in levels if lv.get("nominal_acceptance") == 1.0), None)


def _t_full(result: dict[str, Any]) -> dict[str, Any]:
    t = TARGET_THRESHOLDS["full_acceptance_best_over_plain"]
    desc = (
        "at ~100% acceptance, best n_draft clearly faster than plain: faster in every round "
        "and the median (paired) ratio >= 1.10"
    )
    lv = _full_level(result)
    if lv is None or lv["best_n_draft"] is None:
        return _verdict(desc, None, None, t, "no ~100% acceptance level in this run")
    best = lv["rows"][str(lv["best_n_draft"])]
    ratio, worst = best["speedup"], best["speedup_min"]
    measured = {"n_draft": lv["best_n_draft"], "ratio": ratio, "worst_round": worst}
    return _verdict(desc, measured, bool(ratio and ratio >= t and worst and worst > 1.0), t)


def _t_random_auto(result: dict[str, Any]) -> dict[str, Any]:
    t = TARGET_THRESHOLDS["random_auto_over_plain"]
    desc = 'random weights: n_draft="auto" >= 0.97x plain decode speed'
    lv = next((x for x in result["levels"] if x["weights"] == "random"), None)
    if lv is None:
        return _verdict(desc, None, None, t, "no random-weights level in this run")
    row = lv["rows"].get("auto")
    if row is None:
        return _verdict(desc, None, None, t, "n_draft='auto' unavailable: " + lv["auto"]["reason"])
    ratio = row["speedup"]
    return _verdict(desc, ratio, bool(ratio is not None and ratio >= t), t)


def _t_auto_vs_best(result: dict[str, Any]) -> dict[str, Any]:
    t = TARGET_THRESHOLDS["auto_over_best_fixed"]
    desc = 'n_draft="auto" within 5% of the best fixed n_draft (0..6) at every level (median paired ratio)'
    measured: dict[str, Any] = {}
    for lv in result["levels"]:
        rows = lv["rows"]
        auto = rows.get("auto")
        fixed = {k: r["tokens_per_sec"]["median"] for k, r in rows.items() if k.isdigit()}
        if auto is None or not fixed:
            continue
        best = max(fixed, key=lambda k: fixed[k])
        ratio = paired_ratios(_series(auto, "tokens_per_sec"), _series(rows[best], "tokens_per_sec"))
        measured[lv["name"]] = {"best_fixed": int(best), "ratio": ratio["median"]}
    values = [m["ratio"] for m in measured.values()]
    ok = bool(values) and all(v is not None and v >= t for v in values)
    return _verdict(desc, measured, ok if values else None, t)


def _t_stats(result: dict[str, Any]) -> dict[str, Any]:
    t = TARGET_THRESHOLDS["stats_p99_us"]
    s = result["stats_latency"]
    measured = {"from_task": s["from_task"]["p99_us"], "from_thread": s["from_thread"]["p99_us"]}
    values = [v for v in measured.values() if v is not None]
    ok = bool(values) and all(v < t for v in values)
    return _verdict("stats() p99 < 50 us (from another task and from another thread)", measured, ok, t)


def _t_ttft(result: dict[str, Any]) -> dict[str, Any]:
    t = TARGET_THRESHOLDS["ttft_mtp_over_plain"]
    r = result["ttft"]
    measured = {"pooled": r["mtp_over_plain"], "worst_n_draft": r["worst_mtp_over_plain"]}
    ok = r["mtp_over_plain"] is not None and r["mtp_over_plain"] <= t
    return _verdict(
        "time to first token (512-token prompt) with MTP <= 1.10x plain",
        measured,
        ok,
        t,
        "pooled: per round, mean TTFT over every n_draft >= 1 / plain; median over rounds",
    )


def _t_company(result: dict[str, Any]) -> dict[str, Any]:
    t = TARGET_THRESHOLDS["idle_company_over_alone"]
    ratios = {k: v for k, v in result["company"]["ratio_vs_alone"].items() if k != "0"}
    ok = all(v >= t for v in ratios.values()) if ratios else None
    return _verdict(
        "no measurable slowdown with idle sessions alive (median paired ratio >= 0.97)",
        ratios,
        ok,
        t,
    )


def _upstream_cells(result: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    up = result.get("upstream") or {}
    return up.get("levels") if up.get("available") else None


def _t_upstream(result: dict[str, Any]) -> dict[str, Any]:
    t = TARGET_THRESHOLDS["mtpstream_over_upstream"]
    desc = (
        "decode at least as fast as llama-server --spec-type draft-mtp --spec-draft-n-max K: "
        "per K and overall, the pooled median of per-round ratios; K falls short only when its "
        "95% bootstrap interval lies wholly below 1"
    )
    up = result.get("upstream") or {}
    if not up.get("available"):
        return _verdict(desc, None, None, t, up.get("reason", "not run (--with-upstream)"))
    pooled = upstream_pooled(up)
    measured = {k: v for k, v in pooled.get("by_n_draft", {}).items() if k != "auto"}
    cis = {k: v for k, v in pooled.get("ci95_by_n_draft", {}).items() if k != "auto"}
    short = [k for k, ci in cis.items() if ci is not None and ci[1] < t]
    ok = bool(measured) and not short
    note = _pooled_text(pooled) if pooled else ""
    note += "; K wholly below 1: " + (", ".join(short) or "none")
    return _verdict(desc, measured, ok, t, note)


def _t_upstream_acceptance(result: dict[str, Any]) -> dict[str, Any]:
    t = TARGET_THRESHOLDS["acceptance_vs_upstream_abs_diff"]
    desc = (
        "acceptance equals llama-server's own draft_n_accepted / draft_n within 0.02 at every level and K "
        '(ours on the server\'s schedule: rollback="snapshots", K drafts every iteration)'
    )
    levels = _upstream_cells(result)
    if levels is None:
        return _verdict(desc, None, None, t, "not run (--with-upstream)")
    measured: dict[str, dict[str, Any]] = {}
    diffs: list[float] = []
    for name, cells in levels.items():
        for k, c in cells.items():
            # results before rollback="replay" hold only the default session's rate
            ours = c.get("mtpstream_snapshots_acceptance_rate", c.get("mtpstream_acceptance_rate"))
            theirs = c.get("upstream_acceptance_rate")
            if k in ("0", "auto") or ours is None or theirs is None:
                continue
            d = round(abs(ours - theirs), 4)
            measured.setdefault(name, {})[k] = {
                "mtpstream": ours,
                "upstream": theirs,
                "expected": c.get("expected_acceptance_rate"),
                "abs_diff": d,
            }
            diffs.append(d)
    ok = bool(diffs) and max(diffs) <= t
    return _verdict(desc, measured, ok, t, f"largest difference {max(diffs):.4f}" if diffs else "no cells")


def _t_auto_upstream(result: dict[str, Any]) -> dict[str, Any]:
    t = TARGET_THRESHOLDS["auto_over_upstream_default"]
    desc = "n_draft='auto' vs llama-server --spec-type draft-mtp with its defaults: >= 1.05x at every level"
    levels = _upstream_cells(result)
    if levels is None:
        return _verdict(desc, None, None, t, "not run (--with-upstream)")
    measured = {
        name: cells["auto"].get("mtpstream_over_upstream")
        for name, cells in levels.items()
        if "auto" in cells and "error" not in cells["auto"]
    }
    ok = bool(measured) and all(v is not None and v >= t for v in measured.values())
    return _verdict(desc, measured, ok, t, "median of per-round ratios per level")


def upstream_pooled(up: dict[str, Any]) -> dict[str, Any]:
    """Median of every per-round mtpstream/upstream ratio, over all rows and per n_draft,
    each with a 95% bootstrap interval of that median.

    One row's median of a few rounds moves by several percent with the machine; pooling
    the rounds of every level says whether one loop is faster than the other at all.
    """
    by_k: dict[str, list[float]] = {}
    delivered: dict[str, list[float]] = {}
    for cells in (up.get("levels") or {}).values():
        for k, cell in cells.items():
            rounds = cell.get("mtpstream_over_upstream_rounds") or {}
            by_k.setdefault(k, []).extend(rounds.get("values", []))
            d = cell.get("delivered_over_upstream_rounds") or {}
            if d.get("values"):
                delivered.setdefault(k, []).extend(d["values"])
    every = [v for k, vs in by_k.items() if k != "auto" for v in vs]
    if not every:
        return {}
    out_delivered = {
        "delivered_by_n_draft": {k: round(statistics.median(vs), 4) for k, vs in delivered.items()},
        "delivered_ci95_by_n_draft": {k: bootstrap_median_ci(vs) for k, vs in delivered.items()},
    }
    return {
        **(out_delivered if delivered else {}),
        "median": round(statistics.median(every), 4),
        "ci95": bootstrap_median_ci(every),
        "rounds": len(every),
        "by_n_draft": {k: round(statistics.median(vs), 4) for k, vs in by_k.items() if vs},
        "ci95_by_n_draft": {k: bootstrap_median_ci(vs) for k, vs in by_k.items() if vs},
    }


def _ci_text(ci: Any) -> str:
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def _pooled_text(pooled: dict[str, Any]) -> str:
    cis = pooled.get("ci95_by_n_draft", {})
    per_k = ", ".join(f"k={k} {v:.3f}{_ci_text(cis.get(k))}" for k, v in pooled["by_n_draft"].items())
    text = (
        f"pooled rounds ({pooled['rounds']}): median {pooled['median']:.3f}"
        f"{_ci_text(pooled.get('ci95'))}; by n_draft (95% bootstrap interval): {per_k}"
    )
    if pooled.get("delivered_by_n_draft"):
        dcis = pooled["delivered_ci95_by_n_draft"]
        text += "; delivered to an asyncio consumer: " + ", ".join(
            f"k={k} {v:.3f}{_ci_text(dcis.get(k))}" for k, v in pooled["delivered_by_n_draft"].items()
        )
    return text


def reanalyze(result: dict[str, Any]) -> dict[str, Any]:
    """Recompute every derived figure of a saved result from its raw measurements (in
    place): per-level speedups, ideal bound and efficiency, TTFT ratios, targets."""
    if result.get("upstream_only") or result.get("streams") or result.get("chat"):
        return judge(result)
    for level in result["levels"]:
        add_derived(level)
    ttft_ratios(result["ttft"])
    result["ideal_method"] = IDEAL_METHOD
    return judge(result)


def judge(result: dict[str, Any]) -> dict[str, Any]:
    """Set ``targets`` and ``all_targets_pass`` (unmeasurable targets left out) in place."""
    result["targets"] = evaluate_targets(result)
    flags = [t["pass"] for t in result["targets"].values() if t["pass"] is not None]
    result["all_targets_pass"] = all(flags)
    return result


def _streams_cell(result: dict[str, Any], n: int = 4) -> dict[str, Any] | None:
    st = result.get("streams") or {}
    levels = st.get("levels") or {}
    level = next((v for k, v in levels.items() if k.endswith("a1.00")), next(iter(levels.values()), None))
    return None if level is None else level.get(str(n))


def _t_streams(result: dict[str, Any]) -> dict[str, Any]:
    """Many streams, at n_seq=4 on the high-acceptance level."""
    cell = _streams_cell(result)
    targets: dict[str, Any] = {}
    if cell is None:
        na = {"measured": None, "pass": None, "threshold": "n/a", "note": "no n=4 cell"}
        return {
            name: dict(na)
            for name in (
                "streams_batched_over_single",
                "streams_batched_over_upstream",
                "streams_efficiency",
                "streams_acceptance_vs_single",
            )
        }
    r = cell["batched_over_single_rounds"]["median"]
    targets["streams_batched_over_single"] = {"measured": r, "pass": r >= 1.5, "threshold": ">= 1.5"}
    up = cell.get("batched_over_upstream_rounds")
    targets["streams_batched_over_upstream"] = (
        {"measured": up["median"], "pass": up["median"] >= 1.1, "threshold": ">= 1.1 (llama-server -np 4)"}
        if up
        else {"measured": None, "pass": None, "threshold": ">= 1.1", "note": "no llama-server run"}
    )
    eff = cell["batched"].get("efficiency")
    targets["streams_efficiency"] = {
        "measured": eff,
        "pass": eff is not None and eff >= 0.9,
        "threshold": ">= 0.9",
    }
    b = cell["batched"]["per_stream_acceptance"]["by_stream"]
    single = cell["single"]["per_stream_acceptance"]["by_stream"]
    common = sorted(set(b) & set(single))
    if not common:
        targets["streams_acceptance_vs_single"] = {
            "measured": None,
            "pass": None,
            "threshold": "<= 0.02",
            "note": "no drafts",
        }
    else:
        # each stream against the same prompt on the n_seq=1 session
        diff = round(max(abs(b[i] - single[i]) for i in common), 4)
        targets["streams_acceptance_vs_single"] = {
            "measured": diff,
            "pass": diff <= 0.02,
            "threshold": "<= 0.02",
        }
    return targets


def _t_chat(result: dict[str, Any]) -> dict[str, Any]:
    at = result["chat"].get("at_1500")
    if at is None:
        return {"chat_ttft_cold_over_warm_at_1500": {"measured": None, "pass": None, "threshold": ">= 10"}}
    r = at["cold_over_warm"]
    return {"chat_ttft_cold_over_warm_at_1500": {"measured": r, "pass": r >= 10, "threshold": ">= 10"}}


def _md_chat(chat: dict[str, Any]) -> list[str]:
    lines = [
        f"chat: {chat['level']}, n_draft={chat['n_draft']}, {chat['turn_tokens']}-token turns; "
        "TTFT with the prompt cache (warm) and without (cold)",
        "",
        "| turn | prompt tokens | cached | TTFT warm ms | TTFT cold ms | cold / warm | same answer |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in chat["turns"]:
        lines.append(
            f"| {r['turn']} | {r['prompt_tokens']} | {r['cached_tokens']} | {r['ttft_warm_ms']} | "
            f"{r['ttft_cold_ms']} | {r['cold_over_warm']} | {'yes' if r['same_answer'] else 'NO'} |"
        )
    div = chat.get("divergent") or {}
    named = [(k, v) for k, v in div.items() if isinstance(v, dict)]
    if named:
        lines += [
            "",
            f"prompts diverging inside the cache (median of {len(named[0][1]['cached_tokens'])}; "
            f"{div.get('checkpoints', 0)} checkpoints, {div.get('checkpoint_bytes', 0) / 2**20:.2f} MiB):",
            "",
            "| prompt | prompt tokens | cached | TTFT warm ms | TTFT cold ms | cold / warm |",
            "|---|---|---|---|---|---|",
        ]
        for name, v in named:
            lines.append(
                f"| {name} | {v['prompt_tokens']} | {v['cached_tokens']} | {v['ttft_warm_ms']} | "
                f"{v['ttft_cold_ms']} | {v['cold_over_warm']} |"
            )
    return lines


def evaluate_targets(result: dict[str, Any]) -> dict[str, Any]:
    """Every target of the issue, with measured figures and a pass flag (None: not measurable)."""
    targets: dict[str, Any] = {}
    if result.get("chat"):
        return _t_chat(result)
    if result.get("streams"):
        return _t_streams(result)
    if result.get("upstream_only"):
        targets["mtpstream_over_upstream"] = _t_upstream(result)
        targets["acceptance_vs_upstream"] = _t_upstream_acceptance(result)
        targets["auto_over_upstream_default"] = _t_auto_upstream(result)
        return targets
    targets.update(_t_async(result))
    targets["efficiency_at_best_n_draft"] = _t_efficiency(result)
    targets["full_acceptance_best_over_plain"] = _t_full(result)
    targets["random_auto_over_plain"] = _t_random_auto(result)
    targets["auto_over_best_fixed"] = _t_auto_vs_best(result)
    targets["stats_p99_us"] = _t_stats(result)
    targets["ttft_mtp_over_plain"] = _t_ttft(result)
    targets["idle_company_over_alone"] = _t_company(result)
    targets["mtpstream_over_upstream"] = _t_upstream(result)
    targets["acceptance_vs_upstream"] = _t_upstream_acceptance(result)
    targets["auto_over_upstream_default"] = _t_auto_upstream(result)
    return targets


def ttft_ratios(ttft: dict[str, Any]) -> None:
    """Add MTP / plain time-to-first-token ratios (paired by round) to a TTFT result."""
    by = ttft["by_n_draft"]
    plain = by.get("0", {}).get("ttft_ms", {}).get("values", [])
    per_k = {k: r["ttft_ms"]["values"] for k, r in by.items() if k != "0"}
    if not plain or not per_k:
        ttft["mtp_over_plain"] = ttft["worst_mtp_over_plain"] = None
        return
    ratios = {k: paired_ratios(v, plain) for k, v in per_k.items()}
    pooled = [statistics.mean(vals) for vals in zip(*per_k.values(), strict=True)]
    ttft["mtp_over_plain_by_n_draft"] = {k: r["median"] for k, r in ratios.items()}
    ttft["mtp_over_plain_paired"] = paired_ratios(pooled, plain)
    ttft["mtp_over_plain"] = ttft["mtp_over_plain_paired"]["median"]
    ttft["worst_mtp_over_plain"] = max(r["median"] for r in ratios.values())
    ttft["ratio_note"] = (
        "pooled: per round, the mean TTFT over every n_draft >= 1 divided by plain's; median over rounds"
    )


# --------------------------------------------------------------------- console summary
def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _level_table(lv: dict[str, Any]) -> list[str]:
    head = (
        f"  {'n_draft':>7} {'tok/s':>6} {'min-max':>11} {'speedup':>7} {'ideal':>6} {'effic.':>6} "
        f"{'accept':>6} {'tok/it':>6} {'verify':>7} {'V/plain':>7} {'draft':>6} {'flat':>5} {'sessMB':>6}"
    )
    out = [f"{lv['name']}  (nominal acceptance {lv['nominal_acceptance']}; times in us)", head]
    rss = lv.get("session_anon_rss_bytes", {})
    for k, r in lv["rows"].items():
        t = r["tokens_per_sec"]
        mb = rss[k] / 2**20 if rss.get(k) is not None else None
        out.append(
            f"  {k:>7} {_fmt(t['median'], '6.1f')} {_fmt(t['min'], '5.1f')}-{_fmt(t['max'], '<5.1f')} "
            f"{_fmt(r['speedup'], '7.2f')} {_fmt(r['ideal_speedup'], '6.2f')} "
            f"{_fmt(r['efficiency'], '6.2f')} {_fmt(r['acceptance_rate'], '6.3f')} "
            f"{_fmt(r['tokens_per_iter'], '6.2f')} {_fmt(r['verify_batch_us'], '7.0f')} "
            f"{_fmt(r['verify_over_plain_step'], '7.2f')} {_fmt(r['draft_step_us'], '6.0f')} "
            f"{_fmt(r['ideal_speedup_flat_verify'], '5.2f')} {_fmt(mb, '6.0f')}"
        )
    return out


def format_summary(result: dict[str, Any]) -> str:
    """The human-readable report printed at the end of a run."""
    lines: list[str] = []
    if result.get("chat") or result.get("streams"):
        lines += _md_chat(result["chat"]) if result.get("chat") else _md_streams(result["streams"])
        lines.append("targets:")
        for name, v in result["targets"].items():
            flag = {True: "PASS", False: "FAIL", None: "n/a "}[v["pass"]]
            lines.append(f"  [{flag}] {name}: {v['measured']} ({v.get('threshold', '')})")
        return "\n".join(lines)
    if result.get("upstream_only"):
        lines += _md_upstream(result.get("upstream") or {})
        lines.append("targets:")
        for name, v in result["targets"].items():
            flag = {True: "PASS", False: "FAIL", None: "n/a "}[v["pass"]]
            lines.append(f"  [{flag}] {name}: {v['measured']} ({v.get('note', '')})")
        return "\n".join(lines)
    for lv in result["levels"]:
        lines += _level_table(lv)
        lines.append("")
    a, s, c, t = result["async_layer"], result["stats_latency"], result["company"], result["ttft"]
    lines.append(
        f"async layer (n_draft={a['n_draft']}): asyncio/native {a['asyncio_over_native']:.3f}, "
        f"trio/native {a['trio_over_native']:.3f}"
    )
    lines.append(
        f"stats() latency: task p50/p99/max {s['from_task']['p50_us']}/{s['from_task']['p99_us']}/"
        f"{s['from_task']['max_us']} us; thread {s['from_thread']['p50_us']}/"
        f"{s['from_thread']['p99_us']}/{s['from_thread']['max_us']} us"
    )
    lines.append(f"idle company (ratio vs alone): {c['ratio_vs_alone']}")
    lines.append(
        f"time to first token ({t['prompt_tokens']} tokens): MTP/plain {t['mtp_over_plain']} "
        f"(worst n_draft {t['worst_mtp_over_plain']})"
    )
    lines.append("targets:")
    for name, v in result["targets"].items():
        flag = {True: "PASS", False: "FAIL", None: "n/a "}[v["pass"]]
        lines.append(f"  [{flag}] {name}: {v['measured']}")
    return "\n".join(lines)


# --------------------------------------------------------------------- markdown
def _md_level(lv: dict[str, Any]) -> list[str]:
    out = [
        f"**{lv['name']}** (nominal per-token acceptance {lv['nominal_acceptance']}; "
        f"plain step {lv['costs']['plain_step_us'] / 1000:.1f} ms)",
        "",
        "| n_draft | tok/s (min-max) | speedup | ideal | efficiency | acceptance | tok/iter "
        "| verify ms (x plain) | draft step ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k, r in lv["rows"].items():
        t = r["tokens_per_sec"]
        verify = r["verify_batch_us"] / 1000 if r["verify_batch_us"] else None
        draft = r["draft_step_us"] / 1000 if r["draft_step_us"] else None
        out.append(
            f"| {k} | {t['median']:.1f} ({t['min']:.1f}-{t['max']:.1f}) | {_fmt(r['speedup'], '.2f')} "
            f"| {_fmt(r['ideal_speedup'], '.2f')} | {_fmt(r['efficiency'], '.2f')} "
            f"| {_fmt(r['acceptance_rate'], '.3f')} | {_fmt(r['tokens_per_iter'], '.2f')} "
            f"| {_fmt(verify, '.1f')} ({_fmt(r['verify_over_plain_step'], '.2f')}) "
            f"| {_fmt(draft, '.2f')} |"
        )
    return [*out, ""]


def _ratio_span(r: dict[str, Any] | None) -> str:
    """A summarized ratio as "median (min-max)"."""
    return f"{r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f})" if r else "-"


def _md_upstream(up: dict[str, Any]) -> list[str]:
    if not up.get("available"):
        return []
    out = [
        "**upstream llama-server** (decode tok/s, median; ratio = median of per-round "
        "mtpstream/upstream, min-max)",
        "",
        "| level | n_draft | llama-server | mtpstream | ratio (min-max) | whole request, speed ratio "
        "| server acceptance | mtpstream acceptance | expected |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, cells in up["levels"].items():
        for k, c in cells.items():
            if "error" in c:
                out.append(f"| {name} | {k} | error: {c['error']} | | | | | | |")
                continue
            out.append(
                f"| {name} | {k} | {c['upstream_tokens_per_sec']['median']:.1f} "
                f"| {c['mtpstream_tokens_per_sec']['median']:.1f} "
                f"| {_ratio_span(c.get('mtpstream_over_upstream_rounds'))} "
                f"| {_ratio_span(c.get('request_speed_over_upstream_rounds'))} "
                f"| {_fmt(c['upstream_acceptance_rate'], '.3f')} "
                f"| {_fmt(c.get('mtpstream_acceptance_rate'), '.3f')} "
                f"| {_fmt(c.get('expected_acceptance_rate'), '.3f')} |"
            )
    pooled = upstream_pooled(up)
    return [*out, "", *([_pooled_text(pooled).capitalize(), ""] if pooled else [])]


def _md_summary(result: dict[str, Any]) -> list[str]:
    """One line per level: median decode tok/s per n_draft, and the best fixed n_draft."""
    keys = list(result["levels"][0]["rows"]) if result["levels"] else []
    head = ["k=0 (plain)" if k == "0" else k if k == "auto" else f"k={k}" for k in keys]
    out = [
        "| level | " + " | ".join(head) + " | best fixed vs plain | auto vs plain |",
        "|---" * (len(keys) + 3) + "|",
    ]
    for lv in result["levels"]:
        cells = []
        for k in keys:
            r = lv["rows"].get(k)
            t = r["tokens_per_sec"] if r else None
            cells.append("-" if t is None else f"{t['median']:.1f}")
        best = lv["best_n_draft"]
        best_txt = "-" if best is None else f"{_fmt(lv['best_speedup'], '.2f')}x (k={best})"
        auto = lv["rows"].get("auto")
        auto_txt = "-" if auto is None else f"{_fmt(auto['speedup'], '.3f')}x"
        out.append(f"| {lv['name']} | " + " | ".join(cells) + f" | {best_txt} | {auto_txt} |")
    return [*out, ""]


def _md_streams(st: dict[str, Any]) -> list[str]:
    """Aggregate tok/s (median of rounds) and per-stream latency per level and stream count."""
    lines = [
        f"streams: n_draft={st['n_draft']}, {st['tokens_per_stream']} tokens per stream; aggregate tok/s "
        "(median of rounds), batched = n_seq=N, single = n_seq=1 (calls queue), "
        "upstream = llama-server -np N",
        "",
        "| level | N | batched | single | upstream | snapshots | batched/single | batched/upstream "
        "| batched/snapshots | ideal | efficiency "
        "| TTFT p50 ms | inter-token p50/p99 ms | acceptance per stream (batched; single; upstream) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, cells in st["levels"].items():
        for n, c in cells.items():
            b, s_ = c["batched"], c["single"]
            u = c.get("upstream")
            bu = c.get("batched_over_upstream_rounds")
            rp, ru = c.get("batched_snapshots"), c.get("batched_over_snapshots_rounds")

            def acc(side: dict[str, Any] | None) -> str:
                if not side or side["per_stream_acceptance"]["min"] is None:
                    return "-"
                a = side["per_stream_acceptance"]
                return f"{a['min']:.3f}-{a['max']:.3f}"

            lines.append(
                f"| {name} | {n} | {b['aggregate_tokens_per_sec']['median']} | "
                f"{s_['aggregate_tokens_per_sec']['median']} | "
                f"{u['aggregate_tokens_per_sec']['median'] if u else '-'} | "
                f"{rp['aggregate_tokens_per_sec']['median'] if rp else '-'} | "
                f"{c['batched_over_single_rounds']['median']:.3f} | {bu['median'] if bu else '-'} | "
                f"{ru['median'] if ru else '-'} | "
                f"{b.get('ideal_tokens_per_sec', {}).get('median', '-')} | {b.get('efficiency', '-')} | "
                f"{b['ttft_ms_p50']} | {b['inter_token_ms_p50']}/{b['inter_token_ms_p99']} | "
                f"{acc(b)}; {acc(s_)}; {acc(u)} |"
            )
    return lines


def markdown(result: dict[str, Any]) -> str:
    """The grid and the targets as Markdown tables (for benchmarks/README.md)."""
    if result.get("chat"):
        lines = _md_chat(result["chat"])
    elif result.get("streams"):
        lines = _md_streams(result["streams"])
    else:
        lines = [] if result.get("upstream_only") else _md_summary(result)
    for lv in result["levels"]:
        lines += _md_level(lv)
    lines += _md_upstream(result.get("upstream") or {})
    lines += ["| target | threshold | measured | pass |", "|---|---|---|---|"]
    for name, v in result["targets"].items():
        flag = {True: "PASS", False: "**FAIL**", None: "n/a"}[v["pass"]]
        lines.append(f"| {name} | {v['threshold']} | `{json.dumps(v['measured'])}` | {flag} |")
    return "\n".join(lines)


# --------------------------------------------------------------------- plot and JSON
def _import_pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(result: dict[str, Any], path: Path, log: Callable[[str], None]) -> Path | None:
    """Speedup vs n_draft, one line per acceptance level, the ideal bound dashed."""
    try:
        plt = _import_pyplot()
    except ImportError:
        log("note: matplotlib is not installed; skipping the plot (pip install matplotlib)")
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, lv in enumerate(result["levels"]):
        ks = sorted(int(k) for k in lv["rows"] if k.isdigit())
        rows = [lv["rows"][str(k)] for k in ks]
        color = f"C{i}"
        speed = [r["speedup"] for r in rows]
        err = [
            [r["speedup"] - r["speedup_min"] for r in rows],
            [r["speedup_max"] - r["speedup"] for r in rows],
        ]
        ideal = [r["ideal_speedup"] for r in rows]
        ax.errorbar(ks, speed, yerr=err, fmt="o-", color=color, capsize=3, label=f"{lv['name']} measured")
        ax.plot(ks, ideal, "--", color=color, alpha=0.7, label=f"{lv['name']} ideal")
        flat = [r["ideal_speedup_flat_verify"] for r in rows]
        ax.plot(ks, flat, ":", color=color, alpha=0.5, label=f"{lv['name']} if verify were flat")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel("n_draft")
    ax.set_ylabel("decode speedup vs plain (n_draft=0)")
    ax.set_title(
        f"mtpstream MTP speedup vs plain ({result['settings']['tokens']} tokens; "
        f"median of {result['settings']['runs']} paired rounds, min-max bars)",
        fontsize=9,
    )
    ax.legend(fontsize=6, ncol=3)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_json(result: dict[str, Any], path: Path) -> Path:
    """Write ``result`` as indented JSON (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(path)
    return path
