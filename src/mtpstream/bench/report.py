"""Benchmark output: the terminal summary, Markdown, the plot and the JSON file.

Private to :mod:`mtpstream.bench`. The analysis (derived figures, targets) lives in
:mod:`.targets`; its public names are re-exported here for the runner.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .targets import (
    IDEAL_METHOD,
    TARGET_THRESHOLDS,
    add_derived,
    evaluate_targets,
    judge,
    pooled_text,
    reanalyze,
    ttft_ratios,
    upstream_pooled,
)

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
    "upstream_pooled",
    "write_json",
]

_log = logging.getLogger(__name__)


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
    if result.get("chat") or result.get("streams") or result.get("temps"):
        if result.get("temps"):
            from .temps import format_table

            lines += format_table(result["temps"])
        else:
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
    return [*out, "", *([pooled_text(pooled).capitalize(), ""] if pooled else [])]


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
    elif result.get("temps"):
        from .temps import format_table

        lines = ["```", *format_table(result["temps"]), "```", ""]
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


def _import_pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(result: dict[str, Any], path: Path) -> Path | None:
    """Speedup vs n_draft, one line per acceptance level, the ideal bound dashed."""
    try:
        plt = _import_pyplot()
    except ImportError:
        _log.info("note: matplotlib is not installed; skipping the plot (pip install matplotlib)")
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
