"""A synthetic model carrying llama.cpp's real Qwen3.5 vocabulary and chat template
(for tests of tokenization with real special tokens).

The files come from the llama.cpp vendored in the pinned llama-cpp-python's sdist
(:mod:`mtpstream.testing.llama_cpp_source`; ``scripts/dev.sh setup`` fetches it once).
A test that needs them calls :func:`require`: without them it skips, but under ``CI=true`` it
fails, so CI cannot pass with these tests silently skipped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mtpstream.testing import llama_cpp_source, make_real_vocab_model

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


def write_real_vocab_model(dst: Path, template: str = "Qwen3.5-4B") -> Path:
    """The tiny plain random qwen35 model with the real vocabulary (embedding and output
    resized to it, random) and ``template`` (a llama.cpp template's name) as its chat
    template (:func:`mtpstream.testing.make_real_vocab_model`)."""
    return make_real_vocab_model(template, dst=dst)


def qwen35_tiny_with_template(directory: Path) -> Path:
    """The tiny random-weight MTP model with the real Qwen3.5 chat template (its own
    synthetic vocabulary): what the server tests of tools, Responses and Messages serve.
    Calls :func:`require` first."""
    from gguf_edit import copy_with
    from mtpstream.testing import make_model

    require()
    src = make_model(arch="qwen35", weights="random", size="tiny", kind="mtp")
    return copy_with(
        src, directory / "qwen35-tiny-template.gguf", {"tokenizer.chat_template": QWEN35_TEMPLATE.read_text()}
    )


def thinking_off_server_args(key: str) -> list[str]:
    """``serve`` arguments of those tests: the key, the alias ``tiny``, a 4096-token
    context and thinking off by default (a random model never closes its ``<think>``;
    tests turn it on per request)."""
    import json

    off = json.dumps({"enable_thinking": False})
    return ["--api-key", key, "--model-alias", "tiny", "--n-ctx", "4096", "--chat-template-kwargs", off]
