"""Token log-probabilities in OpenAI's shapes, attached to the chunks whose text
their tokens produced.

A token's text may be released later than its :class:`TokenEvent` (an unfinished
character or a possible stop string is held back), so :class:`LogprobTracker`
keeps each token until text from its start on has been released, then hands it to
the chunk carrying that text. Positions are counted in characters of the tokens'
pieces decoded the way the engine decodes them (ill-formed bytes become U+FFFD, as
Python's decoder does too). Tokens whose text never appears (the tokens of a stop
string, and the end-of-generation token, which has no :class:`TokenEvent`) are not
reported, as llama-server does.
"""

from __future__ import annotations

import codecs
import math
from collections import deque

from .completions import ChatCompletionTokenLogprob, ChoiceLogprobs, CompletionLogprobs, TopLogprob
from .events import TokenEvent, TokenLogprob

__all__ = ["LOGPROB_FLOOR", "LogprobTracker", "chat_logprobs", "completion_logprobs"]

LOGPROB_FLOOR = -9999.0
"""The least log-probability reported (OpenAI's floor; JSON has no -infinity)."""


class LogprobTracker:
    """Which tokens' log-probabilities a chunk carries: feed every :class:`TokenEvent`
    (:meth:`token`), then the text each chunk releases (:meth:`release`) and the end
    (:meth:`finish`)."""

    def __init__(self, offset: int = 0) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._decoded = offset  # characters of the tokens' pieces so far
        self._released = offset  # characters of text released so far
        self._pending: deque[tuple[int, TokenEvent]] = deque()  # (start, token)

    def token(self, ev: TokenEvent) -> None:
        """Record a token (one without log-probabilities is ignored)."""
        if ev.logprob is None:
            return
        self._pending.append((self._decoded, ev))
        self._decoded += len(self._decoder.decode(ev.logprob.piece))

    def release(self, text: str) -> list[tuple[int, TokenEvent]]:
        """The tokens (with their character offsets) whose text starts in what has been
        released once ``text`` is."""
        self._released += len(text)
        out: list[tuple[int, TokenEvent]] = []
        while self._pending and self._pending[0][0] < self._released:
            out.append(self._pending.popleft())
        return out

    def finish(self, text: str, stopped: bool) -> list[tuple[int, TokenEvent]]:
        """The last chunk's tokens: all that are left, except (``stopped``, a stop string
        ended the call) those whose text was cut off with the stop string."""
        out = self.release(text)
        if not stopped:
            out.extend(self._pending)
        self._pending.clear()
        return out


def _value(lp: float) -> float:
    return lp if math.isfinite(lp) and lp > LOGPROB_FLOOR else LOGPROB_FLOOR


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


def _top(t: TokenLogprob) -> TopLogprob:
    return TopLogprob(token=_text(t.piece), logprob=_value(t.logprob), bytes=list(t.piece))


def chat_logprobs(tokens: list[tuple[int, TokenEvent]]) -> ChoiceLogprobs:
    """A chat choice's ``logprobs`` for ``tokens`` (OpenAI's ``content`` entries)."""
    content = []
    for _, ev in tokens:
        lp = ev.logprob
        assert lp is not None
        content.append(
            ChatCompletionTokenLogprob(
                token=_text(lp.piece),
                logprob=_value(lp.logprob),
                bytes=list(lp.piece),
                top_logprobs=[_top(t) for t in ev.top_logprobs],
            )
        )
    return ChoiceLogprobs(content=content)


def completion_logprobs(tokens: list[tuple[int, TokenEvent]]) -> CompletionLogprobs:
    """A text completion's legacy ``logprobs`` for ``tokens``."""
    texts, values, tops, offsets = [], [], [], []
    for start, ev in tokens:
        lp = ev.logprob
        assert lp is not None
        texts.append(_text(lp.piece))
        values.append(_value(lp.logprob))
        top: dict[str, float] = {}
        for t in ev.top_logprobs:
            top.setdefault(_text(t.piece), _value(t.logprob))  # two ids may share a text
        tops.append(top)
        offsets.append(start)
    return CompletionLogprobs(tokens=texts, token_logprobs=values, top_logprobs=tops, text_offset=offsets)


def merge_chat(parts: list[ChoiceLogprobs]) -> ChoiceLogprobs:
    """The ``logprobs`` of a whole chat answer from its chunks'."""
    return ChoiceLogprobs(content=[c for p in parts for c in p.content or []])


def merge_completion(parts: list[CompletionLogprobs]) -> CompletionLogprobs:
    """The ``logprobs`` of a whole text completion from its chunks'."""
    return CompletionLogprobs(
        tokens=[t for p in parts for t in p.tokens],
        token_logprobs=[t for p in parts for t in p.token_logprobs],
        top_logprobs=[t for p in parts for t in p.top_logprobs],
        text_offset=[t for p in parts for t in p.text_offset],
    )
