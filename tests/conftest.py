"""Shared fixtures: synthetic GGUF models (written once into the user cache) and
loaded mtpstream models."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import llama_cpp
import numpy as np
import pytest

import mtpstream
from mtpstream.testing import RpcWorker, load_spec, make_model, rpc_workers

# flash attention off: on CPU a multi-token verify batch then matches single-token
# decoding to ~1e-5 (with it on, ~3e-3 can flip near-ties on random weights)
EXACT = {"flash_attn": False}


@pytest.fixture(scope="session")
def model_paths() -> dict[str, Path]:
    return {
        "qwen35-oracle": make_model(arch="qwen35", weights="oracle", size="tiny", mtp_error_rate=0.25),
        "qwen35-oracle-0": make_model(arch="qwen35", weights="oracle", size="tiny", mtp_error_rate=0.0),
        "qwen35moe-oracle": make_model(arch="qwen35moe", weights="oracle", size="tiny", mtp_error_rate=0.25),
        "qwen35-random": make_model(arch="qwen35", weights="random", size="tiny"),
        "qwen35moe-random": make_model(arch="qwen35moe", weights="random", size="tiny"),
        "qwen35-plain": make_model(arch="qwen35", weights="oracle", size="tiny", kind="plain"),
        "qwen35-sidecar": make_model(
            arch="qwen35", weights="oracle", size="tiny", mtp_error_rate=0.25, kind="sidecar"
        ),
    }


class Models:
    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = paths
        self._loaded: dict[str, mtpstream.Model] = {}

    def __getitem__(self, name: str) -> mtpstream.Model:
        if name not in self._loaded:
            self._loaded[name] = mtpstream.load_model(self.paths[name])
        return self._loaded[name]

    def close(self) -> None:
        for m in self._loaded.values():
            m.close()


@pytest.fixture(scope="session")
def models(model_paths: dict[str, Path]) -> Iterator[Models]:
    m = Models(model_paths)
    yield m
    m.close()


class OracleModels:
    """Tiny oracle models per (arch, head, error rate, kind), each loaded once."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, str, float, str], mtpstream.Model] = {}

    @staticmethod
    def path(arch: str, head: str = "hidden", rate: float = 0.25, kind: str = "mtp") -> Path:
        return make_model(arch=arch, weights="oracle", size="tiny", mtp_error_rate=rate, head=head, kind=kind)  # type: ignore[arg-type]

    def get(self, arch: str, head: str = "hidden", rate: float = 0.25, kind: str = "mtp") -> mtpstream.Model:
        key = (arch, head, rate, kind)
        if key not in self._loaded:
            self._loaded[key] = mtpstream.load_model(self.path(arch, head, rate, kind))
        return self._loaded[key]

    def spec(self, arch: str, head: str = "hidden", rate: float = 0.25) -> Any:
        return load_spec(self.path(arch, head, rate))

    def close(self) -> None:
        for m in self._loaded.values():
            m.close()


@pytest.fixture
def oracle(models: Models) -> mtpstream.Model:
    return models["qwen35-oracle"]


async def collect(mtp: mtpstream.MTP, prompt: Any, **opts: Any) -> tuple[list[int], Any]:
    """Token ids and the terminal event of one call."""
    ids: list[int] = []
    terminal = None
    async for ev in mtp.stream_events(prompt, **opts):
        if isinstance(ev, mtpstream.TokenEvent):
            ids.append(ev.token_id)
        elif isinstance(ev, (mtpstream.DoneEvent, mtpstream.EogEvent)):
            terminal = ev
    return ids, terminal


# Logits of a k+1-token verify batch differ from single-token decoding by float
# rounding (README, "Exactness"); where plain decoding's two best logits are closer
# than this, either of them is plain decoding's token.
NEAR_TIE = 5e-3


def reference_llama(path: Path, n_ctx: int = 512) -> llama_cpp.Llama:
    return llama_cpp.Llama(str(path), n_ctx=n_ctx, logits_all=True, flash_attn=False, verbose=False)


def plain_greedy(llm: llama_cpp.Llama, prefix: list[int], n: int) -> list[tuple[int, int, float]]:
    """Plain single-token greedy decoding through llama-cpp-python: per step the best
    token, the runner-up and the gap between their logits."""
    llm.reset()
    llm.eval(prefix)
    steps: list[tuple[int, int, float]] = []
    for _ in range(n):
        logits = np.asarray(llm.scores[llm.n_tokens - 1])
        best, second = (int(t) for t in np.argsort(logits)[::-1][:2])
        steps.append((best, second, float(logits[best] - logits[second])))
        llm.eval([best])
    return steps


def batched_greedy(llm: llama_cpp.Llama, prefix: list[int], widths: range) -> set[int]:
    """llama.cpp's own greedy token after ``prefix`` when its last k tokens are decoded
    as one batch, for each k in ``widths``: a verify batch has this shape, and on a
    model with a near-tie inside (e.g. an MoE router's expert choice) its float
    rounding may flip what plain single-token decoding picks."""
    found: set[int] = set()
    for k in widths:
        if k > len(prefix):
            break
        llm.reset()
        llm.eval(prefix[:-k])
        llm.eval(prefix[-k:])
        found.add(int(np.argmax(np.asarray(llm.scores[llm.n_tokens - 1]))))
    return found


def assert_plain_greedy_modulo_near_ties(
    path: Path, prompt: list[int], ids: list[int], max_ties: int = 3, max_batch: int = 9
) -> None:
    """Every token in ``ids`` is plain greedy decoding's token given the tokens before
    it, except at a near-tie, where it may be the runner-up, or where llama.cpp itself
    picks it when it decodes the last 2..``max_batch`` tokens as one batch (a tie
    hidden inside the model, which the final logits do not show); the continuation is
    then checked against plain decoding of that prefix."""
    llm = reference_llama(path, n_ctx=len(prompt) + len(ids) + 8)
    try:
        done = 0
        for _ in range(max_ties + 1):
            steps = plain_greedy(llm, prompt + ids[:done], len(ids) - done)
            d = next((i for i, (best, _, _) in enumerate(steps) if ids[done + i] != best), None)
            if d is None:
                return
            best, second, gap = steps[d]
            got = ids[done + d]
            if not (got == second and gap < NEAR_TIE):
                batched = batched_greedy(llm, prompt + ids[: done + d], range(2, max_batch + 1))
                assert got in batched, (
                    f"token {done + d} is {got}; plain decoding gives {best} "
                    f"(runner-up {second}, {gap:.2e} behind; batched: {sorted(batched)})"
                )
            done += d + 1
        raise AssertionError(f"more than {max_ties} near-ties broken the other way")
    finally:
        llm.close()


def prompts_for(model: mtpstream.Model, spec: Any) -> list[list[int]]:
    """Prompts of different lengths and shapes: on the oracle's chain, off it, long."""
    chain = [spec.chain_start, *spec.chain(spec.chain_start, 40)]
    return [
        [spec.chain_start],
        [*model.tokenize("we walked along"), spec.chain_start],
        chain[:9],
        model.tokenize("the river and the road went on and on, " * 6),
    ]


async def together(
    mtp: mtpstream.MTP, calls: list[tuple[list[int], dict[str, Any]]], delays: list[float] | None = None
) -> list[tuple[list[int], Any]]:
    results: list[Any] = [None] * len(calls)

    async def one(i: int) -> None:
        if delays:
            await anyio.sleep(delays[i])
        prompt, opts = calls[i]
        results[i] = await collect(mtp, prompt, **opts)

    async with anyio.create_task_group() as tg:
        for i in range(len(calls)):
            tg.start_soon(one, i)
    return results


def run_python(
    code: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter in tests/; the watchdog kills it after ``timeout`` s."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(Path(__file__).parent),
        env={**os.environ, **(env or {})},
    )


# ------------------------------------------------------------------ RPC workers
# scripts/dev.sh builds llama-cpp-python with the RPC backend: under CI=true its absence fails
needs_rpc = pytest.mark.skipif(
    not mtpstream._bridge.rpc_available() and os.environ.get("CI") != "true",
    reason="llama-cpp-python built without -DGGML_RPC=on",
)


@pytest.fixture(scope="module")
def workers() -> Iterator[list[RpcWorker]]:
    """Two ``mtpstream rpc-server`` workers on 127.0.0.1 (1 thread each), per module."""
    with rpc_workers(2, threads=1) as ws:
        yield ws
