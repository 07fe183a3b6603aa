"""Static limits on GBNF grammars and JSON schemas, checked before llama.cpp sees them.

llama.cpp's grammar parser recurses once per nested group (a deep nesting overflows
the calling thread's stack), and its sampler keeps one *stack* per way the text so far
can be parsed: building and advancing those stacks costs about the square of their
number, for every generated token. Nothing in llama.cpp bounds either, so every
grammar (``grammar``, or the one converted from ``response_format``) passes
:func:`check_grammar` first, and every JSON schema passes :func:`check_schema`
before llama-cpp-python's converter (which writes ``maxLength: n`` as ``n`` nested
groups and recurses in Python) runs.

The bounds:

* the text: :data:`MAX_GRAMMAR_BYTES`, group nesting :data:`MAX_GRAMMAR_DEPTH`
  (llama.cpp's parser uses ~400 bytes of stack per level), ``{m,n}`` counts
  :data:`MAX_GRAMMAR_REPETITION`, and :data:`MAX_GRAMMAR_ELEMENTS` once written out;
* the stacks: :func:`._gbnf.probe` plays llama.cpp's stack machine for
  :data:`PROBE_STEPS` characters and refuses a grammar holding more than
  :data:`MAX_GRAMMAR_STACKS` stacks or needing more than :data:`MAX_GRAMMAR_STEP_WORK`
  stack expansions for one character (nested repetitions of something that can be
  empty multiply both: ``(a{0,1000}){0,1000}`` wedged a worker);
* schemas: :data:`MAX_SCHEMA_COUNT` for length/item counts and regex repetitions
  (and their product when nested), :data:`MAX_SCHEMA_PROPERTIES`, :data:`MAX_SCHEMA_DEPTH`,
  :data:`MAX_SCHEMA_NODES`, :data:`MAX_SCHEMA_PATTERN`.

The numbers were chosen with ``scripts/grammar_cost.py`` (see there and the tests).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from . import _gbnf
from .errors import InvalidOptionError

__all__ = [
    "MAX_GRAMMAR_BYTES",
    "MAX_GRAMMAR_DEPTH",
    "MAX_GRAMMAR_ELEMENTS",
    "MAX_GRAMMAR_REPETITION",
    "MAX_GRAMMAR_STACKS",
    "MAX_GRAMMAR_STEP_WORK",
    "MAX_GRAMMAR_WORK",
    "MAX_SCHEMA_COUNT",
    "MAX_SCHEMA_DEPTH",
    "MAX_SCHEMA_NODES",
    "MAX_SCHEMA_PROPERTIES",
    "check_grammar",
    "check_schema",
    "grammar_problem",
    "schema_to_grammar",
]

MAX_GRAMMAR_BYTES = 128 * 1024
"""The longest grammar accepted (UTF-8 bytes)."""
MAX_GRAMMAR_DEPTH = 1024
"""The deepest nesting of ``( ... )`` groups (llama.cpp's parser recurses per level)."""
MAX_GRAMMAR_REPETITION = 10_000
"""The largest count a GBNF ``{m,n}`` repetition may use (llama.cpp expands it into rules)."""
MAX_GRAMMAR_ELEMENTS = 200_000
"""The most elements a grammar may expand to (llama.cpp writes ``S{m,n}`` out ``n`` times)."""
MAX_GRAMMAR_STACKS = 4096
"""The most parse stacks llama.cpp may hold at once (see :mod:`._gbnf`)."""
MAX_GRAMMAR_STEP_WORK = 10_000
"""The most stack expansions llama.cpp may need for one character (see :mod:`._gbnf`)."""
MAX_GRAMMAR_WORK = 200_000
"""The most stack expansions :func:`._gbnf.probe` may spend on one grammar in all."""
PROBE_STEPS = 64
"""How many characters :func:`._gbnf.probe` feeds."""

MAX_SCHEMA_DEPTH = 64
"""The deepest nesting of JSON-schema objects/arrays."""
MAX_SCHEMA_NODES = 20_000
"""The most values (dicts, lists, scalars) a JSON schema may hold."""
MAX_SCHEMA_PROPERTIES = 500
"""The most properties one object schema may declare (the converter recurses per optional one)."""
MAX_SCHEMA_COUNT = 1000
"""The largest minLength/maxLength/minItems/maxItems and regex ``{m,n}`` count in a schema."""
MAX_SCHEMA_PATTERN = 2000
"""The longest ``pattern`` string in a schema."""

_COUNT_KEYWORDS = ("minLength", "maxLength", "minItems", "maxItems")


def _fail(field: str, message: str) -> InvalidOptionError:
    return InvalidOptionError(f"invalid option '{field}': {message}", field=field)


# ------------------------------------------------------------------ GBNF


class _Problem(Exception):
    """Why a grammar is refused (the text of the error, without the option name)."""


def _scan(grammar: str) -> int:
    """The deepest group nesting of ``grammar``; raises for a ``{m,n}`` repetition
    llama.cpp's parser cannot survive (``m > n``, or counts above :data:`MAX_GRAMMAR_REPETITION`).
    Literals (``"..."``, ``[...]``) and ``#`` comments are skipped."""
    i, n = 0, len(grammar)
    depth = deepest = 0
    while i < n:
        c = grammar[i]
        if c in '"[':
            close = '"' if c == '"' else "]"
            i += 1
            while i < n and grammar[i] != close:
                i += 2 if grammar[i] == "\\" else 1
            i += 1
        elif c == "#":
            while i < n and grammar[i] not in "\r\n":
                i += 1
        elif c in "()":
            depth = depth + 1 if c == "(" else max(0, depth - 1)
            deepest = max(deepest, depth)
            i += 1
        elif c == "{":
            j = grammar.find("}", i)
            _check_repetition(grammar[i + 1 : j] if j > 0 else "")
            i = j + 1 if j > 0 else n
        else:
            i += 1
    return deepest


def _check_repetition(body: str) -> None:
    parts = [p.strip() for p in body.split(",")]
    if not (1 <= len(parts) <= 2 and all(p.isdigit() or (k == 1 and p == "") for k, p in enumerate(parts))):
        return
    lo = int(parts[0])
    hi = int(parts[1]) if len(parts) == 2 and parts[1] else None
    if len(parts) == 1:
        hi = lo
    if hi is not None and lo > hi:
        raise _Problem(f"repetition {{{body}}} has its minimum above its maximum")
    if max(lo, hi or 0) > MAX_GRAMMAR_REPETITION:
        raise _Problem(f"repetition {{{body}}} exceeds {MAX_GRAMMAR_REPETITION}; use * or + for long runs")


def grammar_problem(text: str) -> str | None:
    """Why ``text`` exceeds a limit, or None.

    A grammar the reader in :mod:`._gbnf` cannot follow passes once its size, nesting
    and repetitions are checked (llama.cpp then reports its own parse error).
    """
    size = len(text) if len(text) > MAX_GRAMMAR_BYTES else len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_GRAMMAR_BYTES:
        return f"the grammar has {size} bytes; the limit is {MAX_GRAMMAR_BYTES}"
    return _cost_problem(text)


@functools.lru_cache(maxsize=64)
def _cost_problem(text: str) -> str | None:
    """The checks past the size (cached: a schema's grammar comes back often)."""
    try:
        depth = _scan(text)
    except _Problem as exc:
        return str(exc)
    if depth > MAX_GRAMMAR_DEPTH:
        return f"the grammar nests groups {depth} deep; the limit is {MAX_GRAMMAR_DEPTH}"
    rules = _gbnf.Rules(text, MAX_GRAMMAR_ELEMENTS)
    try:
        rules.parse()
        _gbnf.probe(rules, PROBE_STEPS, MAX_GRAMMAR_STACKS, MAX_GRAMMAR_STEP_WORK, MAX_GRAMMAR_WORK)
    except _gbnf.GrammarSyntaxError:
        pass
    except _gbnf.TooCostly as exc:
        return f"the grammar is too costly for llama.cpp: {exc}"
    return None


def check_grammar(text: str, field: str = "grammar") -> None:
    """Raise :class:`InvalidOptionError` (``field``) when ``text`` exceeds a limit."""
    problem = grammar_problem(text)
    if problem is not None:
        raise _fail(field, problem)


# ------------------------------------------------------------------ JSON schema


def _pattern_counts(pattern: str) -> tuple[int, int]:
    """(largest ``{m,n}`` count, product of the counts of nested quantifiers) of a regex."""
    largest, worst = 0, 1
    stack: list[int] = [1]  # product of the quantifiers around each open group
    closed: list[int] = []  # per closed group: the product inside it
    i, n = 0, len(pattern)
    last_group_inner = 1
    while i < n:
        c = pattern[i]
        if c == "\\":
            i += 2
            last_group_inner = 1
            continue
        if c == "[":
            j = i + 1
            while j < n and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            i = j + 1
            last_group_inner = 1
            continue
        if c == "(":
            stack.append(1)
        elif c == ")" and len(stack) > 1:
            last_group_inner = stack.pop()
            closed.append(last_group_inner)
            i += 1
            continue
        elif c == "{":
            j = pattern.find("}", i)
            body = pattern[i + 1 : j] if j > 0 else ""
            lo_s, _, hi_s = body.partition(",")
            if j > 0 and lo_s.isdigit() and (hi_s == "" or hi_s.isdigit()):
                count = max(int(lo_s), int(hi_s) if hi_s else 0)
                largest = max(largest, count)
                inner = last_group_inner if i > 0 and pattern[i - 1] == ")" else 1
                product = inner * max(count, 1)
                stack[-1] = max(stack[-1], product)
                worst = max(worst, product)
                i = j + 1
                continue
        last_group_inner = 1
        i += 1
    return largest, worst


def check_schema(schema: Any, field: str = "response_format") -> None:
    """Raise :class:`InvalidOptionError` (``field``) for a JSON schema over a limit:
    nesting, size, property counts, length/item counts and regex repetitions."""
    todo: list[tuple[Any, int]] = [(schema, 0)]
    nodes = 0
    while todo:
        node, depth = todo.pop()
        nodes += 1
        if nodes > MAX_SCHEMA_NODES:
            raise _fail(field, f"the schema has more than {MAX_SCHEMA_NODES} values; that is the limit")
        if depth > MAX_SCHEMA_DEPTH:
            raise _fail(field, f"the schema nests deeper than {MAX_SCHEMA_DEPTH} levels; that is the limit")
        if isinstance(node, Mapping):
            for key in _COUNT_KEYWORDS:
                value = node.get(key)
                if isinstance(value, (int, float)) and value > MAX_SCHEMA_COUNT:
                    raise _fail(field, f"{key} {value} is above the limit of {MAX_SCHEMA_COUNT}")
            props = node.get("properties")
            if isinstance(props, Mapping) and len(props) > MAX_SCHEMA_PROPERTIES:
                raise _fail(
                    field, f"an object declares {len(props)} properties; the limit is {MAX_SCHEMA_PROPERTIES}"
                )
            pattern = node.get("pattern")
            if isinstance(pattern, str):
                _check_pattern(pattern, field)
            todo.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, (list, tuple)):
            todo.extend((v, depth + 1) for v in node)


def _check_pattern(pattern: str, field: str) -> None:
    if len(pattern) > MAX_SCHEMA_PATTERN:
        raise _fail(field, f"a pattern has {len(pattern)} characters; the limit is {MAX_SCHEMA_PATTERN}")
    largest, product = _pattern_counts(pattern)
    if largest > MAX_SCHEMA_COUNT:
        raise _fail(field, f"pattern repetition count {largest} is above the limit of {MAX_SCHEMA_COUNT}")
    if product > MAX_SCHEMA_COUNT:
        raise _fail(
            field,
            f"pattern nests repetitions whose counts multiply to {product}; the limit is {MAX_SCHEMA_COUNT}",
        )


def schema_to_grammar(schema_json: str, field: str = "response_format") -> str:
    """llama-cpp-python's JSON-schema converter, bounded: the schema is checked first,
    any converter failure (RecursionError included) and the grammar it writes are
    checked too; every failure is an :class:`InvalidOptionError`."""
    from llama_cpp import llama_grammar

    try:
        schema = json.loads(schema_json)
    except ValueError as exc:
        raise _fail(field, f"the schema is not JSON ({exc})") from None
    check_schema(schema, field)
    try:
        grammar = str(llama_grammar.json_schema_to_gbnf(schema_json))
    except RecursionError:
        raise _fail(field, "the schema is too deeply nested or has too many properties to convert") from None
    except Exception as exc:
        raise _fail(field, f"unsupported JSON schema ({type(exc).__name__}: {exc})") from None
    check_grammar(grammar, field)
    return grammar
