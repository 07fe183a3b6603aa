"""The stats field list of native/stats.hpp (bound as ``_native.STATS_FIELDS``) is
the one description of the session counters: the bound snapshot, the ``.pyi``,
:class:`mtpstream.MTPStats` and the server's ``/metrics`` must all carry every field
of it, and nothing it lacks. A counter added on one side only fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import anyio
import pytest

import mtpstream
from mtpstream import _native
from mtpstream.stats import STATS_FIELDS, MTPStats, StatsField, TimingUs

from conftest import EXACT

PYI = Path(mtpstream.__file__).with_name("_native.pyi")
# MTPStats' fields that come from Python, not from a native counter
DERIVED = {
    "acceptance_rate",
    "tokens_per_sec",
    "timing_us",
    "n_seq",
    "active_sequences",
    "queued",
    "state_bytes",
}
# TimingUs' field that Python derives (total minus the phases)
TIMING_DERIVED = {"other"}


def pyi_class_fields(name: str) -> list[str]:
    """The annotated attributes of one class of the stub, in order."""
    tree = ast.parse(PYI.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return [
                s.target.id
                for s in node.body
                if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
            ]
    raise AssertionError(f"{name} is not in {PYI}")


def metrics_text(stats: MTPStats) -> str:
    pytest.importorskip("fastapi")
    from mtpstream._server_state import Metrics

    class Session:
        def stats(self) -> MTPStats:
            return stats

    return Metrics().render(Session())  # type: ignore[arg-type]


def check_agreement(
    fields: tuple[StatsField, ...], pyi: list[str], stats_model: type[MTPStats], metrics: str
) -> list[str]:
    """Every disagreement between the field list and the other sides."""
    problems: list[str] = []
    names = [f.name for f in fields]
    if pyi != names:
        problems.append(f"_native.pyi StatsSnapshot {pyi} != the field list {names}")
    bound = {n for n in dir(_native.StatsSnapshot) if not n.startswith("_")}
    if bound != set(names):
        problems.append(f"bound StatsSnapshot {sorted(bound)} != the field list")
    counters = {f.name for f in fields if f.kind != "time"}
    timings = {f.timing_key for f in fields if f.kind == "time"}
    model_fields = set(stats_model.model_fields) - DERIVED
    if model_fields != counters:
        problems.append(
            f"MTPStats lacks {sorted(counters - model_fields)}, has extra {sorted(model_fields - counters)}"
        )
    timing_fields = set(TimingUs.model_fields) - TIMING_DERIVED
    if timing_fields != timings:
        problems.append(
            f"TimingUs lacks {sorted(timings - timing_fields)}, has extra {sorted(timing_fields - timings)}"
        )
    exported = set(re.findall(r"^mtpstream_(\w+) ", metrics, re.M))
    for f in fields:
        if f.metric not in exported:
            problems.append(f"/metrics lacks mtpstream_{f.metric} ({f.name})")
    return problems


def test_the_field_list_is_well_formed() -> None:
    assert STATS_FIELDS and len({f.name for f in STATS_FIELDS}) == len(STATS_FIELDS)
    assert len({f.metric for f in STATS_FIELDS}) == len(STATS_FIELDS)
    for f in STATS_FIELDS:
        assert f.kind in ("counter", "gauge", "time"), f
        assert f.help and re.fullmatch(r"[a-z_]+", f.metric), f
        # Prometheus: counters (times included) end in _total, gauges do not
        assert f.metric.endswith("_total") == (f.kind != "gauge"), f
        if f.kind == "time":
            assert f.name.startswith("t_") and f.name.endswith("_us"), f


def test_the_sides_agree_with_the_field_list() -> None:
    assert (
        check_agreement(STATS_FIELDS, pyi_class_fields("StatsSnapshot"), MTPStats, metrics_text(MTPStats()))
        == []
    )


@pytest.mark.parametrize("side", ["list", "pyi", "MTPStats", "metrics"])
def test_a_side_that_lacks_a_field_is_caught(side: str) -> None:
    """The check itself: drop one field from one side and it must complain."""
    fields, pyi, model, metrics = (
        STATS_FIELDS,
        pyi_class_fields("StatsSnapshot"),
        MTPStats,
        metrics_text(MTPStats()),
    )
    victim = next(f for f in STATS_FIELDS if f.name == "rollback_fallbacks")
    if side == "list":
        fields = tuple(f for f in STATS_FIELDS if f is not victim)
    elif side == "pyi":
        pyi = [n for n in pyi if n != victim.name]
    elif side == "MTPStats":
        kept: dict[str, Any] = {
            n: (i.annotation, i) for n, i in MTPStats.model_fields.items() if n != victim.name
        }
        from pydantic import create_model

        model = create_model("Lacking", **kept)  # type: ignore[call-overload]
    else:
        metrics = "\n".join(line for line in metrics.splitlines() if victim.metric not in line)
    assert check_agreement(fields, pyi, model, metrics) != []


def test_a_snapshot_reaches_mtpstats_and_metrics(oracle: mtpstream.Model) -> None:
    """Real counters go through: every non-time field lands on MTPStats under its
    name, every time field in timing_us, and /metrics shows the same values."""

    async def main() -> MTPStats:
        with mtpstream.init(oracle, n_draft=2, n_ctx=256, **EXACT) as mtp:
            await mtp.generate([1, 2, 3, 4, 5], max_tokens=12)
            return mtp.stats()

    st = anyio.run(main)
    assert st.tokens_emitted == 12 and st.iters > 0 and st.drafts_generated > 0 and st.timing_us.total > 0
    assert st.n_draft == 2 and st.prompt_tokens == 5
    values = {f.metric: f.value(st) for f in STATS_FIELDS}
    assert values["tokens_total"] == 12 and values["verify_microseconds_total"] == st.timing_us.verify
    text = metrics_text(st)
    for metric, value in values.items():
        assert re.search(rf"^mtpstream_{metric} {value}$", text, re.M), metric
