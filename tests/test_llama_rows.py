"""What the engine relies on in llama.cpp's staging API for MTP hidden rows, pinned
with llama.cpp alone (through llama-cpp-python's ctypes bindings), so that a new
llama.cpp cannot change it under us unnoticed.

The engine's first draft step decodes the catch-up tokens and the last token in
one batch on the MTP context, with only the last marked for output, and reads
that token's logits and hidden row. In llama.cpp 0.3.36's *masked* mode
(``llama_set_embeddings_nextn(ctx, true, true)``) the row returned for that
output is the batch's first row, not the last token's; the *unmasked* mode
returns every entry's row by batch position. The engine uses the unmasked mode
(``Engine::apply_row_mode``).
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")
ext = pytest.importorskip("llama_cpp.llama_cpp_ext")

from mtpstream.testing import load_spec, make_model  # noqa: E402

N = 4  # catch-up tokens + the last one, as in the engine's first draft step


@dataclass
class Contexts:
    model: ctypes.c_void_p
    tgt: ctypes.c_void_p
    dft: ctypes.c_void_p
    n_embd: int


def _context_params() -> Any:
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx = 256
    cp.n_batch = 64
    cp.n_ubatch = 64
    cp.n_seq_max = 1
    return cp


@pytest.fixture(scope="module")
def contexts() -> Iterator[Contexts]:
    path: Path = make_model(arch="qwen35", weights="oracle", size="tiny", head="hidden")
    llama_cpp.llama_backend_init()
    mp = llama_cpp.llama_model_default_params()
    mp.load_mtp = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), mp)
    assert model
    tgt = llama_cpp.llama_init_from_model(model, _context_params())
    assert tgt
    dp = _context_params()
    dp.ctx_type = llama_cpp.LLAMA_CONTEXT_TYPE_MTP
    dp.ctx_other = tgt
    dft = llama_cpp.llama_init_from_model(model, dp)
    assert dft
    n_embd = llama_cpp.llama_model_n_embd(model)
    yield Contexts(model, tgt, dft, n_embd)
    llama_cpp.llama_free(dft)
    llama_cpp.llama_free(tgt)
    llama_cpp.llama_model_free(model)


def _decode_pairs(
    c: Contexts, tokens: list[int], hidden: np.ndarray, outputs: list[bool], masked: bool
) -> None:
    """Decode (token, hidden row) pairs at positions 0.. on a cleared MTP context."""
    n = len(tokens)
    tok = (llama_cpp.llama_token * n)(*tokens)
    h = np.ascontiguousarray(hidden, dtype=np.float32)
    pos = (llama_cpp.llama_pos * n)(*range(n))
    n_seq = (ctypes.c_int32 * n)(*([1] * n))
    seq0 = (llama_cpp.llama_seq_id * 1)(0)
    seq = (ctypes.POINTER(llama_cpp.llama_seq_id) * n)(
        *([ctypes.cast(seq0, ctypes.POINTER(llama_cpp.llama_seq_id))] * n)
    )
    logits = (ctypes.c_int8 * n)(*[1 if o else 0 for o in outputs])
    batch = llama_cpp.llama_batch()
    batch.n_tokens = n
    batch.token = tok
    batch.embd = h.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    batch.pos = pos
    batch.n_seq_id = n_seq
    batch.seq_id = seq
    batch.logits = logits
    ext.llama_set_embeddings_nextn(c.dft, True, masked)
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(c.dft), True)
    assert llama_cpp.llama_decode(c.dft, batch) == 0


def _row(c: Contexts, i: int) -> np.ndarray:
    p = ext.llama_get_embeddings_nextn_ith(c.dft, i)
    assert p
    return np.ctypeslib.as_array(p, shape=(c.n_embd,)).copy()


@pytest.fixture(scope="module")
def pairs(contexts: Contexts) -> tuple[list[int], np.ndarray]:
    spec = load_spec(make_model(arch="qwen35", weights="oracle", size="tiny", head="hidden"))
    tokens = [spec.chain_start, *spec.chain(spec.chain_start, N - 1)]
    rng = np.random.default_rng(0)
    hidden = rng.choice([-1.0, 1.0], size=(N, contexts.n_embd)).astype(np.float32)
    return tokens, hidden


def test_unmasked_rows_are_indexed_by_batch_position(
    contexts: Contexts, pairs: tuple[list[int], np.ndarray]
) -> None:
    tokens, hidden = pairs
    _decode_pairs(contexts, tokens, hidden, [True] * N, masked=True)
    every = [_row(contexts, i) for i in range(N)]
    assert not np.allclose(every[0], every[N - 1])  # the rows differ, so the checks below can fail
    # what the engine does: only the last entry is an output, rows read unmasked
    _decode_pairs(contexts, tokens, hidden, [False] * (N - 1) + [True], masked=False)
    for i in range(N):
        np.testing.assert_allclose(_row(contexts, i), every[i], rtol=0, atol=1e-5)


def test_masked_mode_returns_the_first_row_for_a_catch_up_batch(
    contexts: Contexts, pairs: tuple[list[int], np.ndarray]
) -> None:
    """The llama.cpp 0.3.36 behaviour the engine avoids. If this fails, llama.cpp
    changed its masked rows: review Engine::apply_row_mode (the masked mode may
    now be right, and cheaper)."""
    tokens, hidden = pairs
    _decode_pairs(contexts, tokens, hidden, [True] * N, masked=True)
    every = [_row(contexts, i) for i in range(N)]
    _decode_pairs(contexts, tokens, hidden, [False] * (N - 1) + [True], masked=True)
    got = _row(contexts, N - 1)
    np.testing.assert_array_equal(got, every[0])
    assert np.abs(got - every[N - 1]).max() > 0.5
