"""What every tool-call format shares: a parsed call, the format description and the
coercion of a parameter's text to the value its JSON schema asks for."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ParsedCall", "ToolCallFormat", "ToolParseError", "coerce_value", "property_schema"]


class ToolParseError(ValueError):
    """Tool-call markup that does not parse (the text is then kept as content)."""


@dataclass(frozen=True)
class ParsedCall:
    """One call the model wrote: the function's name and its arguments (a JSON object)."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ToolCallFormat:
    """How one template family writes tool calls.

    The model opens the calls with ``section_start``. Each call is ``call_start``,
    a body, ``call_end``; ``section_end`` (when the family has one) closes them all.
    When ``section_start == call_start`` each call is its own block. ``parse_body``
    turns a body into a :class:`ParsedCall` (raising :class:`ToolParseError`).
    """

    name: str
    section_start: str
    call_start: str
    call_end: str
    section_end: str | None
    parse_body: Any  # Callable[[str, Mapping[str, Any]], ParsedCall]; Any keeps the dataclass frozen-hashable
    separator: str = "\n"

    def parse(self, body: str, tools: Mapping[str, Mapping[str, Any]]) -> ParsedCall:
        call = self.parse_body(body, tools)
        assert isinstance(call, ParsedCall)
        return call


def property_schema(tools: Mapping[str, Mapping[str, Any]], name: str, key: str) -> Mapping[str, Any] | None:
    """The JSON schema of parameter ``key`` of tool ``name`` (None if unknown)."""
    params = tools.get(name, {})
    props = params.get("properties") if isinstance(params, Mapping) else None
    prop = props.get(key) if isinstance(props, Mapping) else None
    return prop if isinstance(prop, Mapping) else None


def _types(schema: Mapping[str, Any] | None) -> set[str]:
    if schema is None:
        return set()
    t = schema.get("type")
    if isinstance(t, str):
        return {t}
    if isinstance(t, list):
        return {x for x in t if isinstance(x, str)}
    if "enum" in schema and all(isinstance(v, str) for v in schema["enum"]):
        return {"string"}
    if isinstance(schema.get("const"), str):
        return {"string"}
    return set()


_PYTHON_LITERALS = {"True": True, "False": False, "None": None}


def coerce_value(text: str, schema: Mapping[str, Any] | None) -> Any:
    """A parameter's text as its value: kept as text where the schema says string,
    else decoded as JSON (templates write non-strings with ``tojson``, booleans
    sometimes with Python's ``str``), text when it is not JSON."""
    types = _types(schema)
    if types == {"string"}:
        return text
    try:
        value = json.loads(text)
    except ValueError:
        if text.strip() in _PYTHON_LITERALS:
            return _PYTHON_LITERALS[text.strip()]
        return text
    if isinstance(value, str) and "string" not in types and types:
        return value
    return value
