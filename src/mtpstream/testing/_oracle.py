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
* The NextN block's draft depends on the *head mode*:

  - ``"token"``: ``eh_proj`` passes the token embedding through and the
    head's ``shared_head_head`` equals the LM head except that for the error
    classes it predicts the bare (no-space) token of another word, which is
    never a correct successor.  The draft reads the input token alone.
  - ``"hidden"``: the draft reads only the hidden row it is fed (the target's
    row for the previous position at the first step, the MTP context's own
    output row inside the draft chain).  See :func:`head_targets`.
  - ``"kv"``: the draft reads only the value the head's attention finds in its
    own KV cache at the previous position (written there from that entry's
    hidden row), so a missing or stale MTP KV entry changes the draft.
  - ``"kv2"``: the same, two positions back: it sees the entries the MTP context
    was fed before the newest one (catch-up pairs, a reused sequence's memory).

  In every mode, when the rows and the KV are right, the draft for the token
  after ``t`` is the same, so the three modes have the same expected
  acceptance; a wrong row or KV entry shows as lost acceptance only in the
  modes that read it.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ._tokenizer import Vocab

STOP_WORD = "end"

_STREAM_PATH = 1
_STREAM_ERRORS = 2
_STREAM_WRONG = 3
_STREAM_CLASSES = 4
_STREAM_EMBED = 5


HeadMode = Literal["token", "hidden", "kv", "kv2"]
HEAD_MODES: tuple[HeadMode, ...] = ("token", "hidden", "kv", "kv2")
HEAD_LAG: dict[str, int] = {"token": 0, "hidden": 1, "kv": 2, "kv2": 3}
"""How many positions back the head's information comes from: the draft made at
input position ``P`` is ``head[token at P - lag]``."""


def rng_for(seed: int, stream: int, name: str = "") -> np.random.Generator:
    """Independent deterministic random stream for ``(seed, stream, name)``."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream, zlib.crc32(name.encode("utf-8"))]))


@dataclass(frozen=True)
class OracleSpec:
    """What an oracle-weight model does, token by token.

    ``succ[t]`` is the target's greedy next token after token ``t``.
    ``head`` (``None`` for models without an MTP head) is the MTP head's map:
    a draft step whose input token sits at position ``P`` predicts
    ``head[token at P - head_lag]`` for position ``P + 1`` (``head_lag`` is 0
    for ``head_mode="token"``, 1 for ``"hidden"``, 2 for ``"kv"``, 3 for ``"kv2"``); -1
    marks a prediction that is never a correct successor (past the end of the
    chain, or no information at all).
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
    head_mode: str = "token"

    @property
    def head_lag(self) -> int:
        """Positions back the head reads (0 token, 1 hidden row, 2 own KV, 3 own KV two back)."""
        return HEAD_LAG[self.head_mode]

    @property
    def n_vocab(self) -> int:
        """Number of tokens."""
        return len(self.succ)

    @property
    def error_tokens(self) -> frozenset[int]:
        """Tokens ``t`` whose successor the head gets wrong when it drafts it from
        the right information (the token, or the token ``head_lag`` back on the chain)."""
        if self.head is None:
            return frozenset()
        lag = self.head_lag
        out = set()
        for t in range(len(self.succ)):
            src = t
            for _ in range(lag):
                src = self.pred.get(src, -1)
                if src < 0:
                    break
            if src >= 0 and self.head[src] != self.succ[t]:
                out.add(t)
        return frozenset(out)

    @property
    def pred(self) -> dict[int, int]:
        """One token whose successor is ``t``, for every ``t`` that has one."""
        out: dict[int, int] = {}
        for t, s in enumerate(self.succ):
            out.setdefault(s, t)
        return out

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

    @property
    def class_next(self) -> np.ndarray:
        """int64[n_class]: the class of each class's successor token (the path's next class)."""
        out: np.ndarray = self.token_class[self.class_succ]
        return out

    @property
    def stop_class(self) -> int:
        """The class of the stop word (its successor is EOS)."""
        return int(self.token_class[self.stop_token_id])

    def head_targets(self, lag: int) -> np.ndarray:
        """int64[n_class]: the head's prediction when it reads class ``c`` from ``lag``
        positions back: ``class_head`` of the class ``lag`` steps further along the
        path, or -1 where the path reaches the stop word before that (the true
        successor there lies past EOS, so no draft can be right)."""
        cls = np.arange(self.n_class, dtype=np.int64)
        valid = np.ones(self.n_class, dtype=bool)
        nxt = self.class_next
        for _ in range(lag):
            valid &= cls != self.stop_class
            cls = nxt[cls]
        return np.where(valid, self.class_head[cls], -1).astype(np.int64)

    def class_vectors(self, seed: int, n_embd: int, const_dim: bool = False) -> np.ndarray:
        """The +-1 embedding vector of every class, float32[n_class, n_embd].

        ``const_dim``: dimension 0 is +1 in every vector (a constant input the
        ``"kv"`` head's attention uses for its positional query and key).
        """
        rng = rng_for(seed, _STREAM_EMBED, str(n_embd))
        bits = rng.integers(0, 2, size=(self.n_class, n_embd), dtype=np.int8)
        if const_dim:
            bits[:, 0] = 1
        return (bits.astype(np.float32) * 2.0 - 1.0).astype(np.float32)

    def spec(self, mtp_error_rate: float, with_head: bool, head_mode: HeadMode = "token") -> OracleSpec:
        """The token-level :class:`OracleSpec`."""
        succ = self.class_succ[self.token_class]
        head = self.head_targets(HEAD_LAG[head_mode])[self.token_class] if with_head else None
        return OracleSpec(
            succ=tuple(int(x) for x in succ),
            head=None if head is None else tuple(int(x) for x in head),
            eos_token_id=self.eos_token_id,
            stop_word=STOP_WORD,
            stop_token_id=self.stop_token_id,
            chain_start=self.chain_start,
            mtp_error_rate=mtp_error_rate,
            head_mode=head_mode,
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
    spec: OracleSpec,
    prompt_tokens: Sequence[int],
    n_draft: int,
    n_tokens: int,
    rollback: Literal["snapshots", "replay"] = "snapshots",
) -> AcceptanceResult:
    """Simulate the engine rule on ``spec`` (see :func:`expected_acceptance`)."""
    head = _check_simulation(spec, prompt_tokens, n_draft, n_tokens, rollback)
    succ, eos, lag = spec.succ, spec.eos_token_id, spec.head_lag
    # The engine's rule: the first token comes from the prompt's own logits (no
    # drafting); then each iteration drafts k tokens, verifies them, accepts the
    # prefix that matches the target (an EOS draft is never "accepted": EOS is
    # emitted as the target's token) and emits the accepted drafts plus one
    # token of the target.  Draft step j feeds the token at position P (the last
    # emitted token, then draft j-1) and predicts head[token at P - lag].
    seq = [int(t) for t in prompt_tokens]  # every token at its position
    out: list[int] = []
    iters = generated = accepted = 0
    stopped = False
    replaying = 0  # rollback="replay": tokens the next verify decodes again
    if n_tokens > 0:
        last = succ[seq[-1]]
        out.append(last)
        seq.append(last)
        stopped = last == eos
    while len(out) < n_tokens and not stopped:
        k = max(0, min(n_draft - replaying, n_tokens - len(out) - 1))
        iters += 1
        generated += k
        pos = len(seq) - 1  # position of the last token
        drafts = _drafts(head, seq, pos, k, lag)
        t = seq[-1]
        n_acc = 0
        for d in drafts:
            nxt = succ[t]
            if d != nxt or nxt == eos:
                break
            n_acc += 1
            out.append(nxt)
            seq.append(nxt)
            t = nxt
        accepted += n_acc
        if rollback == "replay":
            replaying = replaying + 1 + n_acc if n_acc < k else 0
        t = succ[t]  # the target's own token after the accepted drafts
        out.append(t)
        seq.append(t)
        stopped = t == eos
    return AcceptanceResult(
        iters=iters,
        drafts_generated=generated,
        drafts_accepted=accepted,
        tokens=tuple(out),
        stopped_at_eos=stopped,
    )


def _check_simulation(
    spec: OracleSpec, prompt_tokens: Sequence[int], n_draft: int, n_tokens: int, rollback: str
) -> Sequence[int]:
    """The arguments of :func:`simulate_acceptance` checked; returns the head's table.

    Raises:
        ValueError: a bad argument, or a model without an MTP head.
    """
    if rollback not in ("snapshots", "replay"):
        raise ValueError("rollback must be 'snapshots' or 'replay'")
    if spec.head is None:
        raise ValueError("this model has no MTP head (kind='plain'); nothing to draft")
    if not prompt_tokens:
        raise ValueError("prompt_tokens must not be empty")
    if n_draft < 0 or n_tokens < 0:
        raise ValueError("n_draft and n_tokens must be >= 0")
    for t in prompt_tokens:
        if not 0 <= t < len(spec.succ):
            raise ValueError(f"token id {t} out of range")
    return spec.head


def _drafts(head: Sequence[int], seq: Sequence[int], pos: int, k: int, lag: int) -> list[int]:
    """The k drafts of one iteration: step j feeds the token at ``pos + j`` (the last
    emitted token, then draft j-1) and predicts ``head[token at pos + j - lag]``."""
    chain = list(seq)
    drafts: list[int] = []
    for j in range(k):
        src = pos + j - lag
        d = head[chain[src]] if src >= 0 else -1
        drafts.append(d)
        chain.append(d)
    return drafts


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
