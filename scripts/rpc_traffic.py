"""What one decode iteration costs on the wire, per RPC command: ours (plain and
n_draft MTP) against llama-server --rpc (plain and --spec-type draft-mtp), counted
by a relay in front of each of two loopback workers (``mtpstream.testing.rpc_counter``).

Same model (bench-size synthetic qwen35, all layers offloaded: main / worker 1 /
worker 2), same prompt, greedy, same token count. Each side runs a warm-up
generation, one of half the tokens (the base) and the measured one; the
per-iteration figures are (measured - base) / (its iterations - the base's), so
prefill, session setup and what happens at a generation's start and end cancel out
(llama-server runs with ``--cache-ram 0``: its slot cache saves the previous task's
whole state, megabytes of GET_TENSOR growing with that task's length, when a task
starts). Iterations: ours from ``mtp.stats().iters``; llama-server's are its target
decodes after the first token, ``predicted_n - 1 - draft_n_accepted``.

    .venv/bin/python scripts/rpc_traffic.py [--tokens 64] [--n-draft 3]
        [--only ours|upstream] [--log 60] [--label before]

Prints one table per side (per iteration: count, request bytes, response bytes,
round trips, per worker), a summary, and writes
benchmarks/results/rpc-traffic-<time>[-label].json.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio

import mtpstream
from mtpstream.bench import upstream
from mtpstream.bench.report import write_json
from mtpstream.testing import make_model, rpc_workers
from mtpstream.testing.rpc_counter import LogEntry, Relay, Tally, diff, wait_quiet

PROMPT = "The quiet river carried"
N_CTX = 1024

Counts = list[dict[str, Tally]]  # per worker
CpuClock = Callable[[], list[float]]  # CPU ms so far of the main process and each worker


def _ticks(stat: Path) -> int:
    """utime + stime of a /proc stat file, in clock ticks."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _cpu_ms(pid: int, exclude: frozenset[int] | set[int] = frozenset()) -> float:
    """CPU ms of process ``pid`` (all its threads; without the threads in ``exclude``)."""
    total = _ticks(Path(f"/proc/{pid}/stat"))
    for tid in exclude:
        with contextlib.suppress(OSError):
            total -= _ticks(Path(f"/proc/{pid}/task/{tid}/stat"))
    return total * 1000 / os.sysconf("SC_CLK_TCK")


def _clock(main: int, workers: list[Any], relays: list[Relay]) -> CpuClock:
    """CPU ms of ``main`` (without the relays' threads when it is this process) and of
    the workers."""
    pids = [w.proc.pid for w in workers]

    def read() -> list[float]:
        skip = set().union(*(r.thread_ids for r in relays)) if main == os.getpid() else set()
        return [_cpu_ms(main, skip), *(_cpu_ms(p) for p in pids)]

    return read


def _server_pid(port: int) -> int:
    """The pid of the llama-server listening on ``port`` (from /proc's command lines)."""
    for d in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            if (
                d.name.isdigit()
                and b"--port" in cmd
                and str(port).encode() in cmd
                and b"llama-server" in cmd[0]
            ):
                return int(d.name)
    raise RuntimeError(f"no llama-server on port {port}")


def _snap(relays: list[Relay]) -> Counts:
    wait_quiet(relays)
    return [r.snapshot() for r in relays]


def _delta(a: Counts, b: Counts) -> Counts:
    return [diff(x, y) for x, y in zip(a, b, strict=True)]


def _per_iter(meas: Counts, base: Counts, iters: int) -> list[dict[str, dict[str, float]]]:
    """(measured - base) per iteration, per worker and command."""
    out = []
    for m, b in zip(meas, base, strict=True):
        w: dict[str, dict[str, float]] = {}
        for cmd in sorted(set(m) | set(b)):
            t = m.get(cmd, Tally()).minus(b.get(cmd, Tally()))
            if t.count or t.round_trips:
                w[cmd] = {k: round(v / iters, 2) for k, v in vars(t).items()}
        out.append(w)
    return out


def _measured(
    relays: list[Relay],
    run: Callable[[int], tuple[int, dict[str, Any]]],
    cpu: CpuClock,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Warm-up, a run of half the tokens (the base) and the measured run; ``run(n)``
    generates n tokens and returns (iterations, facts)."""
    run(args.tokens)
    s0, c0 = _snap(relays), cpu()
    it_base, _ = run(args.tokens // 2)
    s1, c1 = _snap(relays), cpu()
    for r in relays:
        r.start_log()
    it_meas, facts = run(args.tokens)
    s2, c2 = _snap(relays), cpu()
    logs = sorted((e for r in relays for e in r.take_log()), key=lambda e: e.t_ns)
    base, meas = _delta(s1, s0), _delta(s2, s1)
    iters = it_meas - it_base
    return {
        "iterations": iters,
        "iterations_base_run": it_base,
        "tokens_base_run": args.tokens // 2,
        **facts,
        "per_iteration": _per_iter(meas, base, iters),
        # CPU ms per iteration of the main process (ours: without the relays' threads)
        # and of each worker; load on the machine shows in these too
        "cpu_ms_per_iteration": [
            round(((z - y) - (y - x)) / iters, 1) for x, y, z in zip(c0, c1, c2, strict=True)
        ],
        "base_run_totals": [{k: vars(v) for k, v in w.items()} for w in base],
        "log_middle": [_log_row(e) for e in _window(logs, args.log, args.log_start)],
    }


def _window(logs: list[LogEntry], n: int, start: str) -> list[LogEntry]:
    """``n`` commands from the middle of ``logs``, from the first whose detail holds
    ``start`` (an iteration's first command: the target's input to worker 1)."""
    mid = len(logs) // 2
    at = next((i for i in range(mid, len(logs)) if start in logs[i].detail), mid)
    return logs[at : at + n]


def _log_row(e: LogEntry) -> str:
    rsp = f" -> {e.response_bytes} B" if e.response_bytes else ""
    return f"w{e.worker + 1} {e.cmd:<16} {e.request_bytes:>7} B{rsp}  {e.detail}"


# ------------------------------------------------------------------ ours
def _ours(
    model: mtpstream.Model, k: int, relays: list[Relay], cpu: CpuClock, args: argparse.Namespace
) -> dict[str, Any]:
    prompt = model.tokenize(PROMPT, add_special=True)
    with mtpstream.init(model, n_draft=k, n_ctx=N_CTX, rollback="snapshots", n_threads=2) as mtp:

        def run(n: int) -> tuple[int, dict[str, Any]]:
            st0 = mtp.stats()
            out = anyio.run(functools.partial(mtp.generate, prompt, max_tokens=n))
            st1 = mtp.stats()
            facts = {
                "tokens": st1.tokens_emitted - st0.tokens_emitted,
                "drafts": st1.drafts_generated - st0.drafts_generated,
                "accepted": st1.drafts_accepted - st0.drafts_accepted,
                "text": out[:80],
            }
            return st1.iters - st0.iters, facts

        return _measured(relays, run, cpu, args)


def _run_ours(path: Path, workers: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    relays = [Relay("127.0.0.1", w.port, i) for i, w in enumerate(workers)]
    n_layer = mtpstream.load_model(path).n_layer
    eps = [r.endpoint for r in relays]
    model = mtpstream.load_model(path, rpc=eps, n_gpu_layers=n_layer, mtp_local=args.mtp_local)
    out = {}
    try:
        for k in (0, args.n_draft):
            out[f"ours-k{k}"] = _ours(model, k, relays, _clock(os.getpid(), workers, relays), args)
    finally:
        # free the split model while its workers run (ggml aborts when it cannot send the frees)
        model.close()
        del model
        gc.collect()
    for r in relays:
        r.close()
    return out


# ------------------------------------------------------------------ llama-server
@contextlib.contextmanager
def _server(exe: Path, path: Path, relays: list[Relay], ngl: int, k: int) -> Iterator[int]:
    args = ["-m", str(path), "-t", "2", "-tb", "2", "-c", str(N_CTX), "-np", "1", "--no-webui"]
    args += ["--rpc", ",".join(r.endpoint for r in relays), "-ngl", str(ngl)]
    # no slot cache in RAM: it saves the previous task's whole state when a task starts
    args += ["--cache-ram", "0"]
    if k > 0:
        args += ["--spec-type", "draft-mtp", "--spec-draft-n-max", str(k)]
    with upstream.launched(exe, args) as port:
        yield port


def _upstream(
    exe: Path, path: Path, prompt: list[int], k: int, workers: list[Any], ngl: int, args: argparse.Namespace
) -> dict[str, Any]:
    relays = [Relay("127.0.0.1", w.port, i) for i, w in enumerate(workers)]
    with _server(exe, path, relays, ngl, k) as port:
        cpu = _clock(_server_pid(port), workers, relays)

        def run(n: int) -> tuple[int, dict[str, Any]]:
            t = upstream.complete(port, prompt, n)
            acc = int(t.get("draft_n_accepted", 0))
            facts = {"tokens": int(t["predicted_n"]), "drafts": int(t.get("draft_n", 0)), "accepted": acc}
            return int(t["predicted_n"]) - 1 - acc, facts

        out = _measured(relays, run, cpu, args)
    for r in relays:
        r.close()
    return out


def _run_upstream(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    exe = Path.home() / ".cache/mtpstream/upstream/build-rpc/bin/llama-server"
    local = mtpstream.load_model(path)
    prompt, ngl = local.tokenize(PROMPT, add_special=True), local.n_layer
    local.close()
    out = {}
    for k in (0, args.n_draft):
        # fresh workers per server: a worker serves one client, and keeps its buffers until it goes
        with rpc_workers(2) as workers:
            out[f"upstream-k{k}"] = _upstream(exe, path, prompt, k, workers, ngl, args)
    return out


# ------------------------------------------------------------------ report
def _table(name: str, side: dict[str, Any]) -> str:
    w = side["per_iteration"]
    cmds = sorted(set(w[0]) | set(w[1]))
    lines = [
        f"{name}: {side['iterations']} iterations, {side['tokens']} tokens, "
        f"drafts {side['accepted']}/{side['drafts']} accepted",
        f"  {'command':<16}" + "".join(f"| w{i + 1} n   req B  rsp B trips " for i in range(2)),
    ]
    for cmd in cmds:
        row = f"  {cmd:<16}"
        for x in w:
            t = x.get(cmd, {})
            row += (
                f"| {t.get('count', 0):5.2f} {t.get('request_bytes', 0):7.0f} "
                f"{t.get('response_bytes', 0):6.0f} {t.get('round_trips', 0):5.2f} "
            )
        lines.append(row)
    lines.append(
        f"  {'total':<16}"
        + "".join(
            f"| {_sum(x, 'count'):5.2f} {_sum(x, 'request_bytes'):7.0f} {_sum(x, 'response_bytes'):6.0f} "
            f"{_sum(x, 'round_trips'):5.2f} "
            for x in w
        )
    )
    lines += [f"    {row}" for row in side["log_middle"]]
    return "\n".join(lines)


def _sum(w: dict[str, dict[str, float]], key: str) -> float:
    return sum(t.get(key, 0) for t in w.values())


def _summary(result: dict[str, Any]) -> str:
    lines = [
        "per iteration:            round trips w1/w2   bytes sent w1/w2      bytes received w1/w2"
        "   CPU ms main/w1/w2"
    ]
    for name, side in result.items():
        w = side["per_iteration"]
        lines.append(
            f"  {name:<12} {_sum(w[0], 'round_trips'):8.2f} /{_sum(w[1], 'round_trips'):6.2f}"
            f"   {_sum(w[0], 'request_bytes'):8.0f} /{_sum(w[1], 'request_bytes'):8.0f}"
            f"   {_sum(w[0], 'response_bytes'):8.0f} /{_sum(w[1], 'response_bytes'):8.0f}"
            f"   {' / '.join(f'{x:.1f}' for x in side['cpu_ms_per_iteration'])}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=("tiny", "small", "bench"), default="bench")
    ap.add_argument("--mtp-local", action="store_true", help="ours with load_model(mtp_local=True)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--n-draft", type=int, default=3)
    ap.add_argument("--only", choices=("ours", "upstream"))
    ap.add_argument(
        "--log", type=int, default=0, help="print N commands from the middle of each measured run"
    )
    ap.add_argument("--log-start", default="ffn_out-1", help="the log window starts at a command naming this")
    ap.add_argument("--label", default="")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    path = make_model(arch="qwen35", weights="oracle", size=args.size, mtp_error_rate=0.25)
    result: dict[str, Any] = {}
    if args.only != "upstream":
        with rpc_workers(2) as workers:
            result |= _run_ours(path, workers, args)
    if args.only != "ours":
        result |= _run_upstream(path, args)
    for name, side in result.items():
        print(_table(name, side), flush=True)
    print(_summary(result))
    stem = "rpc-traffic-" + time.strftime("%Y%m%d-%H%M%S") + (f"-{args.label}" if args.label else "")
    out = args.out / f"{stem}.json"
    doc = {
        "script": "scripts/rpc_traffic.py",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": str(path),
        "prompt": PROMPT,
        "tokens": args.tokens,
        "n_draft": args.n_draft,
        "label": args.label,
        "argv": sys.argv[1:],
        "sides": result,
    }
    print(f"wrote {write_json(doc, out)}")


if __name__ == "__main__":
    main()
