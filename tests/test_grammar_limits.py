"""Grammars and JSON schemas that crashed or wedged llama.cpp, numeric option bounds,
realistic schemas that must still pass, and a seeded fuzz of grammars and schemas.

Cases that crashed (stack overflow in llama.cpp's grammar parser) or wedged a worker
before the limits of ``mtpstream._grammar_limits`` run in a subprocess with a
watchdog, and must end there with a quick ``InvalidOptionError``.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

import mtpstream
from mtpstream import _grammar_limits as limits
from mtpstream.chat import grammar_for_response_format
from mtpstream.options import GenerationOptions, validate

from conftest import run_python

HERE = Path(__file__).parent
QUICK_S = 2.0  # a refusal takes far less; generous for 2 shared cores
FUZZ_REFUSAL_S = 5.0
FUZZ_CASE_S = 30.0


def fmt(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}


def nested_pattern(n: int) -> str:
    return f"^(a{{0,{n}}}){{0,{n}}}$"


# ------------------------------------------------------------------ the reported cases, in a subprocess

DANGEROUS: list[tuple[str, str, Any]] = [
    ("maxLength", "response_format", fmt({"type": "string", "maxLength": 20000})),
    ("maxItems", "response_format", fmt({"type": "array", "items": {"type": "integer"}, "maxItems": 20000})),
    ("pattern-count", "response_format", fmt({"type": "string", "pattern": "^a{0,20000}$"})),
    ("nested-parens", "grammar", "root ::= " + "(" * 20000 + '"a"' + ")" * 20000),
    ("nested-pattern", "response_format", fmt({"type": "string", "pattern": nested_pattern(1000)})),
    ("nested-pattern-30", "response_format", fmt({"type": "string", "pattern": nested_pattern(30)})),
    ("minLength-1e9", "response_format", fmt({"type": "string", "minLength": 1_000_000_000})),
    ("minLength-1e6", "response_format", fmt({"type": "string", "minLength": 1_000_000})),
    (
        "1000-optional",
        "response_format",
        fmt({"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(1000)}}),
    ),
]


def _converted(pattern: str) -> str:
    from llama_cpp import llama_grammar

    return str(llama_grammar.json_schema_to_gbnf(json.dumps({"type": "string", "pattern": pattern})))


def test_reported_cases_end_quickly_with_invalid_option_error() -> None:
    cases = [*DANGEROUS]
    # the converter's wedging grammars, passed as `grammar` (the converter itself is not at fault)
    cases.append(("nested-pattern-grammar", "grammar", _converted(nested_pattern(1000))))
    cases.append(("nested-pattern-grammar-100", "grammar", _converted(nested_pattern(100))))
    proc = run_python(
        f"""
        import anyio, json, sys, time, mtpstream
        from mtpstream.testing import make_model
        model = mtpstream.load_model(str(make_model()))
        cases = json.loads({json.dumps(json.dumps(cases))})
        async def main():
            with mtpstream.init(model, n_draft=3, n_ctx=512) as mtp:
                for name, key, value in cases:
                    print("start", name, flush=True)
                    t = time.perf_counter()
                    try:
                        await mtp.generate("we walked along", max_tokens=4, **{{key: value}})
                        out = ["ok", "", None]
                    except mtpstream.MTPError as exc:
                        out = [type(exc).__name__, str(exc), getattr(exc, "field", None)]
                    print(json.dumps([name, *out, time.perf_counter() - t]), flush=True)
                print(json.dumps(["after", await mtp.generate("we walked along", max_tokens=4), "", None, 0]))
        anyio.run(main)
        """,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-1000:] + proc.stderr[-3000:]
    rows = {
        r[0]: r[1:] for r in (json.loads(line) for line in proc.stdout.splitlines() if line.startswith("["))
    }
    for name, key, _ in cases:
        kind, message, field, seconds = rows[name]
        assert kind == "InvalidOptionError" and field == key, (name, rows[name])
        assert f"invalid option '{key}'" in message, message
        assert "limit" in message or "too costly" in message, message
        assert len(message) < 600, message  # the grammar itself is not repeated
        assert seconds < QUICK_S, (name, seconds)
    assert rows["after"][0]


@pytest.mark.parametrize(
    ("schema", "match"),
    [
        ({"type": "string", "maxLength": 20000}, "maxLength 20000 is above the limit of 1000"),
        ({"type": "array", "maxItems": 20000}, "maxItems 20000 is above the limit of 1000"),
        ({"type": "array", "minItems": 1001}, "minItems 1001 is above the limit of 1000"),
        ({"type": "string", "minLength": 1_000_000_000}, "minLength 1000000000 is above the limit"),
        ({"type": "string", "pattern": "^a{0,20000}$"}, "pattern repetition count 20000 is above"),
        ({"type": "string", "pattern": nested_pattern(1000)}, "multiply to 1000000; the limit is 1000"),
        ({"type": "string", "pattern": nested_pattern(30)}, "too costly for llama.cpp"),
        ({"type": "string", "pattern": "a" * 5000}, "a pattern has 5000 characters; the limit is 2000"),
        ({"properties": {f"p{i}": {} for i in range(1000)}}, "declares 1000 properties; the limit is 500"),
        ({"items": [{}] * 30000}, "more than 20000 values"),
    ],
)
def test_schema_limits_name_the_limit_and_the_value(schema: Any, match: str) -> None:
    t = time.perf_counter()
    with pytest.raises(mtpstream.InvalidOptionError, match=match) as info:
        grammar_for_response_format(fmt(schema))
    assert info.value.field == "response_format"
    assert time.perf_counter() - t < QUICK_S


def test_deep_schema_is_refused_before_anything_recurses() -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(100_000):  # json.dumps alone would raise RecursionError
        deep = {"type": "array", "items": deep}
    with pytest.raises(mtpstream.InvalidOptionError, match="deeper than 64 levels") as info:
        grammar_for_response_format(fmt(deep))
    assert info.value.field == "response_format"


def test_a_converter_recursion_error_is_an_invalid_option(monkeypatch: pytest.MonkeyPatch) -> None:
    from llama_cpp import llama_grammar

    def boom(schema: str) -> str:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(llama_grammar, "json_schema_to_gbnf", boom)
    with pytest.raises(mtpstream.InvalidOptionError, match="too deeply nested") as info:
        limits.schema_to_grammar(json.dumps({"type": "object", "properties": {"x": {}}}))
    assert info.value.field == "response_format"


@pytest.mark.parametrize(
    ("grammar", "match"),
    [
        ("root ::= " + "(" * 2000 + '"a"' + ")" * 2000, "nests groups 2000 deep; the limit is 1024"),
        ('root ::= "' + "a" * 200_000 + '"', "bytes; the limit is 131072"),
        ('root ::= "a"{5,3}', "minimum above its maximum"),
        ('root ::= "a"{0,20000}', "exceeds 10000"),
        ("root ::= " + " | ".join(f'"w{i}"' for i in range(5000)), "more than 4096 parse stacks"),
        (_converted(nested_pattern(30)), "too costly for llama.cpp"),
    ],
)
def test_grammar_limits_name_the_limit(grammar: str, match: str) -> None:
    t = time.perf_counter()
    with pytest.raises(mtpstream.InvalidOptionError, match=match) as info:
        validate(GenerationOptions, {"grammar": grammar})
    assert info.value.field == "grammar"
    assert len(str(info.value)) < 600
    assert time.perf_counter() - t < QUICK_S


# ------------------------------------------------------------------ numbers


@pytest.mark.parametrize(
    ("options", "field", "match"),
    [
        ({"temp": 1e308}, "temp", "less than or equal to 100"),
        ({"penalty_repeat": 1e308}, "penalty_repeat", "less than or equal to 100"),
        ({"penalty_freq": 1e308}, "penalty_freq", "less than or equal to 100"),
        ({"penalty_freq": -1e308}, "penalty_freq", "greater than or equal to -100"),
        ({"penalty_present": 1e308}, "penalty_present", "less than or equal to 100"),
        ({"penalty_present": -1e308}, "penalty_present", "greater than or equal to -100"),
        ({"timeout": 1e-9}, "timeout", "greater than or equal to 0.001"),
        ({"timeout": 1e308}, "timeout", "less than or equal to"),
    ],
)
def test_numeric_bounds(options: dict[str, Any], field: str, match: str) -> None:
    with pytest.raises(mtpstream.InvalidOptionError, match=match) as info:
        validate(GenerationOptions, options)
    assert info.value.field == field and f"'{field}'" in str(info.value)


def test_numbers_at_the_bounds_pass() -> None:
    validate(
        GenerationOptions, {"temp": 100.0, "penalty_freq": -100.0, "penalty_present": 100, "timeout": 0.001}
    )


# ------------------------------------------------------------------ realistic schemas still pass

FUNCTION_CALL = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "enum": ["get_weather", "search", "book_flight"]},
        "arguments": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "maxLength": 200},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
                "passengers": {
                    "type": "array",
                    "maxItems": 9,
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string", "minLength": 1, "maxLength": 100},
                            "age": {"type": "integer"},
                            "seat": {"type": "string", "pattern": "^[0-9]{1,2}[A-F]$"},
                        },
                        "required": ["name"],
                    },
                },
                "email": {"type": "string", "pattern": "^[a-z0-9.]{1,64}@[a-z0-9.]{1,255}$"},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 50},
                "flags": {"type": "object", "additionalProperties": {"type": "boolean"}},
            },
            "required": ["location"],
        },
    },
    "required": ["name", "arguments"],
}
REALISTIC = {
    "function-call": FUNCTION_CALL,
    "200-properties": {
        "type": "object",
        "properties": {f"field_{i}": {"type": "string"} for i in range(200)},
    },
    "200-required": {
        "type": "object",
        "properties": {f"f{i}": {"type": "integer"} for i in range(200)},
        "required": [f"f{i}" for i in range(200)],
    },
    "long-string": {"type": "string", "maxLength": 1000},
    "enum-2000": {"enum": [f"value-{i}" for i in range(2000)]},
    "ipv4": {
        "type": "string",
        "pattern": r"^((25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])[.]){3}(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])$",
    },
    "list-of-records": {
        "type": "array",
        "maxItems": 100,
        "items": {
            "type": "object",
            "properties": {"id": {"type": "integer"}, "label": {"type": "string", "maxLength": 100}},
        },
    },
}


@pytest.mark.asyncio
async def test_realistic_schemas_pass_and_generate(oracle: mtpstream.Model) -> None:
    with mtpstream.init(oracle, n_draft=3, n_ctx=512) as mtp:
        await mtp.generate("we walked along", max_tokens=8)  # the first call pays the warm-up
        # and the first grammar starts the session's grammar checker process
        await mtp.generate("we walked along", response_format={"type": "json_object"}, max_tokens=2)
        for name, schema in REALISTIC.items():
            # (how long each takes is measured by scripts/grammar_trial_cost.py, not here)
            grammar = grammar_for_response_format(fmt(schema))
            assert grammar, name
            await mtp.generate("we walked along", response_format=fmt(schema), max_tokens=8, temp=0.8, seed=1)
        # the plain JSON grammar, and a recursive GBNF grammar
        await mtp.generate("we walked along", response_format={"type": "json_object"}, max_tokens=8)
        await mtp.generate("we walked along", grammar="root ::= [a-z ] root", max_tokens=8)


# ------------------------------------------------------------------ seeded fuzz


def _fuzz_grammar(rng: random.Random) -> str:
    def item(depth: int) -> str:
        r = rng.random()
        if depth > 3 or r < 0.35:
            return rng.choice(['"a"', '"the"', "[a-z]", "[^x]", '" "', "word", '"\\x41"', "."])
        if r < 0.55:
            inner = " | ".join(seq(depth + 1) for _ in range(rng.randint(1, 4)))
            return f"({inner})" + rng.choice(["", "?", "*", "+", f"{{0,{rng.randint(0, 40)}}}"])
        if r < 0.7:  # the converter's nested optional groups
            n = rng.choice([2, 10, 50, 300, 1500])
            body = seq(depth + 1) if n <= 50 and depth < 2 else item(9)  # keeps the text < ~1 MB
            return f"({body} " * n + ")?" * n
        if r < 0.8:
            k = rng.choice([1, 100, 1000, 1025, 3000])
            return "(" * k + '"a"' + ")" * k
        lo = rng.randint(0, 30)
        return item(depth + 1) + rng.choice(
            [f"{{{lo}}}", f"{{{lo},}}", f"{{{lo},{lo + rng.randint(0, 60)}}}"]
        )

    def seq(depth: int) -> str:
        return " ".join(item(depth) for _ in range(rng.randint(1, 3)))

    root = seq(0)
    while len(root) > 1_000_000:
        root = seq(0)
    rules = [f"root ::= {root}", 'word ::= [a-z]+ " "?']
    if rng.random() < 0.3:
        rules.append("root2 ::= root root2 | ")
    return "\n".join(rules)


def _fuzz_schema(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    big = rng.choice([0, 1, 5, 50, 999, 1000, 1001, 20000, 10**9])
    if depth > 3 or r < 0.3:
        kind = rng.choice(["string", "integer", "number", "boolean", "null"])
        s: dict[str, Any] = {"type": kind}
        if kind == "string" and rng.random() < 0.6:
            s[rng.choice(["minLength", "maxLength"])] = big
        if kind == "string" and rng.random() < 0.3:
            n, m = rng.randint(0, 40), rng.randint(0, 40)
            s["pattern"] = rng.choice(
                [f"^(a{{0,{n}}}){{0,{m}}}$", f"^[a-z]{{{n},{n + m}}}$", f"^(ab|c{{1,{n}}})+$"]
            )
        return s
    if r < 0.6:
        s = {"type": "array", "items": _fuzz_schema(rng, depth + 1)}
        if rng.random() < 0.6:
            s[rng.choice(["minItems", "maxItems"])] = min(big, 20000)
        return s
    if r < 0.75:
        return {"enum": [rng.choice(["x", 1, None, True, "long value"]) for _ in range(rng.randint(1, 20))]}
    n = rng.choice([1, 3, 10, 200, 600])
    props = {f"p{i}": _fuzz_schema(rng, depth + 1) if i < 3 else {"type": "integer"} for i in range(n)}
    return {"type": "object", "properties": props, "required": [p for p in props if rng.random() < 0.5]}


def _fuzz_cases(seed: int, n: int) -> list[list[Any]]:
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        if rng.random() < 0.5:
            cases.append([i, "grammar", _fuzz_grammar(rng)])
        else:
            cases.append([i, "response_format", fmt(_fuzz_schema(rng))])
    return cases


def _run_fuzz(seed: int, n: int, timeout: float) -> None:
    cases = _fuzz_cases(seed, n)
    path = HERE / f".fuzz-grammar-{seed}-{n}.json"
    path.write_text(json.dumps(cases))
    try:
        proc = run_python(
            f"""
            import anyio, json, time, mtpstream
            from mtpstream.testing import make_model
            model = mtpstream.load_model(str(make_model()))
            cases = json.load(open({str(path)!r}))
            async def main():
                with mtpstream.init(model, n_draft=3, n_ctx=512) as mtp:
                    for i, key, value in cases:
                        print(json.dumps(["start", i]), flush=True)
                        t = time.perf_counter()
                        try:
                            opts = {{key: value, "max_tokens": 6, "temp": 0.8, "seed": i}}
                            await mtp.generate("we walked along", **opts)
                            kind = "ok"
                        except mtpstream.InvalidOptionError as exc:
                            kind = "invalid:" + str(exc.field)
                        except mtpstream.GenerationError as exc:
                            kind = "generation:" + ("grammar" if "grammar" in str(exc) else str(exc))
                        print(json.dumps(["done", i, kind, time.perf_counter() - t]), flush=True)
            anyio.run(main)
            """,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        raise AssertionError(f"fuzz hung; last lines:\n{out[-500:]}") from None
    finally:
        path.unlink(missing_ok=True)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("[")]
    last = rows[-1] if rows else None
    assert proc.returncode == 0, (
        f"crash after {last}: case {str(cases[last[1]])[:500] if last else None}\n{proc.stderr[-2000:]}"
    )
    done = {r[1]: r[2:] for r in rows if r[0] == "done"}
    assert len(done) == n
    kinds: dict[str, int] = {}
    for i, (kind, seconds) in done.items():
        kinds[kind] = kinds.get(kind, 0) + 1
        assert kind in ("ok", "invalid:grammar", "invalid:response_format", "generation:grammar"), (
            kind,
            cases[i],
        )
        # bounds with room for 2 cores shared with other work (unloaded: < 0.5 s and < 3 s)
        if kind.startswith("invalid"):
            assert seconds < FUZZ_REFUSAL_S, (kind, seconds, str(cases[i])[:500])
        assert seconds < FUZZ_CASE_S, (kind, seconds, str(cases[i])[:500])
    assert kinds.get("ok", 0) > n // 10 and kinds.get("invalid:response_format", 0) > 0, kinds


def test_fuzz_grammars_and_schemas() -> None:
    _run_fuzz(seed=1, n=200, timeout=600)


@pytest.mark.slow
def test_fuzz_grammars_and_schemas_long() -> None:
    _run_fuzz(seed=2, n=600, timeout=1800)
