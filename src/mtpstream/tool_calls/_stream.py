"""Splitting generated text into content and tool calls as it streams."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._base import ParsedCall, ToolCallFormat, ToolParseError

__all__ = ["ToolCallSplitter"]


def _held(buf: str, marker: str) -> int:
    """Length of the longest end of ``buf`` that could begin ``marker``."""
    for n in range(min(len(buf), len(marker) - 1), 0, -1):
        if marker.startswith(buf[-n:]):
            return n
    return 0


class ToolCallSplitter:
    """Feeds on the model's text; returns content pieces (``str``) and the calls
    (:class:`ParsedCall`) in order. Text that might begin a call is held back until it
    does or cannot; whitespace right before or after calls is dropped; a call whose
    markup does not parse is returned as content."""

    def __init__(self, fmt: ToolCallFormat, tools: Mapping[str, Mapping[str, Any]]) -> None:
        self._fmt = fmt
        self._tools = tools
        self._buf = ""
        self._ws = ""  # trailing whitespace of the content, held
        self._in_section = False
        self._after_call = False
        self.calls = 0

    def feed(self, text: str) -> list[str | ParsedCall]:
        self._buf += text
        out: list[str | ParsedCall] = []
        while self._step(out):
            pass
        return out

    def finish(self) -> list[str | ParsedCall]:
        out: list[str | ParsedCall] = []
        rest, self._buf = self._buf, ""
        if self._in_section and rest.strip():  # cut off inside the markup: kept as text
            opened = self._fmt.section_start if self._fmt.section_start != self._fmt.call_start else ""
            self._content(out, opened + rest.lstrip())
        elif not self._in_section:
            self._content(out, rest)
        if self._ws and not self.calls:
            out.append(self._ws)
        self._ws = ""
        return out

    def _content(self, out: list[str | ParsedCall], text: str) -> None:
        text = self._ws + text
        if self._after_call:
            text = text.lstrip()
        stripped = text.rstrip()
        self._ws = text[len(stripped) :]
        if stripped:
            out.append(stripped)
            self._after_call = False

    def _step(self, out: list[str | ParsedCall]) -> bool:
        fmt = self._fmt
        if not self._in_section:
            i = self._buf.find(fmt.section_start)
            if i < 0:
                keep = _held(self._buf, fmt.section_start)
                self._content(out, self._buf[: len(self._buf) - keep])
                self._buf = self._buf[len(self._buf) - keep :]
                return False
            self._content(out, self._buf[:i])
            self._ws = ""
            skip = len(fmt.section_start) if fmt.section_start != fmt.call_start else 0
            self._buf = self._buf[i + skip :]
            self._in_section = True
            return True
        buf = self._buf.lstrip()
        if not buf:
            self._buf = ""
            return False
        if fmt.section_end is not None and buf.startswith(fmt.section_end):
            self._buf = buf[len(fmt.section_end) :]
            self._in_section = False
            return True
        if buf.startswith(fmt.call_start):
            j = buf.find(fmt.call_end, len(fmt.call_start))
            if j < 0:
                self._buf = buf
                return False
            body = buf[len(fmt.call_start) : j]
            self._buf = buf[j + len(fmt.call_end) :]
            try:
                out.append(fmt.parse(body, self._tools))
                self.calls += 1
                self._after_call = True
                self._ws = ""
            except ToolParseError:
                self._content(out, fmt.call_start + body + fmt.call_end)
            return True
        if fmt.call_start.startswith(buf) or (fmt.section_end or "\0").startswith(buf):
            self._buf = buf
            return False
        self._buf = buf
        self._in_section = False
        return True
