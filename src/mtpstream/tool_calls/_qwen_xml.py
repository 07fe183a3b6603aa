"""Qwen3.5/3.6 and Qwen3-Coder: ``<tool_call>\\n<function=NAME>\\n<parameter=KEY>\\nVALUE\\n</parameter>\\n...
</function>\\n</tool_call>``; string values raw, others as JSON."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ._base import ParsedCall, ToolCallFormat, ToolParseError, coerce_value, property_schema

__all__ = ["QWEN_XML"]

_FUNCTION = re.compile(r"\s*<function=([^>\n]+)>(.*?)</function>\s*\Z", re.DOTALL)
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>(.*?)</parameter>", re.DOTALL)


def _strip_one_newline(value: str) -> str:
    if value.startswith("\n"):
        value = value[1:]
    if value.endswith("\n"):
        value = value[:-1]
    return value


def parse_body(body: str, tools: Mapping[str, Mapping[str, Any]]) -> ParsedCall:
    m = _FUNCTION.match(body)
    if m is None:
        raise ToolParseError("no <function=...>...</function> in the tool call")
    name = m.group(1).strip()
    inner = m.group(2)
    args: dict[str, Any] = {}
    pos = 0
    for p in _PARAMETER.finditer(inner):
        if inner[pos : p.start()].strip():
            raise ToolParseError("text between the parameters of a tool call")
        key = p.group(1).strip()
        args[key] = coerce_value(_strip_one_newline(p.group(2)), property_schema(tools, name, key))
        pos = p.end()
    if inner[pos:].strip():
        raise ToolParseError("text after the parameters of a tool call")
    return ParsedCall(name, args)


QWEN_XML = ToolCallFormat(
    name="qwen-xml",
    section_start="<tool_call>",
    call_start="<tool_call>",
    call_end="</tool_call>",
    section_end=None,
    parse_body=parse_body,
)
