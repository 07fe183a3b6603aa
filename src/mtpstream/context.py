"""Contexts you drive yourself: :class:`Batch` and :class:`Context`.

The low-level layer under :class:`~mtpstream.DraftSession` (the Rust crate
``llama_cpp_4``'s contexts and batches): decode a batch on a target context, read
logits and the hidden rows an MTP head consumes by batch row, remove or copy a
sequence's cells. Every native call goes through ``_bridge``; calls from several
threads run one at a time (each context holds a lock, released while llama.cpp runs
without the GIL).
"""

from __future__ import annotations

import weakref
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from . import _bridge
from .errors import InvalidOptionError, NoMTPHeadError, SessionClosedError
from .model import Model
from .options import INT32_MAX, SessionOptions, validate

if TYPE_CHECKING:
    from .draft_session import DraftSession

__all__ = ["Batch", "Context"]


def _int(name: str, value: object, low: int, high: int = INT32_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidOptionError(f"{name} must be an int from {low} to {high} (got {value!r})", field=name)
    return value


class Batch:
    """Up to ``capacity`` (token, position, sequence id, logits flag) entries for
    :meth:`Context.decode` (llama.cpp's ``llama_batch``).

    Raises:
        InvalidOptionError: ``capacity`` is not an int from 1 to 2**31 - 1 (``field="capacity"``).
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = _int("capacity", capacity, 1)
        self._native = _bridge.new_batch(self._capacity)

    def add(self, token: int, pos: int, seq_id: int = 0, logits: bool = False) -> int:
        """Append an entry; returns its row (for :meth:`Context.logits` and
        :meth:`Context.hidden` after the decode).

        Raises:
            InvalidOptionError: the batch is full (``field="batch"``), or an argument is
                not an int >= 0 (``field`` names it); token ids and sequence ids are
                checked against the context by :meth:`Context.decode`.
        """
        if len(self) >= self._capacity:
            raise InvalidOptionError(f"the batch is full ({self._capacity} entries)", field="batch")
        _int("token", token, 0)
        _int("pos", pos, 0)
        _int("seq_id", seq_id, 0)
        return int(self._native.add(token, pos, seq_id, bool(logits)))

    def add_sequence(self, tokens: list[int], pos0: int, seq_id: int = 0, logits_last: bool = True) -> None:
        """Append ``tokens`` at positions ``pos0``.. of ``seq_id`` (logits for the last
        one when ``logits_last``). Raises as :meth:`add`."""
        for i, t in enumerate(tokens):
            self.add(t, pos0 + i, seq_id, logits_last and i == len(tokens) - 1)

    def clear(self) -> None:
        """Drop every entry."""
        self._native.clear()

    @property
    def native(self) -> _bridge.NativeBatch:
        """The native batch (Context and DraftSession pass it on)."""
        return self._native

    def __len__(self) -> int:
        return int(self._native.size)

    @property
    def capacity(self) -> int:
        return self._capacity

    def entry(self, i: int) -> tuple[int, int, int, bool]:
        """Entry ``i`` as (token, position, sequence id, logits flag).

        Raises:
            IndexError: ``i`` is not a row of the batch.
        """
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(self):
            raise IndexError(f"row {i!r} is not in a batch of {len(self)} entries")
        token, pos, seq, out = self._native.entry(i)
        return int(token), int(pos), int(seq), bool(out)


class Context:
    """A llama.cpp context over ``model`` that you drive yourself.

    ``kind="target"`` decodes your batches and exports, for every batch row, the hidden
    row an MTP head reads (:meth:`hidden`); ``kind="mtp"`` runs the model's MTP head and
    is decoded only by the :class:`~mtpstream.DraftSession` that uses it (the model may
    be an MTP-only sidecar). ``n_ctx`` is per sequence, ``n_seq`` sequences (ids
    0..n_seq-1), ``n_rs_seq`` recurrent-state snapshots per sequence (a hybrid target
    rolls rejected drafts back to one of them: set it to the longest draft). The other
    options are those of :func:`mtpstream.init`. The context holds the model's weights
    until it is closed (closing the :class:`~mtpstream.Model` only drops that handle).

    Raises:
        InvalidOptionError: an option is invalid (``field`` names it).
        NoMTPHeadError: ``kind="mtp"`` on a model without a loaded MTP head.
        SessionClosedError: the model is closed.
        MTPError: llama.cpp could not create the context.
    """

    def __init__(
        self,
        model: Model,
        kind: Literal["target", "mtp"] = "target",
        *,
        n_ctx: int = 2048,
        n_seq: int = 1,
        n_batch: int | None = None,
        n_ubatch: int | None = None,
        n_rs_seq: int = 0,
        **options: Any,
    ) -> None:
        if not isinstance(model, Model):
            raise TypeError(f"model must be an mtpstream.Model, not {type(model).__name__}")
        if kind not in ("target", "mtp"):
            raise InvalidOptionError(f"kind must be 'target' or 'mtp' (got {kind!r})", field="kind")
        allowed = {"n_threads", "n_threads_batch", "flash_attn", "type_k", "type_v"}
        for name in options:
            if name not in allowed:
                raise InvalidOptionError(f"unknown option '{name}'", field=name)
        opts = validate(
            SessionOptions,
            {"n_ctx": n_ctx, "n_seq": n_seq, "n_batch": n_batch, "n_ubatch": n_ubatch, **options},
        )
        _int("n_rs_seq", n_rs_seq, 0, 64)
        if kind == "mtp" and not model.has_mtp:
            raise NoMTPHeadError(
                f"'{model.path.name}' has no loaded MTP head: it cannot back an 'mtp' context"
            )
        sizes = {
            "n_ctx": opts.n_ctx,
            "n_seq": opts.n_seq,
            "n_batch": opts.n_batch or 0,
            "n_ubatch": opts.n_ubatch or 0,
            "n_rs_seq": n_rs_seq,
        }
        self._native: _bridge.NativeContext | None = _bridge.create_context(model.native, kind, sizes, opts)
        self._model = model
        self._kind: Literal["target", "mtp"] = kind
        self._sessions: weakref.WeakSet[DraftSession] = weakref.WeakSet()
        self._n_seq = opts.n_seq

    @classmethod
    def adopt(cls, model: Model, context: object, kind: Literal["target", "mtp"] = "target") -> Context:
        """Take over a llama_context made with llama-cpp-python's low-level API on
        ``model`` (``llama_cpp.llama_init_from_model(ctypes.c_void_p(
        model.llama_model_address), params)``; for ``kind="mtp"`` with ``params.ctx_type
        = 1``, llama.cpp's MTP context type): ``context`` is what that returned (a
        ``ctypes.c_void_p`` or its integer address). From here the context is this
        object's: :meth:`close` frees it, and you must not call ``llama_free`` on it.
        Its sizes (n_ctx per sequence, n_seq, n_batch) are read from llama.cpp; decode
        it through :meth:`decode` (a :class:`~mtpstream.DraftSession` checks each
        processed batch against the last one decoded here).

        Raises:
            InvalidOptionError: no context, ``kind`` not "target" or "mtp", or a context
                made from another model (``field="context"``; it is not taken over).
            NoMTPHeadError: ``kind="mtp"`` on a model without MTP layers.
            SessionClosedError: the model is closed.
        """
        if not isinstance(model, Model):
            raise TypeError(f"model must be an mtpstream.Model, not {type(model).__name__}")
        if kind not in ("target", "mtp"):
            raise InvalidOptionError(f"kind must be 'target' or 'mtp' (got {kind!r})", field="kind")
        address = getattr(context, "value", context)
        if isinstance(address, bool) or not isinstance(address, int) or address <= 0:
            raise InvalidOptionError(
                f"context must be a llama_context pointer (ctypes.c_void_p or int), not {context!r:.80}",
                field="context",
            )
        adopted = cls.__new__(cls)
        adopted._native = _bridge.adopt_context(model.native, address, kind)
        adopted._model, adopted._kind = model, kind
        adopted._sessions = weakref.WeakSet()
        adopted._n_seq = int(adopted._native.n_seq)
        return adopted

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Close the draft sessions that use this context, then free it (idempotent)."""
        for session in list(self._sessions):
            session.close()
        native, self._native = self._native, None
        if native is not None:
            native.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has freed the context."""
        return self._native is None

    def __enter__(self) -> Context:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"n_ctx={self.n_ctx} n_seq={self.n_seq}"
        return f"<mtpstream.Context {self._kind} {state}>"

    @property
    def native(self) -> _bridge.NativeContext:
        """The native context (DraftSession uses it). Raises :class:`SessionClosedError` once closed."""
        native = self._native
        if native is None:
            raise SessionClosedError("the context is closed")
        return native

    def register_session(self, session: DraftSession) -> None:
        """Close ``session`` when this context closes (DraftSession calls it)."""
        self._sessions.add(session)

    # ------------------------------------------------------------------ facts
    @property
    def model(self) -> Model:
        return self._model

    @property
    def kind(self) -> Literal["target", "mtp"]:
        return self._kind

    @property
    def n_ctx(self) -> int:
        """Positions per sequence."""
        return int(self.native.n_ctx)

    @property
    def n_seq(self) -> int:
        return self._n_seq

    @property
    def n_batch(self) -> int:
        """The most entries one :meth:`decode` takes."""
        return int(self.native.n_batch)

    # ------------------------------------------------------------------ decoding
    def decode(self, batch: Batch) -> None:
        """Decode ``batch`` (a target context only). Pass the same batch to
        :meth:`DraftSession.process` right after, if a session drafts for this context.

        Raises:
            InvalidOptionError: an empty or too large batch, a token, position or sequence
                id out of range, or an MTP context (``field="batch"``).
            GenerationError: llama.cpp refused the batch (e.g. positions that do not
                continue a sequence's memory) or failed.
            SessionClosedError: the context is closed.
        """
        if not isinstance(batch, Batch):
            raise TypeError(f"batch must be an mtpstream.Batch, not {type(batch).__name__}")
        native = self.native
        _bridge.checked(lambda: native.decode(batch.native))

    def logits(self, i: int) -> npt.NDArray[np.float32]:
        """The logits of row ``i`` of the last decoded batch (a copy, ``n_vocab`` floats).

        Raises:
            InvalidOptionError: ``i`` is not a row of the last batch, or its logits flag
                was off (``field="i"``).
            SessionClosedError: the context is closed.
        """
        native = self.native
        return _bridge.checked(lambda: native.logits(_int("i", i, 0)))

    def hidden(self, i: int) -> npt.NDArray[np.float32]:
        """The hidden row an MTP head reads ("nextn embeddings") of row ``i`` of the last
        decoded batch (a copy, ``n_embd`` floats). Raises as :meth:`logits`."""
        native = self.native
        return _bridge.checked(lambda: native.hidden(_int("i", i, 0)))

    # ------------------------------------------------------------------ memory
    def remove(self, seq_id: int, p0: int = 0, p1: int | None = None) -> None:
        """Remove positions ``p0``..``p1 - 1`` (``p1=None``: to the end) of ``seq_id``
        (``-1``: every sequence) from the memory.

        Raises:
            InvalidOptionError: ``seq_id`` out of range (``field="seq_id"``).
            GenerationError: llama.cpp cannot cut the memory there (a recurrent model
                rolls back only to one of its ``n_rs_seq`` snapshots).
            SessionClosedError: the context is closed.
        """
        native = self.native
        seq = -1 if seq_id == -1 else _int("seq_id", seq_id, 0)
        start, end = _int("p0", p0, 0), -1 if p1 is None else _int("p1", p1, 0)
        _bridge.checked(lambda: native.seq_rm(seq, start, end))

    def copy(self, src: int, dst: int, p0: int = 0, p1: int | None = None) -> None:
        """Copy positions ``p0``..``p1 - 1`` of sequence ``src`` to ``dst`` (shared cells).

        Raises:
            InvalidOptionError: ``src`` or ``dst`` out of range (``field`` names it).
            SessionClosedError: the context is closed.
        """
        native = self.native
        start, end = _int("p0", p0, 0), -1 if p1 is None else _int("p1", p1, 0)
        _bridge.checked(lambda: native.seq_cp(_int("src", src, 0), _int("dst", dst, 0), start, end))

    def pos_max(self, seq_id: int) -> int:
        """The last position of ``seq_id`` in the memory (-1: empty). Raises as :meth:`remove`."""
        native = self.native
        return int(_bridge.checked(lambda: native.seq_pos_max(_int("seq_id", seq_id, 0))))
