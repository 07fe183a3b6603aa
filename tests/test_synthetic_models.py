"""Tests of ``mtpstream.testing``: synthetic Qwen3.5 GGUF models with an MTP head.

The llama.cpp checks use llama-cpp-python's low-level ctypes API directly so
that they exercise the files independently of the rest of mtpstream.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mtpstream.testing import (
    FORMAT_VERSION,
    AcceptanceResult,
    Arch,
    Kind,
    OracleSpec,
    analytic_acceptance,
    build_spec,
    expected_acceptance,
    load_model,
    load_spec,
    make_model,
    model_config,
    oracle_margins,
)
from mtpstream.testing.__main__ import main as cli_main
from mtpstream.testing._tokenizer import build_vocab

ARCHS: tuple[Arch, ...] = ("qwen35", "qwen35moe")
ENGLISH = (
    "the old man walked along the river with his dog and they watched the sun "
    "rise over the green hills while birds sang in the tall trees"
)


# --------------------------------------------------------------------------------------
# fixtures and low-level llama.cpp helpers
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache directory for the tiny models used by this module."""
    return tmp_path_factory.mktemp("synthetic-models")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Llama:
    """Minimal wrapper over ``llama_cpp.llama_cpp`` for loading and decoding."""

    _log_cb: Any = None

    def __init__(self) -> None:
        import llama_cpp.llama_cpp as lib

        self.lib = lib
        if Llama._log_cb is None:

            @lib.llama_log_callback  # type: ignore[untyped-decorator]
            def _quiet(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
                return None

            Llama._log_cb = _quiet
            lib.llama_log_set(_quiet, ctypes.c_void_p(0))
            lib.llama_backend_init()

    def load(self, path: Path, load_mtp: bool = True) -> Any:
        mp = self.lib.llama_model_default_params()
        mp.load_mtp = load_mtp
        model = self.lib.llama_model_load_from_file(str(path).encode(), mp)
        assert model, f"llama.cpp failed to load {path}"
        return model

    def context(self, model: Any, mtp: bool = False, n_ctx: int = 512) -> Any:
        cp = self.lib.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_ctx
        cp.n_ubatch = n_ctx
        cp.n_threads = 1
        cp.n_threads_batch = 1
        if mtp:
            cp.ctx_type = self.lib.LLAMA_CONTEXT_TYPE_MTP
        return self.lib.llama_init_from_model(model, cp)

    def n_vocab(self, model: Any) -> int:
        return int(self.lib.llama_vocab_n_tokens(self.lib.llama_model_get_vocab(model)))

    def tokenize(self, model: Any, text: str, special: bool = False) -> list[int]:
        vocab = self.lib.llama_model_get_vocab(model)
        raw = text.encode()
        buf = (self.lib.llama_token * (len(raw) + 16))()
        n = self.lib.llama_tokenize(vocab, raw, len(raw), buf, len(buf), False, special)
        assert n >= 0
        return [int(t) for t in buf[:n]]

    def detokenize(self, model: Any, tokens: list[int]) -> str:
        vocab = self.lib.llama_model_get_vocab(model)
        arr = (self.lib.llama_token * len(tokens))(*tokens)
        buf = ctypes.create_string_buffer(len(tokens) * 64 + 16)
        n = self.lib.llama_detokenize(vocab, arr, len(tokens), buf, len(buf), False, False)
        assert n >= 0
        return buf.raw[:n].decode()

    def logits(self, ctx: Any, model: Any, i: int) -> np.ndarray:
        ptr = self.lib.llama_get_logits_ith(ctx, i)
        out: np.ndarray = np.ctypeslib.as_array(ptr, shape=(self.n_vocab(model),)).copy()
        return out

    def greedy(self, model: Any, ctx: Any, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
        """Plain greedy decoding: single-token llama_decode + argmax; returns tokens, margins."""
        arr = (self.lib.llama_token * len(prompt))(*prompt)
        assert self.lib.llama_decode(ctx, self.lib.llama_batch_get_one(arr, len(prompt))) == 0
        out: list[int] = []
        margins: list[float] = []
        for _ in range(n):
            lg = self.logits(ctx, model, -1)
            top2 = np.partition(lg, -2)[-2:]
            margins.append(float(top2.max() - top2.min()))
            t = int(np.argmax(lg))
            out.append(t)
            one = (self.lib.llama_token * 1)(t)
            assert self.lib.llama_decode(ctx, self.lib.llama_batch_get_one(one, 1)) == 0
        return out, margins

    def mtp_argmax(self, model: Any, mctx: Any, tokens: list[int], hidden: np.ndarray) -> list[int]:
        """Run the MTP head on ``tokens`` (positions 0..) paired with ``hidden`` rows."""
        lib = self.lib
        n_embd = int(lib.llama_model_n_embd(model))
        hidden = np.ascontiguousarray(hidden, dtype=np.float32)
        batch = lib.llama_batch_ext_init(mctx)
        try:
            for i, tok in enumerate(tokens):
                idx = lib.llama_batch_ext_add_token(batch, 0, tok)
                assert idx == i
                pos = lib.llama_pos(i)
                assert lib.llama_batch_ext_set_pos(batch, idx, ctypes.byref(pos))
                row = lib.llama_embd(hidden[i].ctypes.data_as(ctypes.POINTER(ctypes.c_float)), 1, n_embd)
                assert lib.llama_batch_ext_set_embd_token(batch, idx, row)
                assert lib.llama_batch_ext_set_output_logits(batch, idx, True)
            assert lib.llama_process(mctx, lib.LLAMA_PROCESS_TYPE_DECODE, batch) == 0
            return [int(np.argmax(self.logits(mctx, model, i))) for i in range(len(tokens))]
        finally:
            lib.llama_batch_ext_free(batch)


@pytest.fixture(scope="module")
def llama() -> Llama:
    return Llama()


@pytest.fixture()
def loaded(llama: Llama) -> Iterator[list[Any]]:
    """Collects (model, contexts...) handles and frees them after the test."""
    handles: list[Any] = []
    yield handles
    for kind, h in reversed(handles):
        if h:
            (llama.lib.llama_free if kind == "ctx" else llama.lib.llama_model_free)(h)


def _load(llama: Llama, loaded: list[Any], path: Path, load_mtp: bool = True) -> Any:
    model = llama.load(path, load_mtp)
    loaded.append(("model", model))
    return model


def _ctx(llama: Llama, loaded: list[Any], model: Any, mtp: bool = False) -> Any:
    ctx = llama.context(model, mtp=mtp)
    loaded.append(("ctx", ctx))
    return ctx


# --------------------------------------------------------------------------------------
# files: determinism, size, cache, metadata
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["mtp", "plain", "sidecar"])
def test_tiny_is_deterministic_small_and_fast(tmp_path: Path, arch: Arch, kind: Kind) -> None:
    t0 = time.perf_counter()
    a = make_model(arch=arch, kind=kind, cache_dir=tmp_path / "a")
    elapsed = time.perf_counter() - t0
    b = make_model(arch=arch, kind=kind, cache_dir=tmp_path / "b")
    assert a.name == b.name
    assert a.stat().st_size < 10 * 1024 * 1024
    assert elapsed < 5.0
    assert _digest(a) == _digest(b)
    assert not list((tmp_path / "a").glob(".tmp-*"))


def test_random_weights_are_deterministic_and_seeded(tmp_path: Path) -> None:
    a = make_model(weights="random", seed=3, cache_dir=tmp_path / "a")
    b = make_model(weights="random", seed=3, cache_dir=tmp_path / "b")
    c = make_model(weights="random", seed=4, cache_dir=tmp_path / "a")
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_cache_is_reused_and_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTPSTREAM_CACHE_DIR", str(tmp_path))
    p = make_model(mtp_error_rate=0.5)
    assert p.parent == tmp_path
    mtime = p.stat().st_mtime_ns
    assert make_model(mtp_error_rate=0.5) == p
    assert p.stat().st_mtime_ns == mtime
    assert make_model(mtp_error_rate=0.25) != p
    # arguments that cannot matter share a file
    assert make_model(weights="random", mtp_error_rate=0.1) == make_model(
        weights="random", mtp_error_rate=0.9
    )


def test_concurrent_writers_are_safe(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "mtpstream.testing", "make", "--arch", "qwen35moe"]
    cmd += ["--cache-dir", str(tmp_path / "shared")]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    paths = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(paths) == 1
    ref = make_model(arch="qwen35moe", cache_dir=tmp_path / "ref")
    assert _digest(Path(paths.pop())) == _digest(ref)
    assert not list((tmp_path / "shared").glob(".tmp-*"))


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["make", "--arch", "qwen35", "--weights", "oracle", "--size", "tiny"]
    args += ["--mtp-error-rate", "0.5", "--kind", "sidecar", "--seed", "2"]
    assert cli_main([*args, "--cache-dir", str(tmp_path)]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == make_model(mtp_error_rate=0.5, kind="sidecar", seed=2, cache_dir=tmp_path)
    assert cli_main(["info", str(path), "--tensors"]) == 0
    info = json.loads(capsys.readouterr().out)
    names = {t["name"] for t in info["tensors"]}
    assert "blk.0.attn_norm.weight" not in names  # MTP-only: no trunk
    assert "blk.4.nextn.eh_proj.weight" in names and "token_embd.weight" in names
    assert info["metadata"]["qwen35.nextn_predict_layers"] == 1
    assert info["oracle"]["stop_word"] == "end"


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_model(arch="llama", cache_dir=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        make_model(mtp_error_rate=1.5, cache_dir=tmp_path)
    with pytest.raises(ValueError):
        make_model(seed=-1, cache_dir=tmp_path)
    with pytest.raises(ValueError):
        make_model(kind="draft", cache_dir=tmp_path)  # type: ignore[arg-type]


@pytest.mark.parametrize("arch", ARCHS)
def test_metadata_and_spec_round_trip(model_dir: Path, arch: Arch) -> None:
    path = make_model(arch=arch, mtp_error_rate=0.3, seed=7, cache_dir=model_dir)
    info = load_model(path)
    assert (info.arch, info.kind, info.weights, info.size, info.seed) == (
        arch,
        "mtp",
        "oracle",
        "tiny",
        7,
    )
    assert info.mtp_error_rate == pytest.approx(0.3)
    assert info.format_version == FORMAT_VERSION
    cfg = model_config(arch, "tiny")
    assert info.n_layer == cfg.n_layer + 1 and info.n_layer_nextn == 1
    assert info.n_embd == cfg.n_embd
    assert info.spec == load_spec(path) == build_spec("tiny", 0.3, 7)

    plain = load_model(make_model(arch=arch, kind="plain", seed=7, cache_dir=model_dir))
    assert plain.n_layer_nextn == 0 and plain.n_layer == cfg.n_layer
    assert plain.spec is not None and plain.spec.head is None
    assert plain.spec.succ == info.spec.succ  # the target does not depend on the head

    side = load_model(make_model(arch=arch, kind="sidecar", mtp_error_rate=0.3, seed=7, cache_dir=model_dir))
    assert side.spec == info.spec and side.n_layer_nextn == 1

    rnd = load_model(make_model(arch=arch, weights="random", cache_dir=model_dir))
    assert rnd.spec is None
    with pytest.raises(ValueError):
        load_spec(rnd.path)


def test_spec_structure() -> None:
    vocab = build_vocab()
    spec = build_spec("tiny", mtp_error_rate=0.2, seed=0)
    n_words = len(vocab.words)
    chain = spec.chain(spec.chain_start, spec.n_vocab)
    # the chain visits every word once (space-prefixed), then the stop word, then EOS
    assert chain[-1] == spec.eos_token_id and chain[-2] == spec.stop_token_id
    assert len(chain) == n_words and len(set(chain)) == n_words
    assert set(chain[:-1]) <= set(vocab.word_spaced)
    assert spec.steps_to_eos(spec.chain_start) == n_words
    assert vocab.tokens[spec.stop_token_id] == "\u0120" + spec.stop_word
    # head errors: the requested fraction of word classes, never equal to succ
    assert spec.head is not None
    wrong_words = [
        w for w in range(n_words) if spec.head[vocab.word_spaced[w]] != spec.succ[vocab.word_spaced[w]]
    ]
    assert len(wrong_words) == round(0.2 * n_words)
    assert all(spec.head[t] != spec.succ[t] for t in spec.error_tokens)
    # lower error rates make a subset of the errors of higher ones
    low = build_spec("tiny", mtp_error_rate=0.1, seed=0).error_tokens
    assert low < spec.error_tokens
    assert build_spec("tiny", mtp_error_rate=0.0).error_tokens == frozenset()


def test_oracle_margins_are_large() -> None:
    margins = oracle_margins("tiny")
    assert margins.min() >= 32.0  # logits; n_embd = 128


# --------------------------------------------------------------------------------------
# expected_acceptance / analytic_acceptance
# --------------------------------------------------------------------------------------


def test_expected_acceptance_perfect_head() -> None:
    spec = build_spec("tiny", mtp_error_rate=0.0)
    res = expected_acceptance(spec, [spec.chain_start], n_draft=4, n_tokens=100)
    assert isinstance(res, AcceptanceResult)
    assert res.acceptance_rate == 1.0
    assert list(res.tokens) == spec.chain(spec.chain_start, 100)
    # 1 token from the prompt, then 19 iterations of 4 drafts + 1, then 3 drafts + 1
    assert res.iters == 20 and res.drafts_generated == 79 == res.drafts_accepted
    assert not res.stopped_at_eos


def test_expected_acceptance_follows_rule_by_hand() -> None:
    # a 6-token toy: succ 0->1->2->3->4->5(EOS); the head is wrong after token 2
    spec = OracleSpec(
        succ=(1, 2, 3, 4, 5, 0),
        head=(1, 2, 0, 4, 5, 0),
        eos_token_id=5,
        stop_word="end",
        stop_token_id=4,
        chain_start=0,
        mtp_error_rate=1 / 6,
    )
    res = expected_acceptance(spec, [0], n_draft=3, n_tokens=10, rollback="snapshots")
    # token 1 comes from the prompt's logits (no iteration)
    # iter 1 from 1: drafts 2,0,1 vs 2,3,4 -> accept 2, emit 2 + target 3
    # iter 2 from 3: drafts 4,5,0 vs 4,5(EOS) -> accept 4; EOS is the target's token
    assert res.tokens == (1, 2, 3, 4, 5)
    assert (res.iters, res.drafts_generated, res.drafts_accepted) == (2, 6, 2)
    assert res.stopped_at_eos
    # replay: iter 1 rejects after one accepted draft, so iter 2 replays 2 tokens
    # (1 and 2) and drafts 3 - 2 = 1: head 4 vs target 4 -> accepted, then EOS
    res = expected_acceptance(spec, [0], n_draft=3, n_tokens=10, rollback="replay")
    assert res.tokens == (1, 2, 3, 4, 5)
    assert (res.iters, res.drafts_generated, res.drafts_accepted) == (2, 4, 2)
    with pytest.raises(ValueError, match="rollback"):
        expected_acceptance(spec, [0], n_draft=3, n_tokens=10, rollback="undo")  # type: ignore[arg-type]
    # k shrinks near the end; k == 0 is a plain step that still counts as an iteration
    res = expected_acceptance(spec, [0], n_draft=3, n_tokens=2)
    assert res.tokens == (1, 2) and (res.iters, res.drafts_generated, res.drafts_accepted) == (
        1,
        0,
        0,
    )
    res = expected_acceptance(spec, [0], n_draft=0, n_tokens=3)
    assert res.tokens == (1, 2, 3) and res.iters == 2 and res.acceptance_rate == 0.0


def test_expected_acceptance_reads_file(model_dir: Path) -> None:
    path = make_model(mtp_error_rate=0.25, cache_dir=model_dir)
    spec = load_spec(path)
    start = spec.chain_start
    assert expected_acceptance(path, [start], 3, 50) == expected_acceptance(spec, [start], 3, 50)
    plain = make_model(kind="plain", cache_dir=model_dir)
    with pytest.raises(ValueError):
        expected_acceptance(plain, [start], 3, 50)


def test_expected_acceptance_stops_at_eos() -> None:
    spec = build_spec("tiny", mtp_error_rate=0.25)
    # start three words before the stop word
    chain = spec.chain(spec.chain_start, spec.n_vocab)
    start = chain[-5]
    res = expected_acceptance(spec, [start], n_draft=2, n_tokens=100)
    assert res.stopped_at_eos
    assert res.tokens[-1] == spec.eos_token_id and res.tokens[-2] == spec.stop_token_id
    assert len(res.tokens) == 4


def test_analytic_acceptance_values() -> None:
    assert analytic_acceptance(0.0, 5) == 1.0
    assert analytic_acceptance(1.0, 3) == 0.0
    assert analytic_acceptance(0.25, 1) == pytest.approx(0.75)
    assert analytic_acceptance(0.5, 2) == pytest.approx((0.5 + 0.25) / 2)
    with pytest.raises(ValueError):
        analytic_acceptance(0.1, 0)


@pytest.mark.parametrize("rate", [0.1, 0.25, 0.5])
@pytest.mark.parametrize("n_draft", [1, 3, 5])
def test_simulated_acceptance_matches_analytic(rate: float, n_draft: int) -> None:
    spec = build_spec("bench", mtp_error_rate=rate, seed=1)  # ~16k-word chain, no file
    n = spec.steps_to_eos(spec.chain_start) - 1
    res = expected_acceptance(spec, [spec.chain_start], n_draft=n_draft, n_tokens=n, rollback="snapshots")
    assert len(res.tokens) == n and not res.stopped_at_eos
    assert abs(res.acceptance_rate - analytic_acceptance(rate, n_draft)) < 0.03


# --------------------------------------------------------------------------------------
# llama.cpp: loading, MTP contexts, greedy decoding, MTP head, tokenizer
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["mtp", "plain", "sidecar"])
def test_models_load_with_expected_nextn(
    llama: Llama, loaded: list[Any], model_dir: Path, arch: Arch, kind: Kind
) -> None:
    path = make_model(arch=arch, kind=kind, cache_dir=model_dir)
    model = _load(llama, loaded, path)
    assert llama.lib.llama_model_n_layer_nextn(model) == (0 if kind == "plain" else 1)
    assert llama.n_vocab(model) == load_model(path).n_vocab
    mctx = _ctx(llama, loaded, model, mtp=True)
    if kind == "plain":
        assert not mctx
    else:
        assert mctx


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["mtp", "plain"])
def test_greedy_follows_successor_map(
    llama: Llama, loaded: list[Any], model_dir: Path, arch: Arch, kind: Kind
) -> None:
    path = make_model(arch=arch, kind=kind, cache_dir=model_dir)
    spec = load_spec(path)
    model = _load(llama, loaded, path)
    ctx = _ctx(llama, loaded, model)
    prompt = llama.tokenize(model, " the old man")
    got, margins = llama.greedy(model, ctx, prompt, 80)
    assert got == spec.chain(prompt[-1], 80)
    assert min(margins) >= 8.0


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_reaches_eos(llama: Llama, loaded: list[Any], model_dir: Path, arch: Arch) -> None:
    path = make_model(arch=arch, cache_dir=model_dir)
    spec = load_spec(path)
    model = _load(llama, loaded, path)
    ctx = _ctx(llama, loaded, model)
    start = spec.chain(spec.chain_start, spec.n_vocab)[-6]
    got, _ = llama.greedy(model, ctx, [start], 5)
    assert got[-2:] == [spec.stop_token_id, spec.eos_token_id]
    vocab = llama.lib.llama_model_get_vocab(model)
    assert llama.lib.llama_vocab_eos(vocab) == spec.eos_token_id
    assert llama.lib.llama_vocab_is_eog(vocab, spec.eos_token_id)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["mtp", "sidecar"])
def test_mtp_head_predicts_head_map(
    llama: Llama, loaded: list[Any], model_dir: Path, arch: Arch, kind: Kind
) -> None:
    path = make_model(arch=arch, kind=kind, mtp_error_rate=0.25, cache_dir=model_dir)
    spec = load_spec(path)
    assert spec.head is not None
    model = _load(llama, loaded, path)
    mctx = _ctx(llama, loaded, model, mtp=True)
    tokens = spec.chain(spec.chain_start, 96)
    hidden = np.random.default_rng(0).standard_normal((len(tokens), llama.lib.llama_model_n_embd(model)))
    got = llama.mtp_argmax(model, mctx, tokens, hidden)
    want = [spec.head[t] for t in tokens]
    assert got == want
    assert any(spec.head[t] != spec.succ[t] for t in tokens)  # some drafts are wrong


def test_tokenizer_round_trip(llama: Llama, loaded: list[Any], model_dir: Path) -> None:
    path = make_model(cache_dir=model_dir)
    model = _load(llama, loaded, path)
    vocab = build_vocab()
    toks = llama.tokenize(model, ENGLISH)
    assert len(toks) == len(ENGLISH.split())  # one token per word
    assert llama.detokenize(model, toks) == ENGLISH
    assert toks[0] == vocab.word_plain[vocab.words.index("the")]
    assert toks[1] == vocab.word_spaced[vocab.words.index("old")]
    # every word is a single token, with and without the leading space
    for i in range(0, len(vocab.words), 37):
        w = vocab.words[i]
        assert llama.tokenize(model, w) == [vocab.word_plain[i]]
        assert llama.tokenize(model, " " + w) == [vocab.word_spaced[i]]
    # arbitrary text still round-trips through byte tokens
    odd = "Hello, World! 1234 caf\u00e9 x-ray\n\tthe  end."
    assert llama.detokenize(model, llama.tokenize(model, odd)) == odd
    # special tokens
    chat = "<|im_start|>user\nhello<|im_end|>"
    st = llama.tokenize(model, chat, special=True)
    assert st[0] == vocab.im_start_id and st[-1] == vocab.im_end_id


@pytest.mark.parametrize("arch", ARCHS)
def test_random_weights_run_finite_and_head_disagrees(
    llama: Llama, loaded: list[Any], model_dir: Path, arch: Arch
) -> None:
    path = make_model(arch=arch, weights="random", cache_dir=model_dir)
    model = _load(llama, loaded, path)
    ctx = _ctx(llama, loaded, model)
    prompt = llama.tokenize(model, ENGLISH)
    got, _ = llama.greedy(model, ctx, prompt, 24)
    assert np.isfinite(llama.logits(ctx, model, -1)).all()
    mctx = _ctx(llama, loaded, model, mtp=True)
    seq = prompt[-1:] + got[:-1]
    hidden = np.zeros((len(seq), llama.lib.llama_model_n_embd(model)), dtype=np.float32)
    drafts = llama.mtp_argmax(model, mctx, seq, hidden)
    agree = sum(d == t for d, t in zip(drafts, got, strict=True))
    assert agree <= len(got) // 2


# --------------------------------------------------------------------------------------
# bench size (slow: ~0.6B parameters, ~660 MB, written once into the user cache)
# --------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_bench_model(llama: Llama, loaded: list[Any], arch: Arch) -> None:
    cache = os.environ.get("MTPSTREAM_CACHE_DIR")
    path = make_model(arch=arch, size="bench", cache_dir=cache)
    info = load_model(path)
    assert info.n_vocab >= 32768 and info.n_embd >= 1024 and info.n_layer - 1 >= 20
    spec = info.spec
    assert spec is not None and spec.head is not None
    model = _load(llama, loaded, path)
    n_params = llama.lib.llama_model_n_params(model)
    assert 0.3e9 <= n_params <= 1.0e9
    ctx = _ctx(llama, loaded, model)
    got, margins = llama.greedy(model, ctx, [spec.chain_start], 64)
    assert got == spec.chain(spec.chain_start, 64)
    assert min(margins) >= 8.0
    mctx = _ctx(llama, loaded, model, mtp=True)
    tokens = spec.chain(spec.chain_start, 32)
    hidden = np.zeros((len(tokens), info.n_embd), dtype=np.float32)
    assert llama.mtp_argmax(model, mctx, tokens, hidden) == [spec.head[t] for t in tokens]
