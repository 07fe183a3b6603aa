"""Hyperparameter checks on a GGUF's metadata, run before llama.cpp sees the file.

llama.cpp asserts (aborts the process) on some inconsistent values instead of
failing the load; each check here turns one of those into a
:class:`~mtpstream.ModelLoadError` naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .errors import ModelLoadError

__all__ = ["check_hyperparameters"]

MAX_LAYERS = 512  # LLAMA_MAX_LAYERS
MAX_EXPERTS = 1024  # LLAMA_MAX_EXPERTS
MAX_WIDTH = 1 << 20
# architectures whose Gated-DeltaNet layers need ssm.inner_size == state_size * time_step_rank
_GATED_DELTA_NET = ("qwen35", "qwen35moe", "qwen3next")


def _scalar_int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


class _Keys:
    """One file's metadata as the checks read it: ``field(key)`` (None when absent)."""

    def __init__(self, name: str, field: Callable[[str], Any]) -> None:
        self.name = name
        self.field = field

    def bad(self, key: str, why: str) -> ModelLoadError:
        return ModelLoadError(f"'{self.name}' has an invalid '{key}': {why}")

    def int_in(self, key: str, lo: int, hi: int) -> int | None:
        """The key's integer in ``[lo, hi]`` (None when absent or an array, whose every
        value is checked)."""
        v = self.field(key)
        if v is None:
            return None
        iv = _scalar_int(v)
        if iv is None:
            if isinstance(v, list):
                for x in v:
                    xi = _scalar_int(x)
                    if xi is None or not lo <= xi <= hi:
                        raise self.bad(key, f"every value must be an integer in [{lo}, {hi}], got {x!r}")
                return None
            raise self.bad(key, f"expected an integer, got {v!r}")
        if not lo <= iv <= hi:
            raise self.bad(key, f"must be in [{lo}, {hi}], got {iv}")
        return iv

    def positive_float(self, key: str) -> None:
        v = self.field(key)
        if v is not None and (not isinstance(v, float) or not math.isfinite(v) or v <= 0.0):
            raise self.bad(key, f"must be a finite number > 0, got {v!r}")


def check_hyperparameters(name: str, field: Callable[[str], Any], arch: str) -> None:
    """Raise :class:`ModelLoadError` for metadata llama.cpp would abort on.

    ``field(key)`` returns a key's value (None when absent); ``name`` is the file's
    name for the messages.
    """
    k = _Keys(name, field)
    a = arch
    n_layer = k.int_in(f"{a}.block_count", 1, MAX_LAYERS)
    k.int_in(f"{a}.nextn_predict_layers", 0, n_layer if n_layer is not None else MAX_LAYERS)
    k.int_in(f"{a}.embedding_length", 1, MAX_WIDTH)
    k.int_in(f"{a}.feed_forward_length", 0, 1 << 24)
    head_k = _check_attention(k, a)
    _check_rope(k, a, head_k)
    n_expert = k.int_in(f"{a}.expert_count", 0, MAX_EXPERTS)
    used = k.int_in(f"{a}.expert_used_count", 0, MAX_EXPERTS)
    if n_expert is not None and used is not None and used > n_expert:
        raise k.bad(f"{a}.expert_used_count", f"{used} exceeds expert_count {n_expert}")
    for key in (f"{a}.attention.layer_norm_rms_epsilon", f"{a}.attention.layer_norm_epsilon"):
        k.positive_float(key)
    k.positive_float(f"{a}.rope.freq_base")
    if arch in _GATED_DELTA_NET:
        _check_ssm(k, a)
    _check_vocab(field, k.bad)


def _check_attention(k: _Keys, a: str) -> int | None:
    """Head counts and lengths; returns ``attention.key_length`` (None when absent)."""
    n_head = k.int_in(f"{a}.attention.head_count", 0, 1 << 14)
    n_head_kv = k.int_in(f"{a}.attention.head_count_kv", 0, 1 << 14)
    if n_head and n_head_kv and n_head % n_head_kv != 0:
        raise k.bad(f"{a}.attention.head_count_kv", f"{n_head_kv} does not divide head_count {n_head}")
    head_k = k.int_in(f"{a}.attention.key_length", 0, 1 << 16)
    k.int_in(f"{a}.attention.value_length", 0, 1 << 16)
    return head_k


def _check_rope(k: _Keys, a: str, head_k: int | None) -> None:
    n_rot = k.int_in(f"{a}.rope.dimension_count", 0, head_k if head_k else 1 << 16)
    if n_rot is not None and n_rot % 2:
        raise k.bad(
            f"{a}.rope.dimension_count", f"must be even (rotary dimensions come in pairs), got {n_rot}"
        )
    sections = k.field(f"{a}.rope.dimension_sections")
    if (
        isinstance(sections, list)
        and n_rot is not None
        and (any(_scalar_int(x) is None or x < 0 for x in sections) or sum(sections) > n_rot // 2)
    ):
        raise k.bad(
            f"{a}.rope.dimension_sections",
            f"{sections} must be counts >= 0 summing to at most rope.dimension_count / 2 ({n_rot // 2})",
        )


def _check_ssm(k: _Keys, a: str) -> None:
    inner = k.int_in(f"{a}.ssm.inner_size", 0, MAX_WIDTH)
    state = k.int_in(f"{a}.ssm.state_size", 0, MAX_WIDTH)
    rank = k.int_in(f"{a}.ssm.time_step_rank", 0, MAX_WIDTH)
    k.int_in(f"{a}.ssm.group_count", 0, MAX_WIDTH)
    k.int_in(f"{a}.ssm.conv_kernel", 0, 1 << 10)
    if inner is not None and state is not None and rank is not None and inner != state * rank:
        expected = state * rank
        raise k.bad(f"{a}.ssm.inner_size", f"{inner} != ssm.state_size * ssm.time_step_rank ({expected})")


# llama.cpp's default BOS/EOS/SEP ids per tokenizer model (used when the key is absent)
_DEFAULT_SPECIAL: dict[str, dict[str, int]] = {
    "llama": {"bos": 1, "eos": 2},
    "bert": {"bos": 101, "sep": 102},
    "gpt2": {"bos": 11, "eos": 11},
    "hybriddna": {"bos": 11, "eos": 11},
    "whitespace": {"bos": 11, "eos": 11},
    "t5": {"eos": 1},
    "plamo2": {"bos": 1, "eos": 2},
}
_ID_KEYS = (
    "bos_token_id",
    "eos_token_id",
    "eot_token_id",
    "eom_token_id",
    "padding_token_id",
    "unknown_token_id",
    "seperator_token_id",
    "mask_token_id",
)


def _check_vocab(field: Callable[[str], Any], bad: Callable[[str, str], ModelLoadError]) -> None:
    tokens = field("tokenizer.ggml.tokens")
    if tokens is None:
        return
    n = len(tokens) if isinstance(tokens, list) else -1
    if n <= 0:
        raise bad("tokenizer.ggml.tokens", "expected a non-empty list of tokens")
    _check_duplicates(tokens, bad)
    for key in ("tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
        v = field(key)
        if v is not None and (not isinstance(v, list) or len(v) != n):
            size = len(v) if isinstance(v, list) else type(v).__name__
            raise bad(key, f"has {size} entries for {n} tokens")
    for name in _ID_KEYS:
        key = f"tokenizer.ggml.{name}"
        v = field(key)
        iv = _scalar_int(v)
        if v is not None and (iv is None or not -1 <= iv < n) and not (iv is not None and iv >= 2**31):
            raise bad(key, f"token id {v!r} is outside the vocabulary of {n} tokens")
    merges = field("tokenizer.ggml.merges")
    if merges is not None and (not isinstance(merges, list) or not all(isinstance(m, str) for m in merges)):
        raise bad("tokenizer.ggml.merges", "expected a list of strings")
    _check_added_specials(field, bad, n)


def _check_duplicates(tokens: list[Any], bad: Callable[[str, str], ModelLoadError]) -> None:
    """llama.cpp asserts that every token text is distinct, as it reads them: up to the
    first NUL byte (a C string), an empty one named ``[EMPTY_<id>]``. A set over the
    list finds a duplicate in ~20 ms at 250k tokens."""
    if not all(isinstance(t, str) for t in tokens):
        raise bad("tokenizer.ggml.tokens", "expected a list of strings")
    texts = [t.partition("\x00")[0] if "\x00" in t else t for t in tokens]
    texts = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(texts)]
    if len(set(texts)) == len(texts):
        return
    first: dict[str, int] = {}
    for i, t in enumerate(texts):
        if t in first:
            raise bad("tokenizer.ggml.tokens", f"token {i} {t!r} duplicates token {first[t]}")
        first[t] = i


def _check_added_specials(
    field: Callable[[str], Any], bad: Callable[[str, str], ModelLoadError], n: int
) -> None:
    """``add_bos_token`` / ``add_eos_token`` / ``add_sep_token`` need that token:
    llama.cpp asserts on it at every tokenization (the key's id, else the tokenizer
    model's default, counts when it lies inside the vocabulary)."""
    model = field("tokenizer.ggml.model")
    defaults = _DEFAULT_SPECIAL.get(model, {}) if isinstance(model, str) else {}
    for kind, id_key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("sep", "seperator_token_id")):
        add_key = f"tokenizer.ggml.add_{kind}_token"
        if field(add_key) is not True:
            continue
        tid = _scalar_int(field(f"tokenizer.ggml.{id_key}"))
        if tid is None or not 0 <= tid < n:
            tid = defaults.get(kind)
        if tid is None or not 0 <= tid < n:
            raise bad(add_key, f"is true but the vocabulary of {n} tokens has no {kind.upper()} token")
