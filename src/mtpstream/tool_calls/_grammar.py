"""GBNF grammars for forced tool calls (``tool_choice`` ``"required"`` or a named
function): the model must write the calls in its template's format, and each call's
arguments must match the tool's JSON schema. The schemas go through llama-cpp-python's
converter (``llama_cpp.llama_grammar.SchemaConverter``, what ``response_format`` uses),
bounded as :mod:`mtpstream._grammar_limits` bounds it; the whole grammar passes
:func:`~mtpstream._grammar_limits.check_grammar`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ._base import ToolCallFormat
from ._deepseek import DEEPSEEK, SEP
from ._glm import GLM
from ._hermes import HERMES
from ._qwen_xml import QWEN_XML

__all__ = ["excluding", "forced_call_grammar", "literal"]

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def literal(text: str) -> str:
    """``text`` as a GBNF string literal."""
    return json.dumps(text, ensure_ascii=False)


def _char_class(chars: str) -> str:
    out = "".join("\\" + c if c in "]\\^-" else c for c in dict.fromkeys(chars))
    return "[^" + out.replace("\n", "\\n") + "]"


def excluding(stop: str) -> str:
    """A GBNF expression for any text that does not contain ``stop`` (whose first
    character must not occur again in it, as in ``</parameter>``)."""
    c0 = stop[0]
    assert c0 not in stop[1:], stop

    def chain(i: int) -> str:
        other = _char_class(c0 + stop[i])
        if i == len(stop) - 1:
            return other
        return f"({other} | {literal(stop[i])} {chain(i + 1)})"

    def tail(i: int) -> str:
        return "" if i >= len(stop) - 1 else f"({literal(stop[i])} {tail(i + 1)})?"

    elem = f"{_char_class(c0)} | {literal(c0)}+ {chain(1)}"
    return f"({elem})* ({literal(c0)}+ {tail(1)})?"


class _Builder:
    def __init__(self) -> None:
        from llama_cpp.llama_grammar import SchemaConverter

        self.conv: Any = SchemaConverter(  # type: ignore[no-untyped-call]
            prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
        )
        self.rules: dict[str, str] = {}

    def json_rule(self, schema: Mapping[str, Any], name: str) -> str:
        resolved = self.conv.resolve_refs(dict(schema), name)
        return str(self.conv.visit(resolved, name))

    def text_value(self, schema: Mapping[str, Any], stop: str, name: str) -> str:
        """A raw (unquoted) string value: an enum's or const's literals, a bounded run
        of characters for ``maxLength``, else any text without ``stop``."""
        values = schema.get("enum", [schema["const"]] if "const" in schema else None)
        if isinstance(values, list) and values and all(isinstance(v, str) for v in values):
            return "(" + " | ".join(literal(v) for v in values) + ")"
        hi = schema.get("maxLength")
        if isinstance(hi, int) and hi >= 0:
            lo = schema.get("minLength", 0)
            lo = lo if isinstance(lo, int) and 0 <= lo <= hi else 0
            return f"{_char_class(stop[0])}{{{lo},{hi}}}"
        rule = "text-" + "".join(c for c in stop if c.isalpha())
        self.rules[rule] = excluding(stop)
        return rule

    def grammar(self, root: str) -> str:
        lines = [f"root ::= {root}"] + [f"{k} ::= {v}" for k, v in self.rules.items()]
        return "\n".join(lines) + "\n" + str(self.conv.format_grammar()) + "\n"


def _is_text(schema: Mapping[str, Any]) -> bool:
    t = schema.get("type")
    if t == "string":
        return True
    values = schema.get("enum", [schema["const"]] if "const" in schema else None)
    return t is None and isinstance(values, list) and bool(values) and all(isinstance(v, str) for v in values)


def _params(schema: Mapping[str, Any]) -> tuple[list[tuple[str, Mapping[str, Any]]], set[str]]:
    props = schema.get("properties")
    items = [(k, v) for k, v in props.items() if isinstance(v, Mapping)] if isinstance(props, Mapping) else []
    required = schema.get("required")
    return items, set(required) if isinstance(required, list) else set()


def _keyed_call(b: _Builder, i: int, name: str, schema: Mapping[str, Any], fmt: ToolCallFormat) -> str:
    """XML-like formats: one rule per parameter, in the schema's order, the required ones
    mandatory."""
    parts: list[str] = []
    items, required = _params(schema)
    for j, (key, sub) in enumerate(items):
        if fmt is QWEN_XML:
            stop, head, foot = "</parameter>", f"<parameter={key}>\n", "\n</parameter>\n"
        else:
            stop, head, foot = "</arg_value>", f"<arg_key>{key}</arg_key>\n<arg_value>", "</arg_value>\n"
        value = (
            b.text_value(sub, stop, f"tool{i}-p{j}") if _is_text(sub) else b.json_rule(sub, f"tool{i}-p{j}")
        )
        piece = f"{literal(head)} {value} {literal(foot)}"
        parts.append(piece if key in required else f"({piece})?")
    body = " ".join(parts) if parts else '""'
    if fmt is QWEN_XML:
        return f'"<tool_call>\\n<function=" {literal(name)} ">\\n" {body} "</function>\\n</tool_call>"'
    return f'"<tool_call>" {literal(name)} "\\n" {body} "</tool_call>"'


def _call(b: _Builder, i: int, name: str, schema: Mapping[str, Any], fmt: ToolCallFormat) -> str:
    if fmt is QWEN_XML or fmt is GLM:
        return _keyed_call(b, i, name, schema, fmt)
    args = b.json_rule(schema, f"tool{i}-args")
    if fmt is HERMES:
        head = '<tool_call>\n{"name": ' + json.dumps(name, ensure_ascii=False) + ', "arguments": '
        return f'{literal(head)} {args} "}}\\n</tool_call>"'
    if fmt is DEEPSEEK:
        return f"{literal(DEEPSEEK.call_start + name + SEP)} {args} {literal(DEEPSEEK.call_end)}"
    raise ValueError(f"no grammar for the tool-call format {fmt.name!r}")


def forced_call_grammar(
    fmt: ToolCallFormat,
    tools: Sequence[tuple[str, Mapping[str, Any]]],
    *,
    parallel: bool,
    reasoning: str | None,
) -> str:
    """The grammar of one call (or, with ``parallel``, one or more) of ``tools``
    (``(name, parameters schema)`` pairs) in ``fmt``. ``reasoning``: ``"open"`` when the
    prompt leaves the model inside ``<think>``, ``"optional"`` when it may open one, else
    None. Raises what the converter raises for a schema it cannot convert."""
    b = _Builder()
    for i, (name, schema) in enumerate(tools):
        b.rules[f"tool{i}"] = _call(b, i, name, schema, fmt)
    b.rules["call"] = " | ".join(f"tool{i}" for i in range(len(tools)))
    if fmt is DEEPSEEK:
        more = "+" if parallel else ""
        calls = f"{literal(DEEPSEEK.section_start)} call{more} {literal(DEEPSEEK.section_end or '')}"
    else:
        calls = f"call ({literal(fmt.separator)} call)*" if parallel else "call"
    if reasoning is not None:
        b.rules["reasoning"] = excluding(THINK_CLOSE)
        think = f"reasoning {literal(THINK_CLOSE)} [ \\n]{{0,4}}"
        if reasoning == "optional":
            think = f"([ \\n]{{0,2}} {literal(THINK_OPEN)} {think})?"
        calls = f"{think} {calls}"
    return b.grammar(calls)
