"""Oracle weights: a target with a known greedy successor map and an MTP head
that agrees with it except on a chosen fraction of tokens.

Construction (see :func:`oracle_layout`):

* Every token belongs to a *word class*; all tokens of a class share one
  random +-1 embedding vector ``B[c]`` (so RMSNorm leaves it unchanged).  A
  word's bare and space-prefixed tokens form the class; byte and special
  tokens are spread over the classes at random.
* The trunk's output projections are zero, so the final hidden state is the
  token embedding.  The LM head has row ``class_succ[c]`` equal to ``B[c]``
  (every other row zero), giving logit ``n_embd`` for the successor against
  ``B[c].B[c']`` (about ``sqrt(n_embd)``) for everything else.
* ``class_succ`` walks the classes along one random path: each class predicts
  the space-prefixed token of the next class; the last class is the stop word
  (``"end"``), which predicts EOS.  Greedy decoding from
  ``spec.chain_start`` therefore emits every word once, then " end", then EOS.
* The NextN block passes the token embedding through ``eh_proj`` and adds
  nothing else; its own ``shared_head_head`` equals the LM head except that
  for the error classes it predicts the bare (no-space) token of another
  word, which is never a correct successor.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._tokenizer import Vocab

STOP_WORD = "end"

_STREAM_PATH = 1
_STREAM_ERRORS = 2
_STREAM_WRONG = 3
_STREAM_CLASSES = 4
_STREAM_EMBED = 5


def rng_for(seed: int, stream: int, name: str = "") -> np.random.Generator:
    """Independent deterministic random stream for ``(seed, stream, name)``."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream, zlib.crc32(name.encode("utf-8"))]))


@dataclass(frozen=True)
class OracleSpec:
    """What an oracle-weight model does, token by token.

    ``succ[t]`` is the target's greedy next token after token ``t``;
    ``head[t]`` is the MTP head's prediction for the token after ``t``
    (``None`` for models without an MTP head).
    """

    succ: tuple[int, ...]
    head: tuple[int, ...] | None
    eos_token_id: int
    stop_word: str
    stop_token_id: int
    """The space-prefixed stop word; its successor is EOS."""
    chain_start: int
    """Token whose greedy chain visits every word once before reaching EOS."""
    mtp_error_rate: float

    @property
    def n_vocab(self) -> int:
        """Number of tokens."""
        return len(self.succ)

    @property
    def error_tokens(self) -> frozenset[int]:
        """Tokens after which the MTP head predicts something other than ``succ``."""
        if self.head is None:
            return frozenset()
        return frozenset(t for t, (s, h) in enumerate(zip(self.succ, self.head, strict=True)) if s != h)

    def chain(self, start: int, n: int) -> list[int]:
        """The ``n`` tokens greedy decoding emits after ``start`` (stops after EOS)."""
        out: list[int] = []
        t = start
        while len(out) < n:
            t = self.succ[t]
            out.append(t)
            if t == self.eos_token_id:
                break
        return out

    def steps_to_eos(self, start: int) -> int:
        """Number of tokens emitted after ``start`` up to and including EOS (-1 if never)."""
        t = start
        for i in range(1, len(self.succ) + 2):
            t = self.succ[t]
            if t == self.eos_token_id:
                return i
        return -1


@dataclass(frozen=True)
class OracleLayout:
    """Class-level description used to build the weights and the spec."""

    token_class: np.ndarray
    """int64[n_vocab]: class of each token."""
    class_succ: np.ndarray
    """int64[n_class]: target's predicted token for each class."""
    class_head: np.ndarray
    """int64[n_class]: MTP head's predicted token for each class."""
    chain_start: int
    stop_token_id: int
    eos_token_id: int

    @property
    def n_class(self) -> int:
        """Number of word classes."""
        return int(self.class_succ.shape[0])

    def class_vectors(self, seed: int, n_embd: int) -> np.ndarray:
        """The +-1 embedding vector of every class, float32[n_class, n_embd]."""
        rng = rng_for(seed, _STREAM_EMBED, str(n_embd))
        bits = rng.integers(0, 2, size=(self.n_class, n_embd), dtype=np.int8)
        return (bits.astype(np.float32) * 2.0 - 1.0).astype(np.float32)

    def spec(self, mtp_error_rate: float, with_head: bool) -> OracleSpec:
        """The token-level :class:`OracleSpec`."""
        succ = self.class_succ[self.token_class]
        head = self.class_head[self.token_class] if with_head else None
        return OracleSpec(
            succ=tuple(int(x) for x in succ),
            head=None if head is None else tuple(int(x) for x in head),
            eos_token_id=self.eos_token_id,
            stop_word=STOP_WORD,
            stop_token_id=self.stop_token_id,
            chain_start=self.chain_start,
            mtp_error_rate=mtp_error_rate,
        )


def n_error_classes(n_class: int, mtp_error_rate: float) -> int:
    """How many classes get a wrong MTP prediction."""
    return round(mtp_error_rate * n_class)


def oracle_layout(vocab: Vocab, seed: int, mtp_error_rate: float) -> OracleLayout:
    """Build the class structure.  The target part does not depend on the error rate."""
    m = len(vocab.words)
    stop = vocab.words.index(STOP_WORD)
    plain = np.asarray(vocab.word_plain, dtype=np.int64)
    spaced = np.asarray(vocab.word_spaced, dtype=np.int64)

    others = np.array([c for c in range(m) if c != stop], dtype=np.int64)
    path = np.concatenate([rng_for(seed, _STREAM_PATH).permutation(others), [stop]])
    class_succ = np.empty(m, dtype=np.int64)
    class_succ[path[:-1]] = spaced[path[1:]]
    class_succ[stop] = vocab.eos_id

    token_class = rng_for(seed, _STREAM_CLASSES).integers(0, m, size=vocab.n_vocab)
    token_class = token_class.astype(np.int64)
    token_class[plain] = np.arange(m)
    token_class[spaced] = np.arange(m)

    # error classes: a prefix of a fixed random order, so lower rates nest in higher
    n_err = n_error_classes(m, mtp_error_rate)
    err = rng_for(seed, _STREAM_ERRORS).permutation(m)[:n_err]
    wrong = rng_for(seed, _STREAM_WRONG).permutation(m)
    class_head = class_succ.copy()
    class_head[err] = plain[wrong[err]]
    return OracleLayout(
        token_class=token_class,
        class_succ=class_succ,
        class_head=class_head,
        chain_start=int(spaced[path[0]]),
        stop_token_id=int(spaced[stop]),
        eos_token_id=vocab.eos_id,
    )


def class_margins(vectors: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Per class: correct logit minus the best other logit, for an injective head.

    With rows ``B[c]`` placed at distinct output tokens (other rows zero), the
    correct logit is ``|B[c]|^2`` and a competitor's is ``B[c].B[c']`` (or 0
    for an unused row).
    """
    b = vectors.astype(np.float32)
    n = b.shape[0]
    out = np.empty(n, dtype=np.float64)
    self_dot = np.einsum("ij,ij->i", b, b)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        g = b[lo:hi] @ b.T
        g[np.arange(hi - lo), np.arange(lo, hi)] = -np.inf
        best_other = np.maximum(g.max(axis=1), 0.0)
        out[lo:hi] = self_dot[lo:hi] - best_other
    return out


@dataclass(frozen=True)
class AcceptanceResult:
    """Outcome of simulating MTP speculative decoding on an oracle model.

    ``tokens`` is the exact greedy sequence emitted after the prompt.  If
    generation reached EOS, EOS is the last element of ``tokens`` (it counts
    towards ``n_tokens``) and ``stopped_at_eos`` is true.
    """

    iters: int
    drafts_generated: int
    drafts_accepted: int
    tokens: tuple[int, ...]
    stopped_at_eos: bool

    @property
    def acceptance_rate(self) -> float:
        """``drafts_accepted / drafts_generated`` (0.0 when nothing was drafted)."""
        if self.drafts_generated == 0:
            return 0.0
        return self.drafts_accepted / self.drafts_generated


def simulate_acceptance(
    spec: OracleSpec, prompt_tokens: Sequence[int], n_draft: int, n_tokens: int
) -> AcceptanceResult:
    """Simulate the engine rule on ``spec`` (see :func:`expected_acceptance`)."""
    if spec.head is None:
        raise ValueError("this model has no MTP head (kind='plain'); nothing to draft")
    if not prompt_tokens:
        raise ValueError("prompt_tokens must not be empty")
    if n_draft < 0 or n_tokens < 0:
        raise ValueError("n_draft and n_tokens must be >= 0")
    succ, head, eos = spec.succ, spec.head, spec.eos_token_id
    for t in prompt_tokens:
        if not 0 <= t < len(succ):
            raise ValueError(f"token id {t} out of range")
    # The engine's rule: the first token comes from the prompt's own logits (no
    # drafting); then each iteration drafts k tokens by chaining the head map,
    # verifies them, accepts the prefix that matches the target (an EOS draft is
    # never "accepted": EOS is emitted as the target's token) and emits the
    # accepted drafts plus one token of the target.
    out: list[int] = []
    iters = generated = accepted = 0
    stopped = False
    if n_tokens > 0:
        last = succ[int(prompt_tokens[-1])]
        out.append(last)
        stopped = last == eos
    while len(out) < n_tokens and not stopped:
        k = max(0, min(n_draft, n_tokens - len(out) - 1))
        iters += 1
        generated += k
        d = last
        t = last
        for _ in range(k):
            d = head[d]
            nxt = succ[t]
            if d != nxt or nxt == eos:
                break
            accepted += 1
            out.append(nxt)
            t = nxt
        t = succ[t]  # the target's own token after the accepted drafts
        out.append(t)
        last = t
        stopped = t == eos
    return AcceptanceResult(
        iters=iters,
        drafts_generated=generated,
        drafts_accepted=accepted,
        tokens=tuple(out),
        stopped_at_eos=stopped,
    )


def analytic_acceptance(mtp_error_rate: float, n_draft: int) -> float:
    """Long-run expected ``accepted / drafted`` for ``n_draft`` drafts per iteration.

    Each draft is right with probability ``q = 1 - mtp_error_rate`` given the
    previous ones were, so an iteration accepts ``sum_{j=1..k} q^j`` drafts on
    average: the rate is ``q (1 - q^k) / (k (1 - q))``.
    """
    if n_draft < 1:
        raise ValueError("n_draft must be >= 1")
    if not 0.0 <= mtp_error_rate <= 1.0:
        raise ValueError("mtp_error_rate must be in [0, 1]")
    p = mtp_error_rate
    if p == 0.0:
        return 1.0
    q = 1.0 - p
    return q * (1.0 - q**n_draft) / (n_draft * p)
