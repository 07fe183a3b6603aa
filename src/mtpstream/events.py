"""Events of :meth:`mtpstream.MTP.stream_events`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

from .stats import MTPStats, Usage

__all__ = ["DoneEvent", "EogEvent", "Event", "StatsEvent", "TokenEvent", "TokenLogprob"]


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A token and its log-probability under the target model's own distribution at
    one position: the log-softmax of the target's raw logits there (before
    ``logit_bias``, penalties, grammar, temperature and truncation, as llama-server
    reports by default), whatever drafted the token. ``piece`` is the token's bytes:
    for an emitted token as they enter the text (a control token renders empty), for
    an alternative with special tokens rendered as their text."""

    token_id: int
    piece: bytes
    logprob: float


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One generated token. ``text`` is always valid UTF-8 and may be ``""`` while
    bytes of an unfinished character, or of a possible stop string, are held back.

    With the ``logprobs=n`` option: ``logprob`` is the token's :class:`TokenLogprob`
    and ``top_logprobs`` the ``n`` most likely tokens at its position, most likely
    first (``None`` and ``()`` without the option)."""

    token_id: int
    text: str
    logprob: TokenLogprob | None = None
    top_logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class StatsEvent:
    """Every ``emit_stats_every`` tokens: the session's counters at that point."""

    stats: MTPStats


@dataclass(frozen=True, slots=True)
class DoneEvent:
    """Terminal: ``finish_reason`` is ``"length"`` (max_tokens or context full) or
    ``"stop"`` (a stop string; no part of it is emitted). ``text`` is text that was
    held back until the end (usually ``""``); ``stop`` the stop string that matched
    (None unless ``finish_reason`` is ``"stop"``)."""

    stats: MTPStats
    usage: Usage
    finish_reason: Literal["length", "stop"]
    text: str = ""
    stop: str | None = None


@dataclass(frozen=True, slots=True)
class EogEvent:
    """Terminal: the model produced an end-of-generation token (``token_id``),
    which gets no :class:`TokenEvent`. ``text`` is held-back text released at the end."""

    stats: MTPStats
    usage: Usage
    token_id: int
    text: str = ""


Event = Union[TokenEvent, StatsEvent, DoneEvent, EogEvent]  # noqa: UP007
