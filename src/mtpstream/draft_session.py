"""The low-level MTP draft session: :class:`DraftSession`.

mtpstream's counterpart of the Rust crate ``llama_cpp_4``'s ``MtpSession``, for
users who run their own loop over their own target :class:`~mtpstream.Context`
(their own sampler or verifier, research on acceptance, another scheduler). The
drafting is the engine's own code (the same draft chain and hidden-row pairing
that :func:`mtpstream.init` runs), and the lifetimes cannot go wrong: the session
holds its contexts (and their model); closing a context closes its sessions
first; a closed session raises :class:`SessionClosedError`; calls from several
threads run one at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

from . import _bridge
from .context import Batch, Context
from .errors import InvalidOptionError, NoMTPHeadError, SessionClosedError

__all__ = ["DraftSession"]


def _int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 2**31 - 1:
        raise InvalidOptionError(f"{name} must be an int >= {low} (got {value!r})", field=name)
    return value


class DraftSession:
    """Draft with a model's MTP head for a target context you decode yourself.

    ``target`` is a ``Context(model, "target")``; ``draft`` a ``Context(model, "mtp")``
    (the same model, or an MTP-only sidecar with the target's hidden width). ``n_seq``
    sequences (ids 0..n_seq-1, at most the contexts' own), up to ``n_draft_max`` drafts
    per :meth:`draft`. The loop::

        target.decode(batch); session.process(batch)        # the prompt
        last, n_past = <your sample of the last row>, len(prompt)
        while ...:
            drafts = session.draft(0, n_past, last)
            batch = [last at n_past, drafts at n_past + 1 ...], logits for all
            target.decode(batch); session.process(batch)
            n_acc, next_token = <your verify of the rows>
            session.accept(0, n_acc)
            target.remove(0, n_past + n_acc + 1)              # the rejected drafts
            n_past, last = n_past + n_acc + 1, next_token

    Raises:
        NoMTPHeadError: ``draft`` is not an MTP context and its model has no MTP head.
        InvalidOptionError: ``target``/``draft`` of the wrong kind, the same context, of
            different hidden widths; ``n_seq`` or ``n_draft_max`` out of range (``field``
            names the argument).
        SessionClosedError: a context is closed.
    """

    def __init__(self, target: Context, draft: Context, n_seq: int = 1, n_draft_max: int = 3) -> None:
        if not isinstance(target, Context) or not isinstance(draft, Context):
            raise TypeError("target and draft must be mtpstream.Context objects")
        if draft.kind != "mtp":
            if not draft.model.has_mtp:
                raise NoMTPHeadError(f"the draft context's model '{draft.model.path.name}' has no MTP head")
            raise InvalidOptionError("draft must be a Context of kind 'mtp'", field="draft")
        if target.kind != "target":
            raise InvalidOptionError("target must be a Context of kind 'target'", field="target")
        _int("n_seq", n_seq, 1)
        _int("n_draft_max", n_draft_max, 1)
        self._native: _bridge.NativeDraftSession | None = _bridge.create_draft_session(
            target.native, draft.native, n_seq, n_draft_max
        )
        self._target, self._draft = target, draft
        self._n_seq, self._n_draft_max = n_seq, n_draft_max
        target.register_session(self)
        draft.register_session(self)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Let go of the contexts (idempotent; waits for a call in another thread)."""
        native, self._native = self._native, None
        if native is not None:
            native.close()

    @property
    def closed(self) -> bool:
        return self._native is None

    def __enter__(self) -> DraftSession:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"n_seq={self._n_seq} n_draft_max={self._n_draft_max}"
        return f"<mtpstream.DraftSession {state}>"

    def _live(self) -> _bridge.NativeDraftSession:
        native = self._native
        if native is None:
            raise SessionClosedError("the DraftSession is closed")
        return native

    # ------------------------------------------------------------------ facts
    @property
    def need_embd(self) -> bool:
        """Always True: MTP drafting reads the target's hidden rows (the Rust crate's ``need_embd``)."""
        return True

    @property
    def n_seq(self) -> int:
        """The sequence ids this session drafts for: 0 .. n_seq - 1."""
        return self._n_seq

    @property
    def n_draft_max(self) -> int:
        """The most tokens one :meth:`draft` returns."""
        return self._n_draft_max

    @property
    def target(self) -> Context:
        """The target context the caller decodes and :meth:`process` reads."""
        return self._target

    @property
    def draft_context(self) -> Context:
        """The MTP context the session drafts on."""
        return self._draft

    # ------------------------------------------------------------------ the loop
    def begin(self, seq_id: int, prompt: Sequence[int] = ()) -> None:
        """Start a new generation on ``seq_id``: forget what the session knew of the
        sequence and clear its cells in the draft context. Call it before decoding the
        prompt; called after :meth:`process` of exactly ``prompt`` (the Rust crate's
        order) it changes nothing. A batch at position 0 also starts over.

        Raises:
            InvalidOptionError: ``seq_id`` out of range (``field="seq_id"``).
            SessionClosedError: the session or a context is closed.
        """
        native = self._live()
        tokens = [_int("prompt", t, 0) for t in prompt]
        _bridge.checked(lambda: native.begin(_int("seq_id", seq_id, 0), tokens))

    def process(self, batch: Batch) -> None:
        """Take in the batch just decoded on the target (every one: prompt chunks and
        verifies). The first entries of a sequence after :meth:`draft` must be
        ``id_last`` at ``n_past`` (the verify); its rows wait for :meth:`accept`.

        Raises:
            GenerationError: a batch it cannot use: not the target's last decoded batch,
                already processed, a sequence id >= n_seq, positions that are not
                consecutive or skip positions, or a verify that does not start at the draft.
            SessionClosedError: the session or a context is closed.
        """
        if not isinstance(batch, Batch):
            raise TypeError(f"batch must be an mtpstream.Batch, not {type(batch).__name__}")
        native = self._live()
        _bridge.checked(lambda: native.process(batch.native))

    def draft(self, seq_id: int, n_past: int, id_last: int, n_draft: int | None = None) -> list[int]:
        """Up to ``n_draft`` (default ``n_draft_max``) draft tokens after ``id_last``, the
        newest token of ``seq_id``, at position ``n_past``. A draft that was never
        verified is replaced.

        Raises:
            InvalidOptionError: ``seq_id``, ``id_last`` or ``n_draft`` out of range
                (``field`` names it).
            GenerationError: the session has not taken in the target's rows up to
                ``n_past - 1`` (a :meth:`process` is missing, e.g. of the batch holding the
                last accepted token), ``n_past`` is behind them, the last verify waits for
                :meth:`accept`, or llama.cpp failed (the sequence then starts over).
            SessionClosedError: the session or a context is closed.
        """
        native = self._live()
        k = -1 if n_draft is None else _int("n_draft", n_draft, 0)
        args = (_int("seq_id", seq_id, 0), _int("n_past", n_past, 0), _int("id_last", id_last, 0), k)
        return [int(t) for t in _bridge.checked(lambda: native.draft(*args))]

    def accept(self, seq_id: int, n_accepted: int) -> None:
        """``n_accepted`` drafts of the processed verify of ``seq_id`` were kept; the
        sequence's newest token is now the one your verify produced, at position
        ``n_past + n_accepted + 1``.

        Raises:
            InvalidOptionError: ``seq_id`` out of range, or ``n_accepted`` more than the
                drafts in the verify (``field`` names it).
            GenerationError: no draft to accept, or its verify was not processed.
            SessionClosedError: the session is closed.
        """
        native = self._live()
        args = (_int("seq_id", seq_id, 0), _int("n_accepted", n_accepted, 0))
        _bridge.checked(lambda: native.accept(*args))
