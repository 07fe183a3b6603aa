"""DeepSeek V3.1 and later: ``<|tool_calls_begin|><|tool_call_begin|>NAME<|tool_sep|>{...}<|tool_call_end|>
...<|tool_calls_end|>``, the arguments JSON (the markers are written with the
fullwidth bar U+FF5C and U+2581 for the underscore, as DeepSeek's tokens are)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ._base import ParsedCall, ToolCallFormat, ToolParseError

__all__ = ["DEEPSEEK", "SEP"]


def _marker(words: str) -> str:
    """DeepSeek's spelling of ``<|words|>``: fullwidth bars, U+2581 between words."""
    return "<\uff5c" + words.replace("_", "\u2581") + "\uff5c>"


SEP = _marker("tool_sep")


def parse_body(body: str, tools: Mapping[str, Mapping[str, Any]]) -> ParsedCall:
    name, sep, raw = body.partition(SEP)
    if not sep or not name.strip():
        raise ToolParseError(f"no NAME{SEP} in the tool call")
    try:
        args = json.loads(raw)
    except ValueError as exc:
        raise ToolParseError(f"the tool call's arguments are not JSON ({exc})") from None
    if not isinstance(args, dict):
        raise ToolParseError("the tool call's arguments are not a JSON object")
    return ParsedCall(name.strip(), args)


DEEPSEEK = ToolCallFormat(
    name="deepseek",
    section_start=_marker("tool_calls_begin"),
    call_start=_marker("tool_call_begin"),
    call_end=_marker("tool_call_end"),
    section_end=_marker("tool_calls_end"),
    parse_body=parse_body,
    separator="",
)
