"""A synthetic model carrying llama.cpp's real Qwen3.5 vocabulary and chat template
(for tests of tokenization with real special tokens)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from mtpstream._gguf_meta import read_gguf_header
from mtpstream.testing import make_model

LLAMA_CPP = Path("/tmp/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp")
VOCAB = LLAMA_CPP / "models" / "ggml-vocab-qwen35.gguf"
TEMPLATES = LLAMA_CPP / "models" / "templates"
QWEN35_TEMPLATE = TEMPLATES / "Qwen3.5-4B.jinja"


def available() -> bool:
    return VOCAB.exists() and QWEN35_TEMPLATE.exists()


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
