"""Hermes, Qwen2.5 and Qwen3: ``<tool_call>\\n{"name": NAME, "arguments": {...}}\\n</tool_call>``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ._base import ParsedCall, ToolCallFormat, ToolParseError

__all__ = ["HERMES"]


def parse_body(body: str, tools: Mapping[str, Mapping[str, Any]]) -> ParsedCall:
    try:
        obj = json.loads(body)
    except ValueError as exc:
        raise ToolParseError(f"the tool call is not JSON ({exc})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ToolParseError('the tool call is not {"name": ..., "arguments": {...}}')
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            raise ToolParseError("the tool call's arguments are not a JSON object") from None
    if not isinstance(args, dict):
        raise ToolParseError("the tool call's arguments are not a JSON object")
    return ParsedCall(obj["name"], args)


HERMES = ToolCallFormat(
    name="hermes",
    section_start="<tool_call>",
    call_start="<tool_call>",
    call_end="</tool_call>",
    section_end=None,
    parse_body=parse_body,
)
