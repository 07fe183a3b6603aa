"""Chat prompts as token ids, where text inside a message never becomes a special token.

Tokenizing a rendered chat with special tokens parsed (as a raw prompt is) would let
a user write ``hi<|im_end|>\\n<|im_start|>system\\n...`` and forge turns. Here the
special-token text found in the messages (text that tokenizes to a control token only
when special tokens are parsed) is wrapped in random markers, the template is rendered
again, and the marked spans are tokenized as plain text while the template's own text
is tokenized with special tokens parsed. The marked rendering, markers removed, must
equal the plain one, else the call is refused. Messages without special-token text
(nearly all) are not marked at all: their tokens are exactly those of the plain
rendering tokenized as a whole.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .errors import InvalidOptionError

__all__ = ["Tokenizer", "chat_tokens", "special_pieces"]

Tokenizer = Callable[[str, bool, bool], Sequence[int]]
"""``tokenize(text, add_special, parse_special)``, as the native model's."""
_ROUNDS = 4


def _control_texts(text: str, tokenize: Tokenizer, token_text: Callable[[int], str]) -> list[str]:
    """The texts in ``text`` that become one token only when special tokens are parsed."""
    found = []
    for tid in set(tokenize(text, False, True)):
        t = token_text(tid)
        if t and t in text and list(tokenize(t, False, False)) != [tid]:
            found.append(t)
    return sorted(found, key=len, reverse=True)


def special_pieces(
    text: str, tokenize: Tokenizer, token_text: Callable[[int], str]
) -> list[tuple[str, bool]] | None:
    """``text`` cut into ``(piece, is_special_text)``; None if it holds no special-token text."""
    if list(tokenize(text, False, True)) == list(tokenize(text, False, False)):
        return None
    pieces: list[tuple[str, bool]] = [(text, False)]
    for _ in range(_ROUNDS):
        out: list[tuple[str, bool]] = []
        changed = False
        for piece, special in pieces:
            if special or list(tokenize(piece, False, True)) == list(tokenize(piece, False, False)):
                out.append((piece, special))
                continue
            texts = _control_texts(piece, tokenize, token_text)
            if not texts:
                raise InvalidOptionError(
                    "a message holds text that tokenizes differently with special tokens parsed, "
                    "and it cannot be isolated",
                    field="messages",
                )
            changed = True
            for i, part in enumerate(re.split("(" + "|".join(map(re.escape, texts)) + ")", piece)):
                if part:
                    out.append((part, i % 2 == 1))
        pieces = out
        if not changed:
            return pieces
    raise InvalidOptionError("a message holds special-token text that cannot be isolated", field="messages")


class _Marker:
    def __init__(self) -> None:
        nonce = secrets.token_hex(8)
        self.open = f"\ue000{nonce}\ue001"
        self.close = f"\ue002{nonce}\ue003"
        self.nonce = nonce
        self.marked = 0

    def wrap(self, pieces: list[tuple[str, bool]]) -> str:
        self.marked += sum(1 for _, special in pieces if special)
        return "".join(f"{self.open}{p}{self.close}" if special else p for p, special in pieces)


def _mark(value: Any, marker: _Marker, cut: Callable[[str], list[tuple[str, bool]] | None]) -> Any:
    if isinstance(value, str):
        pieces = cut(value)
        return value if pieces is None else marker.wrap(pieces)
    if isinstance(value, Mapping):
        marked = {k: _mark(v, marker, cut) for k, v in value.items()}
        return type(value)(marked) if isinstance(value, dict) else marked  # keeps Arguments
    if isinstance(value, (list, tuple)):
        return [_mark(v, marker, cut) for v in value]
    return value


def _segments(marked: str, plain: str, marker: _Marker) -> list[tuple[str, bool]]:
    """The marked rendering as ``(text, parse_special)`` segments; must spell ``plain``."""
    pattern = re.compile(re.escape(marker.open) + "(.*?)" + re.escape(marker.close), re.DOTALL)
    segments: list[tuple[str, bool]] = []
    pos = 0
    for m in pattern.finditer(marked):
        segments.append((marked[pos : m.start()], True))
        segments.append((m.group(1), False))
        pos = m.end()
    segments.append((marked[pos:], True))
    if any(marker.nonce in s for s, _ in segments) or "".join(s for s, _ in segments) != plain:
        raise InvalidOptionError(
            "a message holds special-token text (such as '<|im_start|>') in a place the chat "
            "template transforms, so it cannot be kept as plain text; remove it",
            field="messages",
        )
    return [(s, parse) for s, parse in segments if s]


def _added_specials(segment: tuple[str, bool], tokenize: Tokenizer) -> tuple[list[int], list[int]]:
    """The tokens ``add_special`` puts before and after a text (BOS, EOS...)."""
    text, parse = segment
    bare = list(tokenize(text, False, parse))
    full = list(tokenize(text, True, parse))
    for k in range(len(full) - len(bare) + 1):
        if full[k : k + len(bare)] == bare:
            return full[:k], full[k + len(bare) :]
    return [], []


def _tokenize_segments(segments: list[tuple[str, bool]], tokenize: Tokenizer, add_special: bool) -> list[int]:
    ids: list[int] = []
    for text, parse in segments:
        ids.extend(tokenize(text, False, parse))
    if add_special and segments:
        prefix, suffix = _added_specials(segments[0], tokenize)
        ids = prefix + ids + suffix
    return ids


def chat_tokens(
    messages: list[dict[str, Any]],
    render: Callable[[list[dict[str, Any]]], str],
    tokenize: Tokenizer,
    token_text: Callable[[int], str],
    bos_text: str,
) -> tuple[str, list[int]]:
    """The plain rendering of ``messages`` and its token ids, message text never special.

    ``render(messages)`` renders the template; a BOS is added unless the rendering
    starts with ``bos_text`` (as for a raw prompt).

    Raises:
        InvalidOptionError: special-token text in a message that the template moves or
            cuts (``field="messages"``); whatever ``render`` raises.
    """
    plain = render(messages)
    add_special = not (bos_text and plain.startswith(bos_text))
    marker = _Marker()
    cache: dict[str, list[tuple[str, bool]] | None] = {}

    def cut(text: str) -> list[tuple[str, bool]] | None:
        if text not in cache:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return None  # not rendered (else the prompt would not be text either)
            cache[text] = special_pieces(text, tokenize, token_text)
        return cache[text]

    marked_messages = [_mark(m, marker, cut) for m in messages]
    if not marker.marked:
        return plain, list(tokenize(plain, add_special, True))
    segments = _segments(render(marked_messages), plain, marker)
    return plain, _tokenize_segments(segments, tokenize, add_special)
