"""Soft-oracle weights: a target and an MTP head that share a known, non-degenerate
next-token distribution, so acceptance at temperature > 0 has a known expectation.

Construction (see :func:`soft_layout`):

* There are ``n_embd`` classes; class ``c``'s vector is row ``c`` of a Sylvester
  Hadamard matrix (+-1 entries, rows exactly orthogonal, unchanged by RMSNorm).
  Every token belongs to one class (at random) and embeds as its class's row.
* As in the deterministic oracle the trunk's output projections are zero, so the
  final hidden state is the token's class row. Each class has three successor
  tokens (space-prefixed words, no token the successor of two classes). The LM
  head's row of successor ``i`` of class ``c`` is ``B[c] * v_i / n_embd``, every
  other row is zero, so after class ``c`` the successors have logits ``v_i`` and
  every other token logit 0, exactly (the rows are orthogonal).
* ``v_i = SOFT_OFFSET + log(TARGET_PROBS[i])``: at temperature 1 the target picks
  its successors with probabilities 0.5 / 0.3 / 0.2 (the other tokens share
  ``~n_vocab * e^-40``, nothing).
* The MTP head (``head="token"``: it reads the input token) is built the same way
  from ``q = (1 - e) * TARGET_PROBS + e * HEAD_SKEW`` with ``e`` the knob
  ``mtp_error_rate``: 0 gives the target's distribution, 1 gives 0.1 / 0.1 / 0.8.

Because every class has the same three logits (up to the file's rounding, which
:attr:`SoftSpec.target_logits` and :attr:`SoftSpec.head_logits` include), the
distributions after a sampler's transforms are the same at every position, and
with ``p`` and ``q`` the target's and the head's transformed distributions over the
three successors:

* ``verify="rejection"`` keeps a draft with probability ``sum_x min(p(x), q(x))``
  (:meth:`SoftSpec.rejection_acceptance`); at temperature 1 that is
  ``1 - e * 0.6`` (``0.6`` is the total variation between TARGET_PROBS and HEAD_SKEW);
* ``verify="match"`` drafts the head's argmax and keeps it with probability
  ``p(argmax q)`` (:meth:`SoftSpec.match_acceptance`);
* each draft of a verify is kept independently with that probability ``a`` given
  the ones before it were, so a verify of ``k`` drafts accepts ``a + a^2 + ... +
  a^k`` on average (:func:`accepted_per_verify`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._oracle import rng_for
from ._tokenizer import Vocab

TARGET_PROBS = (0.5, 0.3, 0.2)
"""The target's next-token distribution over a class's three successors at temperature 1."""
HEAD_SKEW = (0.1, 0.1, 0.8)
"""The head's distribution at ``mtp_error_rate=1`` (it mixes towards this)."""
SOFT_OFFSET = 40.0
"""How far above every other token's logit (0) a successor's logit lies."""

_STREAM_SOFT_CLASSES = 20
_STREAM_SOFT_SUCC = 21


def hadamard(n: int) -> np.ndarray:
    """The Sylvester Hadamard matrix of order ``n`` (a power of two), float32 +-1."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"a Sylvester Hadamard matrix needs a power of two, got {n}")
    h = np.ones((1, 1), dtype=np.float32)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def head_probs(mtp_error_rate: float) -> tuple[float, float, float]:
    """The head's distribution at temperature 1 for the knob ``mtp_error_rate``."""
    e = float(mtp_error_rate)
    a, b, c = ((1.0 - e) * t + e * s for t, s in zip(TARGET_PROBS, HEAD_SKEW, strict=True))
    return (a, b, c)


def stored_logits(probs: tuple[float, ...], n_embd: int, quantized: bool) -> tuple[float, float, float]:
    """The logits the file gives the three successors: ``SOFT_OFFSET + log(prob)``
    after the LM head row's rounding (F16 entries, or Q8_0 blocks whose activation
    is quantized too), as llama.cpp's CPU matmul computes them."""
    out = []
    for pr in probs:
        v = (SOFT_OFFSET + math.log(pr)) / n_embd
        if quantized:
            w = 127.0 * float(np.float16(v / 127.0))
            act = 127.0 * float(np.float16(1.0 / 127.0))
            out.append(n_embd * w * act)
        else:
            out.append(n_embd * float(np.float16(v)))
    return (out[0], out[1], out[2])


@dataclass(frozen=True)
class SoftSpec:
    """What a soft-oracle model does (see the module docstring)."""

    token_class: tuple[int, ...]
    successors: tuple[tuple[int, int, int], ...]
    """Per class, its three successor tokens in the order of :data:`TARGET_PROBS`."""
    target_logits: tuple[float, float, float]
    head_logits: tuple[float, float, float]
    mtp_error_rate: float

    @property
    def n_vocab(self) -> int:
        """Number of tokens."""
        return len(self.token_class)

    def next_tokens(self, token: int) -> tuple[int, int, int]:
        """The three tokens that may follow ``token`` (target and head alike)."""
        return self.successors[self.token_class[token]]

    def distributions(
        self, temp: float, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """The target's and the head's distributions over the three successors after
        the sampler's transforms, in llama.cpp's order (top-k, top-p and min-p on the
        temperature-1 distribution, then the temperature)."""
        if temp <= 0.0:
            raise ValueError("temp must be > 0 (at 0 both sides are their argmax)")
        return (
            transform(np.asarray(self.target_logits), temp, top_k, top_p, min_p),
            transform(np.asarray(self.head_logits), temp, top_k, top_p, min_p),
        )

    def rejection_acceptance(
        self, temp: float, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0
    ) -> float:
        """Probability that ``verify="rejection"`` keeps a draft: ``sum_x min(p(x), q(x))``."""
        p, q = self.distributions(temp, top_k, top_p, min_p)
        return float(np.minimum(p, q).sum())

    def match_acceptance(self, temp: float, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> float:
        """Probability that ``verify="match"`` keeps a draft: the target samples the
        head's greedy draft (its argmax), ``p(argmax q)``."""
        p, _ = self.distributions(temp, top_k, top_p, min_p)
        return float(p[int(np.argmax(self.head_logits))])


def accepted_per_verify(acceptance: float, n_draft: int) -> float:
    """Expected drafts kept by a verify of ``n_draft`` drafts when each is kept with
    probability ``acceptance`` given the ones before it were: ``sum_{j=1..k} a^j``."""
    return sum(acceptance**j for j in range(1, n_draft + 1))


def transform(logits: np.ndarray, temp: float, top_k: int, top_p: float, min_p: float) -> np.ndarray:
    """A distribution over ``logits``' entries after top-k, top-p, min-p (each on
    the temperature-1 softmax of what is left, at least one entry kept) and the
    temperature."""
    keep = np.ones(len(logits), dtype=bool)
    order = np.argsort(-logits, kind="stable")
    if top_k > 0:
        keep[order[top_k:]] = False
    if top_p < 1.0:
        p = _softmax(logits, keep)
        cum = np.cumsum(p[order])
        n_keep = int(np.searchsorted(cum, top_p) + 1)  # the smallest prefix reaching top_p
        keep[order[n_keep:]] = False
    if min_p > 0.0:
        p = _softmax(logits, keep)
        keep &= p >= min_p * p.max()
    return _softmax(logits / temp, keep)


def _softmax(logits: np.ndarray, keep: np.ndarray) -> np.ndarray:
    z = np.where(keep, logits, -np.inf)
    e = np.exp(z - z.max())
    out: np.ndarray = e / e.sum()
    return out


@dataclass(frozen=True)
class SoftLayout:
    """The class structure of a soft-oracle model and the weights it implies."""

    token_class: np.ndarray
    """int64[n_vocab]: class of each token."""
    successors: np.ndarray
    """int64[n_class, 3]: each class's successor tokens."""
    vectors: np.ndarray
    """float32[n_class, n_embd]: the classes' Hadamard rows."""

    def lm_head(self, n_vocab: int, logits: tuple[float, float, float]) -> np.ndarray:
        """float32[n_vocab, n_embd]: successor ``i`` of class ``c`` gets ``B[c] * logits[i] / n_embd``."""
        n_embd = self.vectors.shape[1]
        w = np.zeros((n_vocab, n_embd), dtype=np.float32)
        for i, v in enumerate(logits):
            w[self.successors[:, i]] = self.vectors * np.float32(v / n_embd)
        return w

    def spec(self, n_embd: int, quantized: bool, mtp_error_rate: float) -> SoftSpec:
        """The :class:`SoftSpec` of a file with these classes."""
        return SoftSpec(
            token_class=tuple(int(x) for x in self.token_class),
            successors=tuple((int(a), int(b), int(c)) for a, b, c in self.successors),
            target_logits=stored_logits(TARGET_PROBS, n_embd, quantized),
            head_logits=stored_logits(head_probs(mtp_error_rate), n_embd, quantized),
            mtp_error_rate=mtp_error_rate,
        )


def soft_layout(vocab: Vocab, seed: int, n_embd: int) -> SoftLayout:
    """``n_embd`` classes, a random class per token, three distinct word successors per class."""
    spaced = np.asarray(vocab.word_spaced, dtype=np.int64)
    if 3 * n_embd > len(spaced):  # pragma: no cover - config invariant
        raise AssertionError("not enough words for three successors per class")
    token_class = rng_for(seed, _STREAM_SOFT_CLASSES).integers(0, n_embd, size=vocab.n_vocab).astype(np.int64)
    picks = rng_for(seed, _STREAM_SOFT_SUCC).permutation(spaced)[: 3 * n_embd]
    return SoftLayout(token_class=token_class, successors=picks.reshape(n_embd, 3), vectors=hadamard(n_embd))
