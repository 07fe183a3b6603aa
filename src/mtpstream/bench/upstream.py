"""Optional comparison with upstream ``llama-server --spec-type draft-mtp``.

Private to :mod:`mtpstream.bench`. Builds ``llama-server`` once from the
llama.cpp vendored in the llama-cpp-python 0.3.36 sdist (see
:mod:`mtpstream.testing.llama_cpp_source`: fetched into the cache when absent), then,
per level and ``n_draft``, runs the same greedy generation on the server and
on mtpstream, alternating run by run so drift hits both sides alike.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import socket
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import MTP, Model, load_model
from ..testing import llama_cpp_source
from .env import paired_ratios, summarize
from .measure import (
    DraftKey,
    Level,
    Settings,
    delivered_decode_tps,
    generation_prompt,
    open_session,
    run_engine,
)

__all__ = ["compare", "launched", "server", "server_binary"]

_log = logging.getLogger(__name__)

_PACKAGE = llama_cpp_source.PACKAGE
_VERSION = llama_cpp_source.VERSION
_HEALTH_TIMEOUT_S = 180.0
# side order of each round: 0 llama-server, 1 mtpstream native, 2 mtpstream delivered
_ORDERS = ((0, 1, 2), (1, 2, 0), (2, 0, 1))
_PAUSE_S = 0.2


def _cache_root() -> Path:
    return llama_cpp_source.cache_root()


def _run(cmd: Sequence[str], cwd: Path | None = None) -> None:
    _log.info("    $ " + " ".join(cmd))
    subprocess.run(list(cmd), cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def _server_binary(root: Path, threads: int, rpc: bool = False) -> Path:
    """Build ``llama-server`` (once; ``rpc``: with the RPC backend, in its own build
    directory) and return its path."""
    build = root / ("build-rpc" if rpc else "build")
    exe = build / "bin" / "llama-server"
    if exe.exists():
        return exe
    src = llama_cpp_source.source_dir(lambda m: _log.info(f"  {m}"))
    _log.info(f"  building llama-server from {src} (once; several minutes)")
    if shutil.which("cmake") is None:
        raise RuntimeError("cmake is required for --with-upstream")
    _run(
        [
            "cmake",
            "-S",
            str(src),
            "-B",
            str(build),
            "-DCMAKE_BUILD_TYPE=Release",
            "-DLLAMA_BUILD_SERVER=ON",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_CURL=OFF",
            "-DBUILD_SHARED_LIBS=OFF",
            *(["-DGGML_RPC=ON"] if rpc else []),
        ],
    )
    _run(["cmake", "--build", str(build), "--target", "llama-server", "-j", str(threads)])
    return exe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(port: int, path: str, body: dict[str, Any] | None = None, timeout: float = 600) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _wait_healthy(proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + _HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited with code {proc.returncode}")
        with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            if _request(port, "/health", timeout=2).get("status") == "ok":
                return
        time.sleep(0.25)
    raise RuntimeError("llama-server did not become healthy in time")


def server_binary(settings: Settings, rpc: bool = False) -> Path:
    """llama-server built from the pinned llama-cpp-python's llama.cpp (built once, cached;
    ``rpc``: with the RPC backend)."""
    root = _cache_root()
    root.mkdir(parents=True, exist_ok=True)
    return _server_binary(root, settings.threads, rpc)


@contextlib.contextmanager
def launched(exe: Path, args: Sequence[str]) -> Iterator[int]:
    """``exe`` (a llama-server) run with ``args`` on a free loopback port, once it says
    it is healthy; yields the port and stops the server on exit.

    Raises:
        RuntimeError: the server exited or did not become healthy in time.
    """
    port = _free_port()
    cmd = [str(exe), *args, "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_healthy(proc, port)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def server(
    exe: Path, model: Path, k: DraftKey, settings: Settings, n_parallel: int = 1
) -> contextlib.AbstractContextManager[int]:
    """A running llama-server (a context manager yielding its port) for ``model`` with
    ``k`` MTP drafts (0: no speculation; ``"auto"``: ``--spec-type draft-mtp`` alone,
    what a user gets by default) and ``n_parallel`` slots of ``settings.n_ctx`` tokens
    each."""
    t = str(settings.threads)
    args = ["-m", str(model), "-t", t, "-tb", t, "-c", str(settings.n_ctx * n_parallel)]
    args += ["-np", str(n_parallel), "--no-webui"]
    if settings.flash_attn is not None:
        args += ["-fa", "on" if settings.flash_attn else "off"]
    if settings.upstream_load_mode is not None:
        args += ["-lm", settings.upstream_load_mode]
    if k == "auto":
        args += ["--spec-type", "draft-mtp"]
    elif k > 0:
        args += ["--spec-type", "draft-mtp", "--spec-draft-n-max", str(k)]
    return launched(exe, args)


def complete(port: int, prompt: Sequence[int], tokens: int) -> dict[str, Any]:
    """One greedy completion; the server's ``timings`` block."""
    body = {
        "prompt": list(prompt),
        "n_predict": tokens,
        "temperature": 0.0,
        "top_k": 1,
        "cache_prompt": False,
        "ignore_eos": False,
        "stream": False,
    }
    timings: dict[str, Any] = _request(port, "/completion", body)["timings"]
    return timings


def _expected_acceptance(level: Level, prompt: Sequence[int], k: DraftKey, tokens: int) -> float | None:
    """The oracle's exact acceptance for this request with llama-server's schedule (k
    drafts every iteration: rollback="snapshots"); None: not an oracle level, or "auto"."""
    if level.weights != "oracle" or k == "auto" or k == 0:
        return None
    from ..testing import expected_acceptance

    try:
        res = expected_acceptance(level.path, prompt, n_draft=int(k), n_tokens=tokens, rollback="snapshots")
    except (ValueError, KeyError, OSError):
        return None
    return round(res.acceptance_rate, 4)


@dataclass
class UpstreamCell:
    """Upstream vs mtpstream at one (level, n_draft): every measured run of each side."""

    upstream_tps: list[float] = field(default_factory=list)
    ours_tps: list[float] = field(default_factory=list)
    delivered_tps: list[float] = field(default_factory=list)
    """Ours as an ``async for`` consumer sees it."""
    upstream_ms: list[float] = field(default_factory=list)
    """Whole request: prompt + generation."""
    ours_ms: list[float] = field(default_factory=list)
    upstream_drafts: int = 0
    upstream_accepted: int = 0
    ours_drafts: int = 0
    ours_accepted: int = 0
    snapshots_acceptance: float | None = None
    expected_acceptance: float | None = None
    uses_mmap: bool | None = None

    def as_json(self) -> dict[str, Any]:
        """The cell's JSON (one ``upstream.levels[level][n_draft]``)."""
        paired = paired_ratios(self.ours_tps, self.upstream_tps)
        return {
            "upstream_tokens_per_sec": summarize(self.upstream_tps, 2),
            "upstream_acceptance_rate": _rate(self.upstream_accepted, self.upstream_drafts),
            "mtpstream_acceptance_rate": _rate(self.ours_accepted, self.ours_drafts),
            "mtpstream_snapshots_acceptance_rate": self.snapshots_acceptance,
            "expected_acceptance_rate": self.expected_acceptance,
            "mtpstream_uses_mmap": self.uses_mmap,
            "mtpstream_tokens_per_sec": summarize(self.ours_tps, 2),
            "mtpstream_over_upstream": paired["median"],
            "mtpstream_over_upstream_rounds": paired,
            "mtpstream_delivered_tokens_per_sec": summarize(self.delivered_tps, 2),
            "delivered_over_upstream_rounds": paired_ratios(self.delivered_tps, self.upstream_tps),
            "upstream_request_ms": summarize(self.upstream_ms, 1),
            "mtpstream_request_ms": summarize(self.ours_ms, 1),
            # speed ratio of the whole request (prompt included): upstream time / ours
            "request_speed_over_upstream_rounds": paired_ratios(self.upstream_ms, self.ours_ms),
        }

    def log_line(self, level: str, k: DraftKey) -> str:
        paired = paired_ratios(self.ours_tps, self.upstream_tps)
        delivered = paired_ratios(self.delivered_tps, self.upstream_tps)
        return (
            f"    {level} k={k}: upstream {statistics.median(self.upstream_tps):.1f} tok/s, "
            f"mtpstream {statistics.median(self.ours_tps):.1f} tok/s (paired {paired['median']:.3f}x, "
            f"{paired['min']:.3f}-{paired['max']:.3f}), delivered to asyncio "
            f"{statistics.median(self.delivered_tps):.1f} tok/s ({delivered['median']:.3f}x)"
        )


def _rate(accepted: int, drafts: int) -> float | None:
    return round(accepted / drafts, 4) if drafts else None


def _measure(cell: UpstreamCell, port: int, ours: MTP, prompt: Sequence[int], settings: Settings) -> None:
    """Warm both sides up, then ``settings.runs`` rounds of the three sides into ``cell``."""
    for _ in range(settings.warmup):
        complete(port, prompt, settings.tokens)
        run_engine(ours, prompt, settings.tokens)
    for _ in range(settings.warmup):
        delivered_decode_tps(ours, prompt, settings.tokens)
    for r in range(settings.runs):
        # rotate the three sides so each is first, middle and last equally often
        # and none follows itself (a run right after its own kind finds its
        # threads warm and the other process's still spinning down); pause
        # between requests so the previous one's threads are idle
        for side in _ORDERS[r % len(_ORDERS)]:
            time.sleep(_PAUSE_S)
            if side == 0:
                t = complete(port, prompt, settings.tokens)
                cell.upstream_tps.append(float(t["predicted_per_second"]))
                cell.upstream_ms.append(float(t["prompt_ms"]) + float(t["predicted_ms"]))
                cell.upstream_drafts += int(t.get("draft_n", 0))
                cell.upstream_accepted += int(t.get("draft_n_accepted", 0))
            elif side == 2:
                cell.delivered_tps.append(delivered_decode_tps(ours, prompt, settings.tokens))
            else:
                sample = run_engine(ours, prompt, settings.tokens)
                cell.ours_tps.append(sample.decode_tokens_per_sec)
                cell.ours_drafts += sample.drafts_generated
                cell.ours_accepted += sample.drafts_accepted
                cell.ours_ms.append((sample.timing_us["prefill"] + sample.timing_us["total"]) / 1000)


def _snapshots_acceptance(
    model: Model, k: DraftKey, prompt: Sequence[int], settings: Settings
) -> float | None:
    """The head's acceptance on llama-server's schedule (k drafts every iteration;
    rollback="replay", which "auto" may pick with several sequences, drafts fewer after
    a rejection): one greedy run."""
    if k in (0, "auto"):
        return None
    with open_session(model, k, settings, rollback="snapshots") as snap:
        s = run_engine(snap, prompt, settings.tokens)
    return _rate(s.drafts_accepted, s.drafts_generated)


def _cell(exe: Path, level: Level, k: DraftKey, settings: Settings) -> dict[str, Any]:
    """Upstream vs mtpstream at one (level, n_draft), alternating run by run."""
    model = load_model(level.path)
    cell = UpstreamCell(uses_mmap=model.uses_mmap)
    try:
        prompt = generation_prompt(level, model)
        with open_session(model, k, settings) as ours, server(exe, level.path, k, settings) as port:
            _measure(cell, port, ours, prompt, settings)
        cell.snapshots_acceptance = _snapshots_acceptance(model, k, prompt, settings)
    finally:
        model.close()
    cell.expected_acceptance = _expected_acceptance(level, prompt, k, settings.tokens)
    _log.info(cell.log_line(level.name, k))
    return cell.as_json()


def compare(levels: Sequence[Level], settings: Settings) -> dict[str, Any]:
    """Upstream llama-server vs mtpstream on every level and n_draft (never raises)."""
    root = _cache_root()
    out: dict[str, Any] = {
        "enabled": True,
        "llama_cpp_python_sdist": f"{_PACKAGE}=={_VERSION}",
        "metric": "decode tokens/s: server timings.predicted_per_second vs "
        "mtpstream stats (both exclude prompt processing); delivered: the same generation "
        "consumed with async for under asyncio, first token to end of stream; "
        "mtpstream_over_upstream is the "
        "median of per-round ratios (runs rotate through the three sides every round, 0.2 s apart). "
        "request_speed_over_upstream: the whole request (prompt + generation: server "
        "prompt_ms + predicted_ms vs engine prefill + decode time), upstream time / ours",
    }
    try:
        root.mkdir(parents=True, exist_ok=True)
        exe = _server_binary(root, settings.threads)
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        _log.warning(f"  upstream comparison unavailable: {exc}")
        return {**out, "available": False, "reason": str(exc)}
    out.update(available=True, server=str(exe), levels={})
    _log.info("upstream llama-server comparison")
    for level in levels:
        cells: dict[str, Any] = {}
        keys: list[DraftKey] = [*settings.n_drafts, "auto"]
        for k in keys:
            try:
                cells[str(k)] = _cell(exe, level, k, settings)
            except (OSError, RuntimeError, KeyError, ValueError, urllib.error.URLError) as exc:
                cells[str(k)] = {"error": str(exc)}
        out["levels"][level.name] = cells
    return out
