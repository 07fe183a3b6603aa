"""A tiny random-weight qwen35 model with llama.cpp's real Qwen3.5 vocabulary
(``models/ggml-vocab-qwen35.gguf``) and any chat template from llama.cpp's
``models/templates/`` (both from the llama.cpp vendored in llama-cpp-python's sdist,
:mod:`.llama_cpp_source`), written once into the model cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from . import llama_cpp_source
from ._api import _file_lock, default_cache_dir, make_model

__all__ = ["make_real_vocab_model", "template_path"]

DEFAULT_TEMPLATE = "Qwen3.5-4B"

# The added tokens of Qwen2.5/Qwen3/Qwen3.5 models that llama.cpp's vocabulary file
# leaves as [PAD] slots: user-defined tokens, so "<tool_call>" in text is one token, as
# in a real model's GGUF.
QWEN_ADDED_TOKENS = {
    151657: "<tool_call>",
    151658: "</tool_call>",
    151665: "<tool_response>",
    151666: "</tool_response>",
    151667: "<think>",
    151668: "</think>",
}
_USER_DEFINED = 4  # llama.cpp's LLAMA_TOKEN_TYPE_USER_DEFINED


def template_path(template: str | os.PathLike[str], source: Path | None = None) -> Path:
    """A template of llama.cpp's ``models/templates/`` by name (``"Qwen3-Coder"``) or a path.

    Raises:
        FileNotFoundError: no such template, or no llama.cpp source (``python -m
            mtpstream.testing.llama_cpp_source`` fetches it).
    """
    path = Path(template)
    if path.is_file():
        return path
    root = source or llama_cpp_source.find()
    if root is None:
        raise FileNotFoundError("no llama.cpp source: run `python -m mtpstream.testing.llama_cpp_source`")
    named = root / "models" / "templates" / f"{Path(template).name.removesuffix('.jinja')}.jinja"
    if not named.is_file():
        raise FileNotFoundError(f"no chat template {named}")
    return named


def make_real_vocab_model(
    template: str | os.PathLike[str] = DEFAULT_TEMPLATE,
    cache_dir: str | os.PathLike[str] | None = None,
    dst: str | os.PathLike[str] | None = None,
    added_tokens: bool = False,
) -> Path:
    """The tiny plain random qwen35 model with the real Qwen3.5 vocabulary (embedding
    and output resized to it, random) and ``template`` as ``tokenizer.chat_template``:
    a llama.cpp template's name or a file. Cached by the template's text unless ``dst``.
    ``added_tokens``: also the model's added tokens (``<tool_call>``, ``<think>``, ...,
    :data:`QWEN_ADDED_TOKENS`) in the slots the vocabulary file leaves as padding, so
    they tokenize as one token each, as in a real Qwen3.5 GGUF.

    Raises:
        FileNotFoundError: as :func:`template_path`; no ``ggml-vocab-qwen35.gguf``.
    """
    source = llama_cpp_source.find()
    text = template_path(template, source).read_text()
    if source is None:
        raise FileNotFoundError("no llama.cpp source: run `python -m mtpstream.testing.llama_cpp_source`")
    vocab = source / "models" / "ggml-vocab-qwen35.gguf"
    if not vocab.is_file():
        raise FileNotFoundError(f"no {vocab}")
    if dst is not None:
        return _write(Path(dst), vocab, text, added_tokens)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12] + ("-added" if added_tokens else "")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"qwen35-tiny-random-realvocab-{digest}.gguf"
    with _file_lock(root / ".realvocab.lock"):
        if not path.is_file():
            tmp = path.with_suffix(".tmp")
            _write(tmp, vocab, text, added_tokens)
            tmp.replace(path)
    return path


def _write(dst: Path, vocab_path: Path, template: str, added_tokens: bool) -> Path:
    import gguf
    import numpy as np

    from .._gguf_meta import read_gguf_header

    src = make_model(arch="qwen35", weights="random", size="tiny", kind="plain")
    base = gguf.GGUFReader(str(src), "r")
    vocab = read_gguf_header(vocab_path)
    n_vocab = len(vocab.kv["tokenizer.ggml.tokens"])
    arch = base.get_field("general.architecture")
    assert arch is not None
    w = gguf.GGUFWriter(str(dst), str(arch.contents()))
    try:
        for key, f in base.fields.items():
            if key.startswith(("GGUF.", "tokenizer.")) or key == "general.architecture":
                continue
            sub = f.types[1] if f.types[0] == gguf.GGUFValueType.ARRAY and len(f.types) > 1 else None
            w.add_key_value(key, f.contents(), f.types[0], sub_type=sub)
        for key, value in vocab.kv.items():
            if not key.startswith("tokenizer.") or key == "tokenizer.chat_template":
                continue
            if added_tokens:
                value = _with_added_tokens(key, value)
            types = vocab.types[key]
            sub_type = gguf.GGUFValueType(types[1]) if len(types) > 1 else None
            w.add_key_value(key, value, gguf.GGUFValueType(types[0]), sub_type=sub_type)
        w.add_string("tokenizer.chat_template", template)
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


def _with_added_tokens(key: str, value: object) -> object:
    """The token list or token types with :data:`QWEN_ADDED_TOKENS` written in."""
    if key not in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type") or not isinstance(value, list):
        return value
    out = list(value)
    for token_id, text in QWEN_ADDED_TOKENS.items():
        out[token_id] = text if key == "tokenizer.ggml.tokens" else _USER_DEFINED
    return out
