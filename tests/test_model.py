"""Loading models: metadata, MTP detection, vocabulary helpers, bad files, one libllama."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

import mtpstream

from conftest import Models, together


@pytest.mark.parametrize(
    ("name", "arch", "nextn", "has_mtp", "sidecar"),
    [
        ("qwen35-oracle", "qwen35", 1, True, False),
        ("qwen35moe-oracle", "qwen35moe", 1, True, False),
        ("qwen35-random", "qwen35", 1, True, False),
        ("qwen35moe-random", "qwen35moe", 1, True, False),
        ("qwen35-plain", "qwen35", 0, False, False),
        ("qwen35-sidecar", "qwen35", 1, True, True),
    ],
)
def test_synthetic_models_load(
    models: Models, name: str, arch: str, nextn: int, has_mtp: bool, sidecar: bool
) -> None:
    m = models[name]
    assert m.arch == arch
    assert m.n_layer_nextn == nextn
    assert m.has_mtp is has_mtp
    assert m.is_sidecar is sidecar
    assert m.n_vocab > 1000 and m.n_embd == 128 and m.n_params > 0 and m.size_bytes > 0
    assert m.metadata["general.architecture"] == arch
    assert m.chat_template and "im_start" in m.chat_template
    assert m.eos is not None and m.is_eog(m.eos)
    assert arch in m.description


def test_mtp_context_on_each_mtp_model_and_not_on_plain(models: Models) -> None:
    for name in ("qwen35-oracle", "qwen35moe-oracle", "qwen35-random", "qwen35moe-random"):
        mtpstream.init(models[name], n_draft=2, n_ctx=256).close()
    with pytest.raises(mtpstream.NoMTPHeadError, match="n_draft=0"):
        mtpstream.init(models["qwen35-plain"], n_draft=3)
    mtpstream.init(models["qwen35-plain"], n_draft=0, n_ctx=256).close()


def test_load_mtp_false_is_reported_and_refused(model_paths: dict[str, Path]) -> None:
    m = mtpstream.load_model(model_paths["qwen35-oracle"], load_mtp=False)
    assert m.n_layer_nextn == 1  # llama.cpp still reports the declared layer
    assert not m.has_mtp and not m.load_mtp
    with pytest.raises(mtpstream.NoMTPHeadError, match="load_mtp"):
        mtpstream.init(m, n_draft=3)
    mtpstream.init(m, n_draft=0, n_ctx=128).close()


def test_sidecar_is_refused_as_target_and_checked_as_draft(models: Models) -> None:
    with pytest.raises(mtpstream.InvalidOptionError, match="sidecar"):
        mtpstream.init(models["qwen35-sidecar"], n_draft=3)
    with pytest.raises(mtpstream.NoMTPHeadError):
        mtpstream.init(models["qwen35-oracle"], n_draft=3, draft_model=models["qwen35-plain"])


def test_sidecar_of_another_width_is_refused(model_paths: dict[str, Path], models: Models) -> None:
    from mtpstream.testing import make_model

    # the bench-size sidecar has n_embd 1024 vs the tiny target's 128: refused before any context
    bench_sidecar = mtpstream.load_model(
        make_model(arch="qwen35", weights="oracle", size="bench", kind="sidecar")
    )
    with pytest.raises(mtpstream.InvalidOptionError, match="draft_model"):
        mtpstream.init(models["qwen35-oracle"], n_draft=3, draft_model=bench_sidecar)


def test_plain_greedy_follows_the_successor_map(models: Models, model_paths: dict[str, Path]) -> None:
    import anyio

    from mtpstream.testing import load_spec

    for name in ("qwen35-oracle", "qwen35moe-oracle"):
        spec = load_spec(model_paths[name])
        model = models[name]

        async def run(model: mtpstream.Model, start: int) -> list[int]:
            with mtpstream.init(model, n_draft=0, n_ctx=512) as plain:
                return [
                    ev.token_id
                    async for ev in plain.stream_events([start], max_tokens=200)
                    if isinstance(ev, mtpstream.TokenEvent)
                ]

        assert anyio.run(run, model, spec.chain_start) == spec.chain(spec.chain_start, 200)


def test_tokenize_round_trip(oracle: mtpstream.Model) -> None:
    text = "The quick brown fox jumps over the lazy dog, and the river runs to the sea."
    ids = oracle.tokenize(text, add_special=False)
    assert oracle.detokenize(ids) == text
    assert len(ids) < len(text.split()) * 2  # word-level vocabulary
    assert b"".join(oracle.token_to_piece(t) for t in ids).decode() == text
    weird = "naïve café \u2013 東京 🙂"
    assert oracle.detokenize(oracle.tokenize(weird, add_special=False)) == weird


@pytest.mark.parametrize("bad", [-1, 10**6])
def test_out_of_range_token_ids(oracle: mtpstream.Model, bad: int) -> None:
    with pytest.raises(ValueError, match=f"{bad}.*{oracle.n_vocab}"):
        oracle.detokenize([1, bad])
    with pytest.raises(ValueError, match=str(oracle.n_vocab)):
        oracle.token_to_piece(bad)


def test_bad_files_raise_model_load_error(tmp_path: Path, model_paths: dict[str, Path]) -> None:
    good = model_paths["qwen35-oracle"].read_bytes()
    cases = {
        "missing": None,
        "empty": b"",
        "not_gguf": b"PK\x03\x04 this is a zip, not a model" * 10,
        "truncated_header": good[:64],
        "truncated_data": good[: len(good) // 2],
    }
    for name, data in cases.items():
        p = tmp_path / f"{name}.gguf"
        if data is not None:
            p.write_bytes(data)
        with pytest.raises(mtpstream.ModelLoadError):
            mtpstream.load_model(p)
    with pytest.raises(mtpstream.ModelLoadError, match="directory"):
        mtpstream.load_model(tmp_path)


def test_unsupported_architecture(tmp_path: Path) -> None:
    import gguf
    import numpy as np

    p = tmp_path / "alien.gguf"
    w = gguf.GGUFWriter(str(p), arch="definitely-not-an-arch")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(mtpstream.ModelLoadError, match="definitely-not-an-arch"):
        mtpstream.load_model(p)


def test_progress_callback_and_logger(model_paths: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    seen: list[float] = []
    with caplog.at_level(logging.INFO, logger="mtpstream.llama"):
        mtpstream.load_model(model_paths["qwen35-oracle"], progress=seen.append).close()
    assert seen and seen[-1] == pytest.approx(1.0) and all(0.0 <= p <= 1.0 for p in seen)
    assert any(r.name == "mtpstream.llama" for r in caplog.records)

    def abort(p: float) -> bool:
        return False

    with pytest.raises(mtpstream.ModelLoadError):
        mtpstream.load_model(model_paths["qwen35-oracle"], progress=abort)


def test_model_handle_outlives_close_for_sessions(model_paths: dict[str, Path]) -> None:
    import anyio

    m = mtpstream.load_model(model_paths["qwen35-oracle"])
    mtp = mtpstream.init(m, n_draft=2, n_ctx=256)
    m.close()
    with pytest.raises(mtpstream.MTPError):
        m.tokenize("x")
    text = anyio.run(lambda: mtp.generate([5, 6, 7], max_tokens=8))
    assert text
    mtp.close()


def test_auto_load_mode_reads_small_files_into_memory_and_maps_large_ones() -> None:
    from mtpstream.model import _choose_mmap

    gib = 1 << 30
    assert _choose_mmap(1 * gib, 8 * gib) is False  # fits with room: read in
    assert _choose_mmap(4 * gib, 8 * gib) is False  # exactly half: still read in
    assert _choose_mmap(5 * gib, 8 * gib) is True  # more than half: map
    assert _choose_mmap(1, None) is True  # unknown memory: llama.cpp's default


@pytest.mark.parametrize("use_mmap", [True, False, None])
def test_every_load_mode_decodes_the_same_tokens(
    model_paths: dict[str, Path], use_mmap: bool | None, caplog: pytest.LogCaptureFixture
) -> None:
    import anyio

    from mtpstream.testing import load_spec

    path = model_paths["qwen35-oracle"]
    spec = load_spec(path)
    with caplog.at_level(logging.INFO, logger="mtpstream.llama"):
        m = mtpstream.load_model(path, use_mmap=use_mmap)
    with m:
        # the test models are tiny, so "auto" reads them into memory
        assert m.uses_mmap is (use_mmap is True)
        mode = "mmap" if m.uses_mmap else "none"
        assert any(f"load_mode = {mode}" in r.getMessage() for r in caplog.records)

        async def run() -> list[int]:
            with mtpstream.init(m, n_draft=3, n_ctx=512) as mtp:
                return [
                    ev.token_id
                    async for ev in mtp.stream_events([spec.chain_start], max_tokens=64)
                    if isinstance(ev, mtpstream.TokenEvent)
                ]

        assert anyio.run(run) == spec.chain(spec.chain_start, 64)


def test_repack_is_off_by_default_only_where_the_amx_buffer_is_offered(
    model_paths: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """llama.cpp's AMX matrix multiply corrupts batched activations (README, "AMX
    CPUs"): the default leaves the extra weight buffers off exactly where it exists;
    repack=False keeps every repacked buffer type out of the load, and the output is
    the same either way."""
    import anyio

    from mtpstream.model import cpu_offers_amx_buffer
    from mtpstream.testing import load_spec

    path = model_paths["qwen35-oracle"]
    spec = load_spec(path)
    with mtpstream.load_model(path) as m:
        assert m.repack is (not cpu_offers_amx_buffer())
    outputs = []
    for repack in (True, False):
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="mtpstream.llama"):
            m = mtpstream.load_model(path, repack=repack)
        with m:
            assert m.repack is repack
            if not repack:
                assert not any("REPACK" in r.getMessage() or "AMX" in r.getMessage() for r in caplog.records)

            async def run(model: mtpstream.Model = m) -> list[int]:
                with mtpstream.init(model, n_draft=3, n_ctx=512, n_seq=2) as mtp:
                    got = await together(mtp, [([spec.chain_start], {"max_tokens": 48})] * 2)
                return got[0][0] + got[1][0]

            outputs.append(anyio.run(run))
    assert outputs[0] == outputs[1] == spec.chain(spec.chain_start, 48) * 2


@pytest.mark.parametrize("bad", ["yes", 1, 0.5])
def test_repack_must_be_bool_or_none(model_paths: dict[str, Path], bad: object) -> None:
    with pytest.raises(TypeError, match="repack"):
        mtpstream.load_model(model_paths["qwen35-oracle"], repack=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["yes", 1, 0.5])
def test_use_mmap_must_be_bool_or_none(model_paths: dict[str, Path], bad: object) -> None:
    with pytest.raises(TypeError, match="use_mmap"):
        mtpstream.load_model(model_paths["qwen35-oracle"], use_mmap=bad)  # type: ignore[arg-type]


SCRIPT = """
import sys
first, second = sys.argv[1], sys.argv[2]
__import__(first); __import__(second)
import mtpstream, llama_cpp
libs = set()
for line in open('/proc/self/maps'):
    if 'libllama' in line and 'libllama-common' not in line:
        libs.add(line.split()[-1])
print(len(libs), sorted(libs))
m = mtpstream.load_model(sys.argv[3])
print(m.n_vocab)
"""


@pytest.mark.parametrize("order", [("llama_cpp", "mtpstream"), ("mtpstream", "llama_cpp")])
def test_one_libllama_per_process_in_both_import_orders(
    order: tuple[str, str], model_paths: dict[str, Path]
) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, *order, str(model_paths["qwen35-oracle"])],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split("\n")
    assert out[0].startswith("1 "), out[0]
    assert "llama_cpp/lib" in out[0]


def test_default_load_maps_the_file_as_llama_server_does(model_paths: dict[str, Path]) -> None:
    with mtpstream.load_model(model_paths["qwen35-oracle"]) as m:
        assert m.uses_mmap is True
