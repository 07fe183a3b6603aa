"""Decode speed of two builds of mtpstream, interleaved: before/after a change.

Each build is a directory holding an importable ``mtpstream`` package with its built
``_native`` extension (e.g. ``git archive REV`` + the extension copied from a build of
it). Every round runs one process per build and model, in an order that flips each
round, and each process measures every configuration (n_draft x n_seq, in an order
that rotates) after a warm-up: engine-clock decode tok/s (``stats().tokens_per_sec``,
prefill excluded) and the delivered tok/s of the calls (first token to last, all
streams together). Reported: per configuration the median over rounds of the
after/before ratio of rounds, and each build's median.

    python scripts/ab_speed.py BEFORE_DIR AFTER_DIR --size bench small --rounds 5
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

CONFIGS = [(0, 1), (3, 1), (0, 4), (3, 4)]  # (n_draft, n_seq)


def worker(
    src: str, model_path: str, tokens: int, rotate: int, threads: int, deps: str, rollback: str
) -> None:
    """Measure every configuration with the package in `src` (run with python -S: the
    dependencies come from `deps`, without the editable install's .pth)."""
    sys.path.insert(0, src)
    sys.path.append(deps)
    import anyio

    import mtpstream

    assert Path(mtpstream.__file__).is_relative_to(src), mtpstream.__file__
    model = mtpstream.load_model(model_path)
    configs = CONFIGS[rotate % len(CONFIGS) :] + CONFIGS[: rotate % len(CONFIGS)]
    out: dict[str, Any] = {}

    async def calls(mtp: mtpstream.MTP, n_seq: int) -> float:
        prompts = [[1 + 7 * i + j for j in range(16)] for i in range(n_seq)]
        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for p in prompts:
                tg.start_soon(functools.partial(mtp.generate, p, max_tokens=tokens))
        return time.perf_counter() - t0

    for n_draft, n_seq in configs:
        opts: dict[str, Any] = {"n_ctx": 512, "n_seq": n_seq, "flash_attn": False}
        if threads:
            opts["n_threads"] = threads
        if rollback:
            opts["rollback"] = rollback
        with mtpstream.init(model, n_draft=n_draft, **opts) as mtp:
            anyio.run(calls, mtp, n_seq)  # warm-up (graph allocation, caches)
            before = mtp.stats()
            wall = anyio.run(calls, mtp, n_seq)
            st = mtp.stats()
        decoded = (st.tokens_emitted - before.tokens_emitted) - n_seq
        t_us = st.timing_us.total - before.timing_us.total
        out[f"{n_draft},{n_seq}"] = {
            "engine_tok_s": decoded / (t_us / 1e6),
            "wall_tok_s": (st.tokens_emitted - before.tokens_emitted) / wall,
            "acceptance": st.acceptance_rate,
        }
    model.close()
    print(json.dumps(out))


def model_path(size: str, head: str) -> str:
    from mtpstream.testing import make_model

    return str(make_model(arch="qwen35", weights="oracle", size=size, mtp_error_rate=0.25, head=head))  # type: ignore[arg-type]


def run(build: str, path: str, tokens: int, rotate: int, threads: int, rollback: str) -> dict[str, Any]:
    deps = sysconfig.get_paths()["purelib"]
    cmd = [
        sys.executable,
        "-S",
        __file__,
        "--worker",
        build,
        path,
        str(tokens),
        str(rotate),
        str(threads),
        deps,
        rollback,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--size", nargs="+", default=["bench", "small"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--head", default="token", help="the oracle head's mode (make_model's head)")
    ap.add_argument("--rollback", default="", help="one rollback for both builds (default: their own)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    builds = {"before": str(Path(a.before).resolve()), "after": str(Path(a.after).resolve())}
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for size in a.size:
        path = model_path(size, a.head)
        rows[size] = {"before": [], "after": []}
        for r in range(a.rounds):
            order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
            for name in order:
                rows[size][name].append(run(builds[name], path, a.tokens, r, a.threads, a.rollback))
            print(f"{size} round {r + 1}/{a.rounds} done", file=sys.stderr)
    summary: dict[str, Any] = {}
    for size, by_build in rows.items():
        for key in (f"{k},{s}" for k, s in CONFIGS):
            cell: dict[str, Any] = {}
            for metric in ("engine_tok_s", "wall_tok_s"):
                b = [x[key][metric] for x in by_build["before"]]
                af = [x[key][metric] for x in by_build["after"]]
                ratios = sorted(y / x for x, y in zip(b, af, strict=True))
                cell[metric] = {
                    "before_median": round(statistics.median(b), 2),
                    "after_median": round(statistics.median(af), 2),
                    "ratio_median": round(statistics.median(ratios), 4),
                    "ratio_min": round(ratios[0], 4),
                    "ratio_max": round(ratios[-1], 4),
                }
            summary[f"{size} n_draft,n_seq={key}"] = cell
    result = {"rounds": a.rounds, "tokens": a.tokens, "builds": builds, "summary": summary, "raw": rows}
    text = json.dumps(result, indent=1)
    if a.out:  # a file, or a directory for ab-speed-<time>.json
        dst = a.out / f"ab-speed-{time.strftime('%Y%m%d-%H%M%S')}.json" if a.out.is_dir() else a.out
        dst.write_text(text + "\n")
        print(f"wrote {dst}")
    for name, cell in summary.items():
        e, w = cell["engine_tok_s"], cell["wall_tok_s"]
        print(
            f"{name:28s} engine {e['before_median']:8.2f} -> {e['after_median']:8.2f} tok/s "
            f"x{e['ratio_median']:.3f} [{e['ratio_min']:.3f}, {e['ratio_max']:.3f}]   "
            f"wall x{w['ratio_median']:.3f} [{w['ratio_min']:.3f}, {w['ratio_max']:.3f}]"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(
            sys.argv[2],
            sys.argv[3],
            int(sys.argv[4]),
            int(sys.argv[5]),
            int(sys.argv[6]),
            sys.argv[7],
            sys.argv[8] if len(sys.argv) > 8 else "",
        )
    else:
        main()
