"""`mtpstream bench --quick` writes a complete JSON result (the figures are not checked)."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench_keys import key_tree
from mtpstream import bench
from mtpstream.bench import console, report

KEYS_DIR = Path(__file__).parent / "data"

TOP_KEYS = {
    "schema",
    "created_utc",
    "quick",
    "machine",
    "versions",
    "settings",
    "ideal_method",
    "reference_level",
    "levels",
    "ttft",
    "async_layer",
    "stats_latency",
    "company",
    "upstream",
    "targets",
    "all_targets_pass",
    "wall_s",
    "command",
    "plot",
}
MACHINE_KEYS = {
    "cpu_model",
    "cpu_count",
    "cpus_available",
    "load_average_start",
    "load_average_end",
    "load_during_run",
}
VERSION_KEYS = {"python", "mtpstream", "llama-cpp-python"}
SETTINGS_KEYS = {"n_drafts", "runs", "warmup", "tokens", "n_threads", "n_ctx", "ttft_prompt_tokens"}
LEVEL_KEYS = {
    "name",
    "weights",
    "mtp_error_rate",
    "nominal_acceptance",
    "model_path",
    "model_load_s",
    "auto",
    "rows",
    "costs",
    "best_n_draft",
    "best_speedup",
    "efficiency_at_best",
    "session_anon_rss_bytes",
    "machine_load",
    "prompt_tokens",
}
ROW_KEYS = {
    "tokens_per_sec",
    "wall_tokens_per_sec",
    "acceptance_rate",
    "accepted_per_iter",
    "tokens_per_iter",
    "iters",
    "drafts_generated",
    "drafts_accepted",
    "timing_us",
    "timing_us_per_iter",
    "peak_rss_bytes",
    "speedup",
    "ideal_speedup",
    "efficiency",
    "verify_batch_us",
    "draft_step_us",
    "ideal_speedup_flat_verify",
    "foreign_cpu_cores",
    "speedup_min",
    "speedup_max",
    "verify_over_plain_step",
    "runs",
}
TIMING_KEYS = {"draft", "verify", "sample", "ckpt", "other", "total", "prefill"}
SUMMARY_KEYS = {"median", "min", "max", "n", "values"}
TARGET_KEYS = {
    "async_asyncio_over_native",
    "async_trio_over_native",
    "efficiency_at_best_n_draft",
    "full_acceptance_best_over_plain",
    "random_auto_over_plain",
    "stats_p99_us",
    "ttft_mtp_over_plain",
    "idle_company_over_alone",
    "mtpstream_over_upstream",
    "auto_over_best_fixed",
    "acceptance_vs_upstream",
    "auto_over_upstream_default",
}
LATENCY_KEYS = {"n", "p50_us", "p99_us", "max_us"}


def _missing(obj: dict[str, Any], keys: set[str]) -> set[str]:
    return keys - obj.keys()


# by name only: the targets (judged by .targets, whose notes come and go with the
# figures), the machine and the versions (what the host offers, e.g. /proc/loadavg)
_NAMES_ONLY = ("targets", "machine", "versions")


def _names_only(tree: Any) -> Any:
    for key in _NAMES_ONLY:
        if key in tree:
            tree[key] = sorted(tree[key])
    return tree


def _shape(result: dict[str, Any]) -> Any:
    """The result's key tree, the sections of _NAMES_ONLY reduced to their keys."""
    return _names_only(key_tree(result))


def _saved_shape(name: str) -> Any:
    return _names_only(json.loads((KEYS_DIR / f"bench-keys-{name}.json").read_text()))


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("bench")
    assert bench.main(["--quick", "--out", str(out)]) == 0
    files = sorted(out.glob("bench-*-quick.json"))
    assert len(files) == 1
    return json.loads(files[0].read_text()), out


def test_top_level_sections(quick_result: tuple[dict[str, Any], Path]) -> None:
    r, _ = quick_result
    assert not _missing(r, TOP_KEYS)
    assert r["quick"] is True
    assert not _missing(r["machine"], MACHINE_KEYS)
    assert not _missing(r["versions"], VERSION_KEYS)
    assert not _missing(r["settings"], SETTINGS_KEYS)
    assert r["upstream"] == {"enabled": False}


def test_levels_and_rows(quick_result: tuple[dict[str, Any], Path]) -> None:
    r, _ = quick_result
    levels = r["levels"]
    assert [lv["weights"] for lv in levels] == ["oracle", "oracle", "oracle", "random"]
    assert [lv["nominal_acceptance"] for lv in levels[:3]] == [1.0, 0.75, 0.5]
    for lv in levels:
        assert not _missing(lv, LEVEL_KEYS), lv["name"]
        assert {"available", "reason"} <= lv["auto"].keys()
        expected_rows = {str(k) for k in r["settings"]["n_drafts"]}
        if lv["auto"]["available"]:
            expected_rows.add("auto")
        assert set(lv["rows"]) == expected_rows
        for key, row in lv["rows"].items():
            assert not _missing(row, ROW_KEYS), (lv["name"], key)
            assert not _missing(row["timing_us"], TIMING_KEYS)
            assert not _missing(row["tokens_per_sec"], SUMMARY_KEYS)
            assert row["tokens_per_sec"]["n"] == r["settings"]["runs"]
            assert row["tokens_per_sec"]["median"] > 0
        assert lv["rows"]["0"]["speedup"] == 1.0
        assert lv["costs"]["plain_step_us"] > 0
        assert lv["best_n_draft"] is not None
        assert lv["efficiency_at_best"] is not None


def test_reference_measurements(quick_result: tuple[dict[str, Any], Path]) -> None:
    r, _ = quick_result
    ttft = r["ttft"]
    assert ttft["prompt_tokens"] == 512
    assert {str(k) for k in r["settings"]["n_drafts"]} == set(ttft["by_n_draft"])
    assert ttft["mtp_over_plain"] is not None
    a = r["async_layer"]
    assert set(a["modes"]) == {"native", "asyncio", "trio"}
    assert a["asyncio_over_native"] > 0 and a["trio_over_native"] > 0
    # the three consumers saw the same generation
    assert len({tuple(m["completion_tokens"]) for m in a["modes"].values()}) == 1
    for src in ("from_task", "from_thread"):
        assert not _missing(r["stats_latency"][src], LATENCY_KEYS)
        assert r["stats_latency"][src]["n"] > 0
    assert set(r["company"]["ratio_vs_alone"]) == {"0", "1", "3"}
    for section in ("ttft", "async_layer", "stats_latency", "company"):
        assert {"foreign_cpu_cores", "steal_cores"} <= r[section]["machine_load"].keys(), section


def test_json_keys_are_those_of_the_dict_era(quick_result: tuple[dict[str, Any], Path]) -> None:
    """The results became dataclasses; the JSON they write has the same keys at every
    depth as a --quick result written before (tests/data/bench-keys-quick.json)."""
    r, _ = quick_result
    assert _shape(r) == _saved_shape("quick")


def test_progress_goes_to_stderr_stamped(capsys: pytest.CaptureFixture[str]) -> None:
    """The bench logs through ``logging``; the CLI prints those lines on stderr exactly
    as before (``[   12.3s] message``), and nowhere else (not to the root logger)."""
    seen: list[str] = []

    class Root(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    root = Root()
    logging.getLogger().addHandler(root)
    try:
        with bench.progress_on_stderr():
            logging.getLogger("mtpstream.bench.measure").info("    round 1/3  tok/s k=0:1.0")
        logging.getLogger("mtpstream.bench.measure").warning("after: not printed")
    finally:
        logging.getLogger().removeHandler(root)
    err = capsys.readouterr().err
    assert re.fullmatch(r"\[ {4}\d\.\ds\]     round 1/3  tok/s k=0:1\.0\n", err), err
    assert seen == ["after: not printed"]  # propagation is back after the block, and only then


def test_progress_on_a_terminal_is_dim_stamped(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With FORCE_COLOR (a terminal) the stamp is dim and a warning yellow; NO_COLOR wins."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("FORCE_COLOR", "1")
    log = logging.getLogger("mtpstream.bench.measure")
    with bench.progress_on_stderr():
        log.info("round 1/3")
        log.warning("machine busy")
    err = capsys.readouterr().err
    assert re.search(r"\x1b\[2m\[ {4}\d\.\ds\] \x1b\[0m.*round 1/3", err), repr(err)
    assert re.search(r"\x1b\[33m.*machine busy", err), repr(err)
    monkeypatch.setenv("NO_COLOR", "1")
    with bench.progress_on_stderr():
        log.info("round 2/3")
    assert re.fullmatch(r"\[ {4}\d\.\ds\] round 2/3\n", capsys.readouterr().err)
    assert not logging.getLogger("mtpstream.bench").handlers


def test_chat_and_upstream_results_keep_their_keys() -> None:
    """The scenarios the quick run does not reach: their dataclasses write the keys the
    dicts had (chat's turns and summary, one llama-server comparison cell)."""
    from mtpstream.bench.chat import ChatResult, ChatTurn
    from mtpstream.bench.upstream import UpstreamCell

    turn = ChatTurn(0, 1500, 1400, 5.0, 50.0, 10.0, True)
    chat = ChatResult("a0.75", 3, 30, 2000, [turn], {"checkpoints": 1}).as_json()
    assert set(chat) == {"level", "n_draft", "turn_tokens", "history_tokens", "turns", "at_1500", "divergent"}
    assert set(chat["turns"][0]) == {
        "turn",
        "prompt_tokens",
        "cached_tokens",
        "ttft_warm_ms",
        "ttft_cold_ms",
        "cold_over_warm",
        "same_answer",
    }
    assert chat["at_1500"] == {
        "turns": [0],
        "ttft_warm_ms": 5.0,
        "ttft_cold_ms": 50.0,
        "cold_over_warm": 10.0,
    }
    cell = UpstreamCell(
        upstream_tps=[50.0, 50.0],
        ours_tps=[51.0, 52.0],
        delivered_tps=[49.0, 50.0],
        upstream_ms=[100.0, 100.0],
        ours_ms=[90.0, 95.0],
        upstream_drafts=10,
        upstream_accepted=9,
        ours_drafts=0,
    ).as_json()
    assert set(cell) == {
        "upstream_tokens_per_sec",
        "upstream_acceptance_rate",
        "mtpstream_acceptance_rate",
        "mtpstream_snapshots_acceptance_rate",
        "expected_acceptance_rate",
        "mtpstream_uses_mmap",
        "mtpstream_tokens_per_sec",
        "mtpstream_over_upstream",
        "mtpstream_over_upstream_rounds",
        "mtpstream_delivered_tokens_per_sec",
        "delivered_over_upstream_rounds",
        "upstream_request_ms",
        "mtpstream_request_ms",
        "request_speed_over_upstream_rounds",
    }
    assert cell["upstream_acceptance_rate"] == 0.9 and cell["mtpstream_acceptance_rate"] is None
    assert cell["mtpstream_over_upstream"] == pytest.approx(1.03)


def test_chat_scenario_on_a_short_conversation() -> None:
    """The chat scenario end to end, on a conversation short enough for a test: warm
    turns reuse the history, and the section has the keys the dict version wrote."""
    from mtpstream.bench import chat, measure
    from mtpstream.testing import make_model

    path = make_model(arch="qwen35", weights="oracle", size="tiny", mtp_error_rate=0.25)
    settings = measure.Settings(
        n_drafts=(0, 3),
        runs=1,
        warmup=0,
        tokens=8,
        threads=2,
        n_ctx=512,
        ttft_prompt_tokens=64,
        ref_n_draft=3,
    )
    level = measure.Level(name="a0.75", weights="oracle", path=path)
    out = chat.run(level, settings, history_tokens=130, turn_tokens=30, k=3).as_json()
    assert set(out) == {"level", "n_draft", "turn_tokens", "history_tokens", "turns", "at_1500", "divergent"}
    turns = out["turns"]
    assert len(turns) >= 2 and [t["turn"] for t in turns] == list(range(len(turns)))
    assert turns[0]["cached_tokens"] == 0 and turns[1]["cached_tokens"] > 0
    assert out["at_1500"] is None  # no turn near 1,500 tokens
    assert set(out["divergent"]) == {"regenerate", "edit_reply", "checkpoints", "checkpoint_bytes"}


def test_targets_have_flags(quick_result: tuple[dict[str, Any], Path]) -> None:
    r, _ = quick_result
    assert set(r["targets"]) == TARGET_KEYS
    for name, t in r["targets"].items():
        assert {"target", "threshold", "measured", "pass"} <= t.keys(), name
        assert t["pass"] in (True, False, None), name
    assert isinstance(r["all_targets_pass"], bool)


def test_plot_written_or_skipped(quick_result: tuple[dict[str, Any], Path]) -> None:
    r, _ = quick_result
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert r["plot"] is None
    else:
        assert r["plot"] is not None and Path(r["plot"]).stat().st_size > 0


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    assert bench.main(["--quick", "--out", str(tmp_path), "--tokens", "1"]) == 2


def test_upstream_rows_are_judged_and_tabulated() -> None:
    """The llama-server comparison (only run with --with-upstream: it builds the server)
    is judged per n_draft on the pooled rounds: a K falls short only when the 95%
    bootstrap interval of its median ratio lies wholly below 1. Acceptance must match
    the server's within 0.02, and "auto" must beat the server's defaults by 5%."""
    from mtpstream.bench import targets

    def cell(ours: list[float], up: list[float], acc: tuple[float, float] | None = None) -> dict[str, Any]:
        ratios = [o / u for o, u in zip(ours, up, strict=True)]
        s = sorted(ratios)
        return {
            "upstream_tokens_per_sec": {"median": sorted(up)[1]},
            "mtpstream_tokens_per_sec": {"median": sorted(ours)[1]},
            "upstream_acceptance_rate": acc[1] if acc else None,
            "mtpstream_acceptance_rate": acc[0] if acc else None,
            "expected_acceptance_rate": acc[0] if acc else None,
            "mtpstream_over_upstream": s[1],
            "mtpstream_over_upstream_rounds": {"median": s[1], "min": s[0], "max": s[2], "values": ratios},
        }

    up = {
        "available": True,
        "levels": {
            "hidden-a1.00": {
                "0": cell([30, 31, 29], [30, 30, 30]),
                "3": cell([50, 52, 51], [50, 50, 50], (0.9, 0.9)),
                "auto": cell([60, 61, 62], [50, 50, 50]),
            }
        },
    }
    result = {"upstream": up}
    verdict = targets._t_upstream(result)
    assert verdict["pass"] is True  # k=0 straddles 1, k=3 above
    assert verdict["measured"]["3"] == pytest.approx(1.02)
    assert "auto" not in verdict["measured"]
    # one round above 1: the interval reaches 1, within noise
    up["levels"]["hidden-a1.00"]["0"] = cell([29.5, 30.5, 29.7], [30, 30, 30])
    assert targets._t_upstream(result)["pass"] is True
    # every round below 1: the interval lies below 1
    up["levels"]["hidden-a1.00"]["0"] = cell([29, 29.5, 29.9], [30, 30, 30])
    verdict = targets._t_upstream(result)
    assert verdict["pass"] is False
    assert "K wholly below 1: 0" in verdict["note"]
    assert targets._t_upstream({"upstream": {"enabled": False}})["pass"] is None

    assert targets._t_upstream_acceptance(result)["pass"] is True
    up["levels"]["hidden-a1.00"]["3"] = cell([50, 52, 51], [50, 50, 50], (0.87, 0.9))
    assert targets._t_upstream_acceptance(result)["pass"] is False
    assert targets._t_auto_upstream(result)["measured"] == {"hidden-a1.00": 1.22}
    assert targets._t_auto_upstream(result)["pass"] is True
    up["levels"]["hidden-a1.00"]["auto"] = cell([51, 52, 53], [50, 50, 50])
    assert targets._t_auto_upstream(result)["pass"] is False

    table = report._md_upstream(up)
    assert any(line.startswith("| hidden-a1.00 | 3 | 50.0 | 51.0 | 1.020 (1.000-1.040) |") for line in table)
    # every round of the fixed-K rows pooled: 29/30, 29.5/30, 29.9/30, 50/50, 52/50, 51/50
    pooled = report.upstream_pooled(up)
    assert pooled["rounds"] == 6
    assert pooled["median"] == pytest.approx((29.9 / 30 + 1.0) / 2, abs=1e-4)
    assert pooled["by_n_draft"]["0"] == pytest.approx(29.5 / 30, abs=1e-4)
    lo, hi = pooled["ci95_by_n_draft"]["0"]
    assert lo <= 29.5 / 30 <= hi < 1
    assert any(line.startswith("Pooled rounds (6)") for line in table)


def test_saved_result_reanalyzes_to_the_same_targets(
    quick_result: tuple[dict[str, Any], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--reanalyze recomputes derived figures from the raw runs: on a fresh result it
    changes nothing; --markdown prints tables; an unreadable file is a clear error."""
    r, _ = quick_result
    copy = tmp_path / "copy.json"
    copy.write_text(json.dumps(r))
    assert bench.main(["--reanalyze", str(copy)]) == 0
    assert json.loads(copy.read_text())["targets"] == r["targets"]
    assert bench.main(["--markdown", str(copy)]) == 0
    assert "| level | k=0 (plain) |" in capsys.readouterr().out
    assert bench.main(["--markdown", str(tmp_path / "missing.json")]) == 2
    assert "not a readable result" in capsys.readouterr().err


def test_summary_is_plain_in_a_log_and_rich_on_a_terminal(
    quick_result: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    """The summary a run prints: plain text (no escape codes) when stdout is not a
    terminal or NO_COLOR is set; rich tables and coloured PASS/FAIL with FORCE_COLOR."""
    r, _ = quick_result
    copy = tmp_path / "look.json"
    copy.write_text(json.dumps(r))
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR")}

    def summary(**extra: str) -> str:
        cmd = [sys.executable, "-m", "mtpstream", "bench", "--reanalyze", str(copy)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**env, **extra})
        assert p.returncode == 0, p.stderr
        return p.stdout

    plain = summary()
    assert "\x1b[" not in plain and plain == report.format_summary(report.reanalyze(r)) + "\n"
    assert summary(FORCE_COLOR="1", NO_COLOR="1") == plain
    rich = summary(FORCE_COLOR="1", COLUMNS="200")
    assert "\x1b[" in rich and "━" in rich  # a rich table's rule
    text = re.sub(r"\x1b\[[0-9;]*m", "", rich)
    level = r["levels"][0]
    assert f"{level['name']}  (nominal acceptance" in text
    for name in ("n_draft", "tok/s", "speedup", "accept", "verify us"):
        assert name in text
    for k, cells in zip(level["rows"], console.level_cells(level), strict=True):
        assert re.search(r"\s+".join(re.escape(c) for c in cells), text), k
    flags = {"PASS": "32", "FAIL": "31"}  # green, red
    for t in r["targets"].values():
        if t["pass"] is not None:
            flag = "PASS" if t["pass"] else "FAIL"
            assert re.search(rf"\x1b\[[0-9;]*{flags[flag]}m\[{flag}\]", rich)


def test_check_exits_1_exactly_when_a_target_fails(
    quick_result: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    _result, out = quick_result
    copy = tmp_path / "check.json"
    copy.write_text(next(out.glob("bench-*.json")).read_text())
    code = bench.main(["--reanalyze", str(copy), "--check"])
    assert code == (0 if json.loads(copy.read_text())["all_targets_pass"] else 1)


def test_streams_scenario_writes_its_figures(tmp_path: Path) -> None:
    assert (
        bench.main(["--quick", "--streams", "1,2", "--runs", "1", "--out", str(tmp_path), "--no-plot"]) == 0
    )
    (path,) = tmp_path.glob("bench-*-streams.json")
    data = json.loads(path.read_text())
    assert _shape(data) == _saved_shape("streams")  # the keys of the dict era
    cell = data["streams"]["levels"]["hidden-a1.00"]["2"]
    for side in ("batched", "batched_snapshots", "single"):
        assert cell[side]["aggregate_tokens_per_sec"]["median"] > 0
        assert cell[side]["ttft_ms_p50"] is not None
    assert cell["batched"]["efficiency"] > 0
    assert cell["batched_over_snapshots_rounds"]["median"] > 0
    assert set(data["targets"]) == {
        "streams_batched_over_single",
        "streams_batched_over_upstream",
        "streams_efficiency",
        "streams_acceptance_vs_single",
    }
    assert bench.main(["--streams", "0", "--out", str(tmp_path)]) == 2


def test_the_bench_uses_only_the_public_api() -> None:
    """Every name the bench takes from mtpstream is public (in ``mtpstream.__all__``, or
    the public ``mtpstream.testing``): no private module (but the command line's
    terminal styling, ``_console``), no bench-only hook."""
    import ast

    import mtpstream

    pkg = Path(bench.__file__).parent
    seen = 0
    for path in sorted(pkg.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                seen += 1
                target = node.module or ""
                if target:
                    # _console: the terminal's look the CLI shares (rich or plain), no API
                    assert target in ("testing", "_console"), f"{path.name} imports mtpstream.{target}"
                else:
                    private = [a.name for a in node.names if a.name not in mtpstream.__all__]
                    assert not private, f"{path.name} imports {private} from mtpstream"
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mtpstream."):
                assert node.module in ("mtpstream.testing", "mtpstream.bench"), (path.name, node.module)
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_run_native"):
                raise AssertionError(f"{path.name} calls {node.attr}")
    assert seen >= 5  # the scan did see the bench's imports


def test_temps_scenario_compares_the_verify_modes(tmp_path: Path) -> None:
    """``--temps`` on the tiny soft oracle: every (temperature, n_seq) cell has both
    verify modes' tok/s and accepted drafts per verify; at 0.8 rejection keeps more
    drafts per verify than match (expected 2.04 vs 0.99 at the bench's error rate 0.25,
    n_draft 3, so 16 tokens x 4 streams leave a wide margin)."""
    argv = ["--temps", "0,0.8", "--size", "tiny", "--runs", "1", "--tokens", "16"]
    assert bench.main([*argv, "--out", str(tmp_path), "--no-plot"]) == 0
    (path,) = tmp_path.glob("bench-*-temps.json")
    data = json.loads(path.read_text())
    temps = data["temps"]
    assert set(temps) == {"model", "mtp_error_rate", "n_draft", "tokens_per_stream", "runs", "cells"}
    assert [(c["temp"], c["n_seq"]) for c in temps["cells"]] == [(0.0, 1), (0.8, 1), (0.0, 4), (0.8, 4)]
    side_keys = {
        "tokens_per_sec",
        "accepted_per_verify",
        "verifies",
        "drafts_per_verify",
        "verify_fallbacks",
        "expected_accepted_per_verify",
    }
    for cell in temps["cells"]:
        assert "upstream" not in cell and cell["rejection_over_upstream_tok_s"] is None
        for side in ("match", "rejection"):
            assert set(cell[side]) == side_keys
            assert cell[side]["tokens_per_sec"]["median"] > 0
            assert cell[side]["verify_fallbacks"] == 0
    hot = [c for c in temps["cells"] if c["temp"] == 0.8]
    for cell in hot:
        assert (
            cell["rejection"]["accepted_per_verify"]["median"]
            >= cell["match"]["accepted_per_verify"]["median"]
        )
    pooled = sum(c["rejection_over_match_accepted"] for c in hot) / len(hot)
    assert pooled >= 1.2
    assert set(data["targets"]) == {
        "temp0.8_n1_rejection_over_match_accepted",
        "temp0.8_n1_rejection_over_upstream_tok_s",
        "temp0.8_n4_rejection_over_match_accepted",
        "temp0.8_n4_rejection_over_upstream_tok_s",
    }
    assert data["targets"]["temp0.8_n1_rejection_over_upstream_tok_s"]["pass"] is None
    assert bench.main(["--temps", "0,hot", "--out", str(tmp_path)]) == 2
