"""Shared fixtures: synthetic GGUF models (written once into the user cache) and
loaded mtpstream models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mtpstream
from mtpstream.testing import load_spec, make_model

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
