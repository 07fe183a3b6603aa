"""Benchmark analysis: per-level speedups, the ideal bound, the targets and their
verdicts, pooled comparisons with llama-server.

Private to :mod:`mtpstream.bench`. Works on the JSON-able dictionaries the
measurements produce, so a saved result can be re-analysed.
"""

from __future__ import annotations

import statistics
from typing import Any

from .env import bootstrap_median_ci, paired_ratios

__all__ = [
    "IDEAL_METHOD",
    "TARGET_THRESHOLDS",
    "add_derived",
    "evaluate_targets",
    "judge",
    "pooled_text",
    "reanalyze",
    "ttft_ratios",
    "upstream_pooled",
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
    note = pooled_text(pooled) if pooled else ""
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


def pooled_text(pooled: dict[str, Any]) -> str:
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
    if result.get("upstream_only") or result.get("streams") or result.get("chat") or result.get("temps"):
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


def _t_temps(section: dict[str, Any]) -> dict[str, Any]:
    """Temperature 0.8 on the soft oracle, per n_seq: rejection >= 1.3x match in accepted
    drafts per verify, >= 1.1x llama-server in tok/s (n/a without a 0.8 cell or the server)."""
    targets: dict[str, Any] = {}
    for c in section["cells"]:
        if c["temp"] != 0.8:
            continue
        n = c["n_seq"]
        acc, up = c["rejection_over_match_accepted"], c["rejection_over_upstream_tok_s"]
        targets[f"temp0.8_n{n}_rejection_over_match_accepted"] = {
            "measured": acc,
            "pass": None if acc is None else acc >= 1.3,
            "threshold": ">= 1.3",
        }
        targets[f"temp0.8_n{n}_rejection_over_upstream_tok_s"] = {
            "measured": up,
            "pass": None if up is None else up >= 1.1,
            "threshold": ">= 1.1 (llama-server, --with-upstream)",
        }
    return targets


def evaluate_targets(result: dict[str, Any]) -> dict[str, Any]:
    """Every target of the issue, with measured figures and a pass flag (None: not measurable)."""
    targets: dict[str, Any] = {}
    if result.get("chat"):
        return _t_chat(result)
    if result.get("temps"):
        return _t_temps(result["temps"])
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
