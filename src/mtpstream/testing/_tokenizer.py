"""A word-level byte-level-BPE ("gpt2" style) vocabulary for synthetic models.

The vocabulary has

* the 256 byte tokens (in the usual printable byte-to-unicode alphabet),
* every vocabulary word twice: bare (``word``) and with the leading-space
  marker (``\u0120word``, i.e. ``" word"``),
* a handful of ChatML special tokens at the end.

Merges are generated so that each vocabulary word, with or without the leading
space, tokenizes to exactly one token under llama.cpp's BPE rule (repeatedly
merge the adjacent pair with the lowest merge rank, leftmost first).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np

from ._words import english_words

SPACE_MARK = "\u0120"  # byte-level representation of " "

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, IM_START, IM_END)

TOKEN_TYPE_NORMAL = 1
TOKEN_TYPE_CONTROL = 3

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)


def byte_alphabet() -> list[str]:
    """Return the 256 single-character strings representing bytes 0..255.

    Printable latin-1 bytes stand for themselves; every other byte is assigned
    a code point from 256 upwards, in byte order.
    """
    printable = set(range(ord("!"), ord("~") + 1))
    printable |= set(range(0xA1, 0xAC + 1))
    printable |= set(range(0xAE, 0xFF + 1))
    out: list[str] = []
    extra = 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def _synthetic_words(count: int, exclude: set[str]) -> list[str]:
    """Deterministic pronounceable lowercase pseudo-words, none in ``exclude``."""
    consonants = "bdfgklmnprstvz"
    vowels = "aeiou"
    syllables = [c + v for c in consonants for v in vowels]
    out: list[str] = []
    seen = set(exclude)
    rng = np.random.default_rng(20240611)
    for n_syl in itertools.count(2):
        combos = ["".join(p) for p in itertools.product(syllables, repeat=n_syl)]
        order = rng.permutation(len(combos))
        for i in order:
            w = combos[int(i)]
            if w not in seen:
                seen.add(w)
                out.append(w)
                if len(out) >= count:
                    return out
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Vocab:
    """Token strings, their types, the word classes and special token ids."""

    tokens: tuple[str, ...]
    token_types: tuple[int, ...]
    words: tuple[str, ...]
    """Vocabulary words; index = word class id."""
    word_plain: tuple[int, ...]
    """Token id of each word without a leading space."""
    word_spaced: tuple[int, ...]
    """Token id of each word with a leading space."""
    bos_id: int
    eos_id: int
    pad_id: int
    im_start_id: int
    im_end_id: int

    @property
    def n_vocab(self) -> int:
        """Number of tokens."""
        return len(self.tokens)

    def merges(self) -> list[str]:
        """BPE merges (``"left right"``) that make every word a single token."""
        return list(_merges_for(self.tokens, self.token_types))


def build_vocab(min_vocab: int = 0) -> Vocab:
    """Build the vocabulary; pad with pseudo-words until it has ``min_vocab`` tokens."""
    return _build_vocab_cached(min_vocab)


@functools.lru_cache(maxsize=4)
def _build_vocab_cached(min_vocab: int) -> Vocab:
    words = english_words()
    tokens: list[str] = list(byte_alphabet())
    n_fixed = len(tokens) + len(SPECIAL_TOKENS)

    def size_with(ws: list[str]) -> int:
        # bare single-character words coincide with byte tokens
        return n_fixed + sum(1 if len(w) == 1 else 2 for w in ws)

    if size_with(words) < min_vocab:
        deficit = min_vocab - size_with(words)
        words = words + _synthetic_words((deficit + 1) // 2, set(words))

    index: dict[str, int] = {t: i for i, t in enumerate(tokens)}
    plain: list[int] = []
    spaced: list[int] = []
    for w in words:
        for form, sink in ((w, plain), (SPACE_MARK + w, spaced)):
            tid = index.get(form)
            if tid is None:
                tid = len(tokens)
                tokens.append(form)
                index[form] = tid
            sink.append(tid)
    types = [TOKEN_TYPE_NORMAL] * len(tokens)
    special_ids: dict[str, int] = {}
    for s in SPECIAL_TOKENS:
        special_ids[s] = len(tokens)
        tokens.append(s)
        types.append(TOKEN_TYPE_CONTROL)
    return Vocab(
        tokens=tuple(tokens),
        token_types=tuple(types),
        words=tuple(words),
        word_plain=tuple(plain),
        word_spaced=tuple(spaced),
        bos_id=special_ids[ENDOFTEXT],
        eos_id=special_ids[IM_END],
        pad_id=special_ids[ENDOFTEXT],
        im_start_id=special_ids[IM_START],
        im_end_id=special_ids[IM_END],
    )


def bpe_split(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges to ``symbols`` (lowest rank first, leftmost on ties)."""
    seq = list(symbols)
    while len(seq) > 1:
        best = -1
        best_rank = -1
        for i in range(len(seq) - 1):
            r = ranks.get((seq[i], seq[i + 1]))
            if r is not None and (best < 0 or r < best_rank):
                best, best_rank = i, r
        if best < 0:
            break
        seq[best : best + 2] = [seq[best] + seq[best + 1]]
    return seq


@functools.lru_cache(maxsize=4)
def _merges_for(tokens: tuple[str, ...], types: tuple[int, ...]) -> tuple[str, ...]:
    ranks: dict[tuple[str, str], int] = {}
    merges: list[str] = []
    for tok, typ in zip(tokens, types, strict=True):
        if typ != TOKEN_TYPE_NORMAL or len(tok) < 2:
            continue
        seq = bpe_split(list(tok), ranks)
        while len(seq) > 1:
            pair = (seq[0], seq[1])
            ranks[pair] = len(merges)
            merges.append(f"{seq[0]} {seq[1]}")
            seq = bpe_split(seq, ranks)
        if seq != [tok]:  # pragma: no cover - construction invariant
            raise AssertionError(f"merge construction failed for {tok!r}: {seq}")
    return tuple(merges)
