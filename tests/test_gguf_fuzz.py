"""GGUF vocabulary checks and a seeded byte-mutation fuzz of the load path: a corrupt
file either loads or raises ModelLoadError, never aborts the process."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import gguf
import pytest

import mtpstream
from gguf_edit import copy_with
from mtpstream._gguf_checks import check_hyperparameters
from mtpstream._gguf_meta import read_gguf_header
from mtpstream.testing import make_model

from conftest import run_python

_INTERESTING = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1, 0x7F7F7F7F]


_LOADER = """
    import json, sys
    import mtpstream
    base = open({base!r}, "rb").read()
    for i, patches in enumerate(json.loads({patches!r})):
        data = bytearray(base)
        for offset, hexbytes in patches:
            b = bytes.fromhex(hexbytes)
            data[offset : offset + len(b)] = b
        with open({dst!r}, "wb") as f:
            f.write(data)
        print("start", i, flush=True)
        try:
            with mtpstream.load_model({dst!r}) as m:
                ids = m.tokenize("we walked along the river <|im_start|>", True, True)
                m.detokenize(ids)
                m.tokenize("x", False, False)
            print("ok", i, flush=True)
        except mtpstream.ModelLoadError:
            print("refused", i, flush=True)
        except Exception as exc:
            print("other", i, type(exc).__name__, str(exc)[:200].replace(chr(10), " "), flush=True)
"""


def _mutations(data: bytes, header_end: int, seed: int, n: int) -> list[list[tuple[int, str]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        patches = []
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            off = rng.randrange(4, header_end)
            kind = rng.random()
            if kind < 0.45:
                patches.append((off, bytes([rng.randrange(256)]).hex()))
            elif kind < 0.75:
                patches.append((off, bytes([data[off] ^ (1 << rng.randrange(8))]).hex()))
            else:
                value = rng.choice(_INTERESTING)
                width = rng.choice((4, 8))
                patches.append((off, (value % (1 << (8 * width))).to_bytes(width, "little").hex()))
        out.append(patches)
    return out


def _fuzz(tmp_path: Path, seed: int, n: int, per_process: int) -> dict[str, int]:
    base = make_model(arch="qwen35", weights="random", size="tiny", kind="plain")
    data = base.read_bytes()
    header_end = min(t.data_offset for t in read_gguf_header(base).tensors)
    mutations = _mutations(data, header_end, seed, n)
    counts = {"ok": 0, "refused": 0}
    for start in range(0, n, per_process):
        batch = mutations[start : start + per_process]
        code = _LOADER.format(base=str(base), patches=json.dumps(batch), dst=str(tmp_path / "m.gguf"))
        proc = run_python(code, timeout=30 + 5 * len(batch))
        lines = proc.stdout.split("\n")
        last = [ln for ln in lines if ln.startswith("start")]
        where = f"seed {seed}, mutation {start + int(last[-1].split()[1])}" if last else f"batch at {start}"
        assert proc.returncode == 0, f"the process died ({proc.returncode}) at {where}: {proc.stderr[-1500:]}"
        for ln in lines:
            word = ln.split(" ", 1)[0]
            assert word in ("start", "ok", "refused", ""), f"{where}: {ln}"
            if word in counts:
                counts[word] += 1
    assert counts["ok"] + counts["refused"] == n
    return counts


def test_fuzz_gguf_mutations_load_or_raise(tmp_path: Path) -> None:
    counts = _fuzz(tmp_path, seed=1234, n=50, per_process=25)
    assert counts["refused"] > 0


@pytest.mark.slow
def test_fuzz_gguf_mutations_load_or_raise_many(tmp_path: Path) -> None:
    counts = _fuzz(tmp_path, seed=98765, n=520, per_process=40)
    assert counts["refused"] > 0 and counts["ok"] > 0


def _load_in_subprocess(path: Path) -> str:
    proc = run_python(
        f"""
        import mtpstream
        try:
            mtpstream.load_model({str(path)!r})
            print("loaded")
        except mtpstream.ModelLoadError as exc:
            print("ModelLoadError:", exc)
        """,
        timeout=60,
    )
    assert proc.returncode == 0, f"the load aborted the process: {proc.stderr[-1500:]}"
    return proc.stdout.strip()


def test_duplicate_tokens_are_refused_before_llama_cpp_aborts(tmp_path: Path) -> None:
    src = make_model(arch="qwen35", weights="random", size="tiny", kind="plain")
    tokens = list(gguf.GGUFReader(str(src), "r").get_field("tokenizer.ggml.tokens").contents())
    dup = tokens.copy()
    dup[300] = dup[299]
    out = _load_in_subprocess(copy_with(src, tmp_path / "dup.gguf", {"tokenizer.ggml.tokens": dup}))
    assert out.startswith("ModelLoadError") and "token 300" in out and "duplicates token 299" in out
    # an empty token is named [EMPTY_<id>] by llama.cpp: that can collide too
    empty = tokens.copy()
    empty[310], empty[311] = "", "[EMPTY_310]"
    out = _load_in_subprocess(copy_with(src, tmp_path / "empty.gguf", {"tokenizer.ggml.tokens": empty}))
    assert out.startswith("ModelLoadError") and "duplicates token 310" in out
    # llama.cpp reads a token up to its first NUL byte (found by the fuzz test)
    nul = tokens.copy()
    nul[320] = nul[319] + "\x00tail"
    out = _load_in_subprocess(copy_with(src, tmp_path / "nul.gguf", {"tokenizer.ggml.tokens": nul}))
    assert out.startswith("ModelLoadError") and "duplicates token 319" in out


def _fields(values: dict[str, Any]) -> Any:
    return values.get


def test_vocabulary_inconsistencies_are_refused() -> None:
    base = {
        "general.architecture": "qwen35",
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": [f"t{i}" for i in range(8)],
        "tokenizer.ggml.merges": ["t 0"],
    }
    check_hyperparameters("ok.gguf", _fields(base), "qwen35")
    bad_cases = {
        "tokenizer.ggml.token_type": {"tokenizer.ggml.token_type": [1] * 7},
        "tokenizer.ggml.scores": {"tokenizer.ggml.scores": [0.0] * 9},
        "tokenizer.ggml.eos_token_id": {"tokenizer.ggml.eos_token_id": 8},
        "tokenizer.ggml.merges": {"tokenizer.ggml.merges": [1, 2]},
        # BOS added at every tokenization, but neither the key's id nor gpt2's default (11) exists
        "add_bos_token": {"tokenizer.ggml.add_bos_token": True},
        "tokenizer.ggml.tokens": {"tokenizer.ggml.tokens": ["a", "b", "a"]},
    }
    for key, change in bad_cases.items():
        with pytest.raises(mtpstream.ModelLoadError, match=key):
            check_hyperparameters("bad.gguf", _fields({**base, **change}), "qwen35")
    ok = {**base, "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.bos_token_id": 3}
    check_hyperparameters("ok.gguf", _fields(ok), "qwen35")


def test_vocabulary_checks_are_fast_on_a_248k_vocabulary(tmp_path: Path) -> None:
    n = 248_320
    path = tmp_path / "big-vocab.gguf"
    w = gguf.GGUFWriter(str(path), "qwen35")
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(n)])
    w.add_array("tokenizer.ggml.token_type", [1] * n)
    w.add_array("tokenizer.ggml.scores", [0.0] * n)
    w.add_array("tokenizer.ggml.merges", [f"t ok{i}" for i in range(n)])
    w.add_uint32("tokenizer.ggml.eos_token_id", n - 1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    t = time.perf_counter()
    header = read_gguf_header(path)
    check_hyperparameters(path.name, header.kv.get, "qwen35")
    elapsed = time.perf_counter() - t
    assert len(header.kv["tokenizer.ggml.tokens"]) == n
    assert elapsed < 3.0, elapsed  # ~0.3 s here; gguf.GGUFReader takes ~15 s
