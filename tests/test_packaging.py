"""Packaging: the sdist builds and installs with pip's default build isolation into a
fresh venv that then generates; pip wheel gives an installable wheel. Slow (it
compiles the extension once more; llama-cpp-python comes from pip's wheel cache)."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pip(python: Path | str, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-m", "pip", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.slow
def test_sdist_installs_with_build_isolation_and_generates(
    tmp_path: Path, model_paths: dict[str, Path]
) -> None:
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--outdir", str(dist), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if built.returncode != 0 and "No module named build" in built.stderr:
        assert pip(sys.executable, "install", "--quiet", "build").returncode == 0
        built = subprocess.run(
            [sys.executable, "-m", "build", "--sdist", "--outdir", str(dist), str(ROOT)],
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert built.returncode == 0, built.stderr[-3000:]
    (sdist,) = dist.glob("mtpstream-*.tar.gz")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    # default build isolation: the build environment gets llama-cpp-python from
    # [build-system] requires (pip's wheel cache: no second llama.cpp build)
    inst = pip(py, "install", "--quiet", str(sdist))
    assert inst.returncode == 0, inst.stderr[-3000:]
    wheel = pip(py, "wheel", "--quiet", "--no-deps", "-w", str(tmp_path / "wheels"), str(sdist))
    assert wheel.returncode == 0, wheel.stderr[-3000:]
    assert list((tmp_path / "wheels").glob("mtpstream-*.whl"))
    code = (
        "import mtpstream; m = mtpstream.load_model({!r}); s = mtpstream.init(m, n_draft=3, n_ctx=256);"
        "print(s.generate_sync('we walked along', max_tokens=8))".format(str(model_paths["qwen35-oracle"]))
    )
    run = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip()
