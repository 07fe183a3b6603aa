"""GLM-4.5 and later: ``<tool_call>NAME<arg_key>KEY</arg_key><arg_value>VALUE</arg_value>...</tool_call>``
(newlines between the parts in GLM-4.5/4.6, none in GLM-4.7); string values raw,
others as JSON."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ._base import ParsedCall, ToolCallFormat, ToolParseError, coerce_value, property_schema

__all__ = ["GLM"]

_PAIR = re.compile(r"\s*<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.DOTALL)


def parse_body(body: str, tools: Mapping[str, Mapping[str, Any]]) -> ParsedCall:
    cut = body.find("<arg_key>")
    name = (body if cut < 0 else body[:cut]).strip()
    if not name or "<" in name or "\n" in name:
        raise ToolParseError("no function name at the start of the tool call")
    args: dict[str, Any] = {}
    pos = len(body) if cut < 0 else cut
    while pos < len(body):
        m = _PAIR.match(body, pos)
        if m is None:
            if body[pos:].strip():
                raise ToolParseError("malformed <arg_key>/<arg_value> pairs in the tool call")
            break
        key = m.group(1).strip()
        args[key] = coerce_value(m.group(2), property_schema(tools, name, key))
        pos = m.end()
    return ParsedCall(name, args)


GLM = ToolCallFormat(
    name="glm",
    section_start="<tool_call>",
    call_start="<tool_call>",
    call_end="</tool_call>",
    section_end=None,
    parse_body=parse_body,
)
