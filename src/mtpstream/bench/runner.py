"""``mtpstream bench``: MTP vs plain decoding, the ideal bound, and the cost of the async layer.

For every acceptance level (by default the ``bench``-size synthetic model with
oracle weights at 100%, 75% and 50% per-token draft agreement, plus random
weights) and every ``n_draft``, generations run through the public API and are
timed by the engine's own clock (``stats()``), interleaved round by round so drift
hits every cell alike;
each cell reports the median decode tokens/s of ``--runs`` runs after a warm-up
(with min-max), acceptance, tokens per iteration, the engine's ``timing_us``
breakdown and peak RSS. From the engine's own timings it derives the cost of a
plain decode step, of a (k+1)-token verify batch and of a draft step, the ideal
speedup at the measured acceptance, and the efficiency (measured / ideal).

On the ~100% level it also measures time to first token on a 512-token prompt,
the async layer ((a) the engine's own time, (b) ``async for`` under asyncio, (c)
under trio),
``stats()`` latency while a stream runs (from a task and from a thread), and the
decode speed of one session with 0, 1 and 3 idle sessions alive on the model.

Results: ``<out>/bench-<time>[-quick].json`` (machine, versions, settings, every
figure, the targets with pass/fail flags) and a PNG plot next to it.
``--quick`` is a smoke check (the ``tiny`` synthetic models, n_draft 0/1/3, 3
runs of 48 tokens): it shows the JSON is complete, not how fast anything is.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .. import MTP, InvalidOptionError, Model, MTPError, load_model
from . import env, report
from . import measure as meas
from . import reference as ref_meas
from .console import print_summary, progress_handler

__all__ = ["BenchConfig", "main", "progress_on_stderr", "run"]

# (level name, weights, mtp_error_rate): per-token draft agreement 1.0, 0.75, 0.5, random.
# Oracle levels use heads that read what real heads read (--head, default "hidden");
# the names carry the head: "hidden-a0.75".
_DEFAULT_LEVELS: tuple[tuple[str, str, float], ...] = (
    ("a1.00", "oracle", 0.0),
    ("a0.75", "oracle", 0.25),
    ("a0.50", "oracle", 0.5),
    ("random", "random", 0.0),
)


@dataclass(frozen=True)
class _Defaults:
    n_drafts: tuple[int, ...]
    runs: int
    warmup: int
    tokens: int


_FULL = _Defaults(n_drafts=(0, 1, 2, 3, 4, 5, 6), runs=5, warmup=1, tokens=128)
_QUICK = _Defaults(n_drafts=(0, 1, 3), runs=3, warmup=1, tokens=48)
_TTFT_PROMPT_TOKENS = 512
_CHAT_HISTORY = 2000
_CHAT_TURN = 30


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run: what to measure, on which models, where to write."""

    settings: meas.Settings
    model: Path | None
    size: str
    arch: str
    out: Path
    quick: bool
    plot: bool
    with_upstream: bool
    head: str = "hidden"
    upstream_only: bool = False
    streams: tuple[int, ...] = ()
    chat: bool = False
    temps: tuple[float, ...] = ()
    temps_streams: tuple[int, ...] = (1, 4)


_log = logging.getLogger(__name__)


@contextlib.contextmanager
def progress_on_stderr() -> Iterator[None]:
    """Print the bench's progress (the ``mtpstream.bench`` loggers, INFO and up) on
    stderr, stamped with the seconds since entry; only there, not to the root logger."""
    logger = logging.getLogger(__package__ or "mtpstream.bench")
    handler = progress_handler(sys.stderr)
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


class _Measured(Protocol):
    def as_json(self) -> dict[str, Any]: ...


# --------------------------------------------------------------------- levels
def _synthetic_level(name: str, path: Path) -> meas.Level:
    """A level for a file written by :mod:`mtpstream.testing` (oracle spec when it has one)."""
    from ..testing import load_model as describe_synthetic

    info = describe_synthetic(path)
    if info.spec is None:
        return meas.Level(name=name, weights=info.weights, path=path)
    spec = info.spec
    return meas.Level(
        name=name,
        weights="oracle",
        path=path,
        mtp_error_rate=spec.mtp_error_rate,
        chain_start=spec.chain_start,
        oracle_chain=tuple(spec.chain(spec.chain_start, _TTFT_PROMPT_TOKENS)),
    )


def _default_levels(cfg: BenchConfig) -> list[meas.Level]:
    """Write (or find in the cache) the synthetic models of every default level."""
    from ..testing import make_model

    levels = []
    for base, weights, rate in _DEFAULT_LEVELS:
        t0 = time.perf_counter()
        name = base if weights == "random" else f"{cfg.head}-{base}"
        path = make_model(
            arch=cfg.arch,  # type: ignore[arg-type]
            weights=weights,  # type: ignore[arg-type]
            size=cfg.size,  # type: ignore[arg-type]
            mtp_error_rate=rate,
            head=cfg.head,  # type: ignore[arg-type]
        )
        _log.info(f"model {name}: {path.name} ({time.perf_counter() - t0:.1f} s)")
        levels.append(_synthetic_level(name, path))
    return levels


def _user_level(path: Path) -> meas.Level:
    """The single level of a user-supplied GGUF."""
    try:
        return _synthetic_level(path.stem, path)
    except (ValueError, KeyError, OSError):
        return meas.Level(name=path.stem, weights="file", path=path)


def _ref_level(levels: Sequence[meas.Level]) -> meas.Level:
    """Where the async layer, TTFT, stats() and company are measured: the ~100% level
    (the most tokens/s, so the async layer's per-token cost shows most), else the first."""
    return next((lv for lv in levels if lv.nominal_acceptance == 1.0), levels[0])


# --------------------------------------------------------------------- one level
def _open_sessions(
    model: Model, prompt: Sequence[int], settings: meas.Settings
) -> tuple[dict[meas.DraftKey, MTP], dict[str, Any], dict[str, int]]:
    """A warm session per n_draft, plus ``"auto"`` when this build supports it.

    Also returns whether "auto" is available and each session's memory: the growth
    of the process's anonymous resident memory (contexts, caches, buffers; the model's
    weights are shared and mmapped) over opening it and running its warm-up.
    """
    sessions: dict[meas.DraftKey, MTP] = {}
    rss: dict[str, int] = {}
    auto = {"available": True, "reason": ""}
    keys: list[meas.DraftKey] = [*settings.n_drafts, "auto"]
    try:
        for k in keys:
            env.trim_heap()
            before = env.anon_rss_bytes()
            try:
                session = meas.open_session(model, k, settings)
            except InvalidOptionError as exc:
                if k != "auto":
                    raise
                auto = {"available": False, "reason": str(exc)}
                continue
            sessions[k] = session
            for _ in range(settings.warmup):
                meas.run_engine(session, prompt, settings.tokens)
            rss[meas.draft_label(k)] = env.anon_rss_bytes() - before
    except BaseException:
        for session in sessions.values():
            session.close()
        raise
    return sessions, auto, rss


def _with_load(fn: Callable[[], _Measured], level: meas.Level) -> dict[str, Any]:
    """Run one measurement; its JSON tagged with the level and the machine's load meanwhile."""
    cpu0 = env.CpuSnapshot.take()
    out = fn().as_json()
    out["level"] = level.name
    out["machine_load"] = env.CpuSnapshot.take().since(cpu0)
    return out


def _ref_measurements(
    model: Model, level: meas.Level, sessions: dict[meas.DraftKey, MTP], cfg: BenchConfig
) -> dict[str, Any]:
    """TTFT, async layer and stats() latency on the reference level's sessions."""
    s = cfg.settings
    prompt = meas.generation_prompt(level, model)
    long = meas.long_prompt(level, model, s.ttft_prompt_tokens)
    fixed: dict[meas.DraftKey, MTP] = {k: v for k, v in sessions.items() if k != "auto"}
    ref = sessions[s.ref_n_draft]
    _log.info(f"  time to first token ({s.ttft_prompt_tokens}-token prompt)")
    ttft = _with_load(lambda: ref_meas.ttft_grid(fixed, long, s), level)
    report.ttft_ratios(ttft)
    _log.info(f"  async layer (n_draft={s.ref_n_draft}): native / asyncio / trio")
    async_layer = _with_load(lambda: ref_meas.async_layer(ref, prompt, s), level)
    _log.info("  stats() latency while streaming")
    stats = _with_load(lambda: ref_meas.stats_latency(ref, prompt, s), level)
    return {"ttft": ttft, "async_layer": async_layer, "stats_latency": stats}


def _bench_level(level: meas.Level, cfg: BenchConfig, is_ref: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Grid (and, on the reference level, the other measurements) for one level."""
    t0 = time.perf_counter()
    model = load_model(level.path)
    out: dict[str, Any] = {**level.as_json(), "model_load_s": round(time.perf_counter() - t0, 2)}
    out["n_params"] = model.n_params
    out["model_uses_mmap"] = model.uses_mmap
    extra: dict[str, Any] = {}
    cpu0 = env.CpuSnapshot.take()
    try:
        prompt = meas.generation_prompt(level, model)
        out["prompt_tokens"] = len(prompt)
        sessions, out["auto"], out["session_anon_rss_bytes"] = _open_sessions(model, prompt, cfg.settings)
        try:
            keys = ", ".join(meas.draft_label(k) for k in sessions)
            s = cfg.settings
            _log.info(f"level {level.name}: n_draft {keys}; {s.runs} runs x {s.tokens} tokens")
            samples = meas.grid(sessions, prompt, cfg.settings)
            out["rows"] = {meas.draft_label(k): meas.row_summary(v) for k, v in samples.items()}
            if is_ref:
                extra = _ref_measurements(model, level, sessions, cfg)
        finally:
            for session in sessions.values():
                session.close()
        if is_ref:
            _log.info(f"  idle company: {', '.join(map(str, cfg.settings.company))} idle sessions")
            extra["company"] = _with_load(lambda: ref_meas.company_cost(model, prompt, cfg.settings), level)
    finally:
        model.close()
    out["machine_load"] = env.CpuSnapshot.take().since(cpu0)
    report.add_derived(out)
    return out, extra


# --------------------------------------------------------------------- the run
def _upstream(cfg: BenchConfig, levels: Sequence[meas.Level]) -> dict[str, Any]:
    if not cfg.with_upstream:
        return {"enabled": False}
    from . import upstream as _bench_upstream

    return _bench_upstream.compare(levels, cfg.settings)


def _temps_only(cfg: BenchConfig) -> dict[str, Any]:
    """``--temps``: the sampled-decoding scenario on the soft oracle (or the user's model)."""
    from . import temps as _bench_temps

    section = _bench_temps.run(
        cfg.model, cfg.size, cfg.arch, cfg.settings, cfg.temps, cfg.temps_streams, cfg.with_upstream
    )
    return {"temps": section.as_json()}


def _chat_or_streams_only(cfg: BenchConfig, levels: Sequence[meas.Level]) -> dict[str, Any]:
    """``--chat`` (on the 0.75 level) or ``--streams`` (on the two highest levels)."""
    if cfg.chat:
        from . import chat as _bench_chat

        lv = next((lv for lv in levels if lv.nominal_acceptance == 0.75), levels[0])
        _log.info(f"chat: a conversation to {_CHAT_HISTORY} tokens in {_CHAT_TURN}-token turns, warm vs cold")
        chat = _bench_chat.run(lv, cfg.settings, _CHAT_HISTORY, _CHAT_TURN, cfg.settings.ref_n_draft)
        return {"chat": chat.as_json()}
    from . import streams as _bench_streams

    # the two highest oracle levels (or the user's model): where batching is judged
    chosen = [lv for lv in levels if lv.nominal_acceptance in (1.0, 0.75)] or levels[:1]
    return {
        "streams": _bench_streams.run(
            chosen, cfg.settings, cfg.streams, cfg.settings.ref_n_draft, cfg.with_upstream
        )
    }


def run(cfg: BenchConfig) -> dict[str, Any]:
    """Run every measurement and return the JSON-able result (targets included).

    Progress goes to the ``mtpstream.bench`` loggers (INFO); ``mtpstream bench``
    prints it on stderr (:func:`progress_on_stderr`).
    """
    started = time.perf_counter()
    cpu0 = env.CpuSnapshot.take()
    result: dict[str, Any] = {
        "schema": "mtpstream-bench/1",
        "created_utc": env.utc_now(),
        "quick": cfg.quick,
        "machine": env.machine_info(),
        "versions": env.versions(),
        "settings": {**cfg.settings.as_json(), "model_size": cfg.size, "arch": cfg.arch, "head": cfg.head},
        "upstream_only": cfg.upstream_only,
        "ideal_method": report.IDEAL_METHOD,
    }
    if cfg.temps:
        result.update(_temps_only(cfg), levels=[], upstream={"enabled": False})
        report.judge(result)
        result["wall_s"] = round(time.perf_counter() - started, 1)
        return result
    levels = [_user_level(cfg.model)] if cfg.model else _default_levels(cfg)
    ref = _ref_level(levels)
    result["reference_level"] = ref.name
    result["levels"] = []
    if cfg.chat or cfg.streams:
        result.update(_chat_or_streams_only(cfg, levels), upstream={"enabled": False})
        report.judge(result)
        result["wall_s"] = round(time.perf_counter() - started, 1)
        return result
    for level in levels if not cfg.upstream_only else ():
        out, extra = _bench_level(level, cfg, level is ref)
        result["levels"].append(out)
        result.update(extra)
    result["upstream"] = _upstream(cfg, levels)
    report.judge(result)
    result["machine"]["load_average_end"] = env.load_average()
    result["machine"]["load_during_run"] = load = env.CpuSnapshot.take().since(cpu0)
    if load["foreign_cpu_cores"] > 0.05:
        _log.warning(
            f"warning: other processes used {load['foreign_cpu_cores']:.2f} cores on average "
            "during the run; timings are distorted (re-run on a quiet machine)"
        )
    result["machine"]["peak_rss_bytes_process"] = env.peak_rss_bytes()
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


# --------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mtpstream bench",
        description="Benchmark MTP speculative decoding against plain decoding.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "model",
        nargs="?",
        metavar="MODEL",
        help="a GGUF with an MTP head "
        "(default: the synthetic models, oracle weights at 3 acceptance levels + random)",
    )
    p.add_argument("--quick", action="store_true", help="smoke check in < 2 min (tiny models, fewer runs)")
    p.add_argument(
        "--out",
        default=None,
        help="results directory (default: mtpstream's user data directory, printed at the end)",
    )
    p.add_argument("--check", action="store_true", help="exit with code 1 when a target fails")
    p.add_argument("--n-draft", type=int, nargs="+", metavar="K", help="n_draft values (0 is always added)")
    p.add_argument("--runs", type=int, help="measured runs per cell (default 5; --quick 3)")
    p.add_argument("--warmup", type=int, help="warm-up runs per cell (default 1)")
    p.add_argument("--tokens", type=int, help="tokens per generation (default 128; --quick 48)")
    p.add_argument("--threads", type=int, help="n_threads (default: the CPUs available to this process)")
    p.add_argument(
        "--size",
        choices=("tiny", "small", "bench"),
        help="synthetic model size (default bench; --quick: tiny; small: 32 layers of width 128, "
        "about 1 ms per decode, where per-iteration overhead shows)",
    )
    p.add_argument(
        "--head",
        choices=("hidden", "kv", "kv2", "token"),
        default="hidden",
        help="what the oracle MTP head drafts from (default: %(default)s, the hidden row it is fed)",
    )
    p.add_argument(
        "--upstream-only",
        action="store_true",
        help="with --with-upstream: only the llama-server comparison (no grid, TTFT, async layer)",
    )
    p.add_argument(
        "--streams",
        metavar="N,N,...",
        help="only the many-streams scenario: N concurrent calls on n_seq=N vs n_seq=1 "
        "(and, with --with-upstream, llama-server -np N), e.g. 1,2,4,8",
    )
    p.add_argument(
        "--chat",
        action="store_true",
        help="only the multi-turn chat scenario: a conversation growing to 2,000 tokens in "
        "30-token turns, time to first token with the prompt cache against without",
    )
    p.add_argument(
        "--temps",
        metavar="T,T,...",
        help="only the sampled-decoding scenario on the soft oracle: verify='match' vs 'rejection' "
        "(and llama-server with --with-upstream) at these temperatures, e.g. 0,0.6,0.8,1.0",
    )
    p.add_argument(
        "--temps-streams",
        metavar="N,N,...",
        default="1,4",
        help="with --temps: the n_seq values (concurrent calls) to run (default: %(default)s)",
    )
    p.add_argument("--arch", choices=("qwen35", "qwen35moe"), default="qwen35", help="synthetic model arch")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG plot")
    p.add_argument("--markdown", metavar="JSON", help="print a saved result as Markdown tables and exit")
    p.add_argument(
        "--reanalyze",
        metavar="JSON",
        help="recompute a saved result's derived figures and targets from its raw measurements "
        "with this version's analysis, rewrite the JSON (and plot) in place, print the summary",
    )
    p.add_argument(
        "--with-upstream",
        action="store_true",
        help="also compare with upstream llama-server --spec-type draft-mtp (builds it once)",
    )
    p.add_argument(
        "--rpc",
        nargs="?",
        const="",
        metavar="HOST:PORT,...",
        help="only the RPC scenario: MTP/plain with the layers on these rpc-server workers vs local "
        "(no value: 2 workers started on 127.0.0.1)",
    )
    p.add_argument("--rpc-layers", type=int, help="with --rpc: n_gpu_layers (default: the model's n_layer)")
    p.add_argument(
        "--rpc-threads", type=int, default=None,
        help="with --rpc: threads per started worker (default: --threads, as on machines of their own: "
        "the stages of a split run one after the other)",
    )  # fmt: skip
    p.add_argument(
        "--upstream-load-mode",
        choices=("auto", "none", "mmap"),
        help="llama-server's -lm (default: the server's own, which maps the file; "
        "'none' reads the weights into memory, as mtpstream's load_model does for a model "
        "that fits)",
    )
    return p


def _settings(args: argparse.Namespace) -> meas.Settings:
    base = _QUICK if args.quick else _FULL
    n_drafts = tuple(sorted({0, *(args.n_draft or base.n_drafts)}))
    if any(k < 0 for k in n_drafts) or len(n_drafts) < 2:
        raise InvalidOptionError("--n-draft needs values >= 0, at least one of them >= 1", field="n_draft")
    tokens = int(args.tokens or base.tokens)
    runs = int(args.runs or base.runs)
    if tokens < 2 or runs < 1:
        raise InvalidOptionError("--tokens must be >= 2 and --runs >= 1", field="tokens")
    return meas.Settings(
        n_drafts=n_drafts,
        runs=runs,
        warmup=int(args.warmup if args.warmup is not None else base.warmup),
        tokens=tokens,
        threads=int(args.threads or env.available_cpus()),
        n_ctx=max(2048, _TTFT_PROMPT_TOKENS + 64, tokens + 64),
        ttft_prompt_tokens=_TTFT_PROMPT_TOKENS,
        ref_n_draft=3 if 3 in n_drafts else max(n_drafts),
        upstream_load_mode=args.upstream_load_mode,
    )


def _streams(text: str | None, flag: str = "streams") -> tuple[int, ...]:
    if not text:
        return ()
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise InvalidOptionError(
            f"--{flag.replace('_', '-')} must be comma-separated ints, not {text!r}", field=flag
        ) from None
    if not values or any(not 1 <= v <= 64 for v in values):
        raise InvalidOptionError(f"--{flag.replace('_', '-')} values must be from 1 to 64", field=flag)
    return values


def _default_out() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("mtpstream")) / "bench"


def _config(args: argparse.Namespace) -> BenchConfig:
    from .temps import parse_temps

    return BenchConfig(
        temps=parse_temps(args.temps) if args.temps else (),
        temps_streams=_streams(args.temps_streams, "temps_streams"),
        chat=args.chat,
        streams=_streams(args.streams),
        settings=_settings(args),
        model=Path(args.model) if args.model else None,
        size=args.size or ("tiny" if args.quick else "bench"),
        arch=args.arch,
        out=Path(args.out) if args.out else _default_out(),
        quick=args.quick,
        plot=not args.no_plot,
        with_upstream=args.with_upstream or args.upstream_only,
        head=args.head,
        upstream_only=args.upstream_only,
    )


def _write_outputs(result: dict[str, Any], cfg: BenchConfig) -> Path:
    stem = "bench-" + time.strftime("%Y%m%d-%H%M%S") + ("-quick" if cfg.quick else "")
    cfg.out.mkdir(parents=True, exist_ok=True)
    stem += "-streams" if cfg.streams else ""
    stem += "-chat" if cfg.chat else ""
    stem += "-temps" if cfg.temps else ""
    png = report.plot(result, cfg.out / f"{stem}.png") if cfg.plot and result["levels"] else None
    result["plot"] = str(png) if png else None
    path = report.write_json(result, cfg.out / f"{stem}.json")
    _log.info(f"wrote {path}" + (f" and {png}" if png else ""))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mtpstream bench``; returns the process exit code (0 on success;
    with ``--check``, 1 when a target fails; 2 on an error)."""
    args = _parser().parse_args(argv)
    with progress_on_stderr():
        if args.markdown or args.reanalyze:
            return _saved(args)
        if args.rpc is not None:
            return _rpc(args)
        try:
            cfg = _config(args)
            result = run(cfg)
        except MTPError as exc:
            print(f"mtpstream bench: error: {exc}", file=sys.stderr)
            return 2
        result["command"] = ["mtpstream", "bench", *(argv if argv is not None else sys.argv[1:])]
        _write_outputs(result, cfg)
    print_summary(result, sys.stdout)
    if args.check and not result["all_targets_pass"]:
        failed = [name for name, t in result["targets"].items() if t["pass"] is False]
        print(f"mtpstream bench: targets failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _rpc(args: argparse.Namespace) -> int:
    """``--rpc``: MTP's speedup over plain decoding on RPC workers against local."""
    from .rpc import format_rpc, run_rpc

    try:
        endpoints = [e for e in args.rpc.split(",") if e]
        settings = _settings(args)
        out = Path(args.out) if args.out else _default_out()
        result = run_rpc(settings, Path(args.model) if args.model else None, endpoints, args.rpc_layers,
                         args.rpc_threads or settings.threads, out, args.with_upstream,
                         args.size or ("tiny" if args.quick else "bench"))  # fmt: skip
    except MTPError as exc:
        print(f"mtpstream bench: error: {exc}", file=sys.stderr)
        return 2
    print(format_rpc(result))
    return 1 if args.check and not result["target"]["pass"] else 0


def _saved(args: argparse.Namespace) -> int:
    """``--markdown`` / ``--reanalyze``: a saved result printed, or recomputed in place."""
    path = Path(args.markdown or args.reanalyze)
    try:
        result = report.reanalyze(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"mtpstream bench: error: {path} is not a readable result ({exc!r})", file=sys.stderr)
        return 2
    if args.markdown:
        print(report.markdown(result))
        return 0
    report.write_json(result, path)
    if result.get("plot"):
        report.plot(result, path.with_suffix(".png"))
    print_summary(result, sys.stdout)
    return 1 if args.check and not result["all_targets_pass"] else 0
