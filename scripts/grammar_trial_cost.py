"""What the grammar checker (``mtpstream._grammar_check``) costs, and how it ends bombs.

For a vocabulary (default: llama.cpp's real Qwen3.5 vocabulary from the vendored source,
else the tiny test model's), prints the checker's start-up, then per grammar the
seconds of a cold check (a trial in the child) and of a cached one, and the verdict.
The grammars: the JSON grammar, realistic schemas, the issue's ``^(a{0,N}){0,N}$``
converted grammars (N = 100, 200, 400, 1000; the static limits refuse them first, so
they are also tried on the checker alone), and the issue's N = 1000 bomb behind a decoy
that the static stack model passes.

    .venv/bin/python scripts/grammar_trial_cost.py [VOCAB.gguf]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from llama_cpp import llama_grammar

from mtpstream import _grammar_check as gc
from mtpstream._grammar_limits import grammar_problem
from mtpstream.errors import MTPError

QWEN = Path("/tmp/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-qwen35.gguf")


def converted(n: int) -> str:
    schema = {"type": "string", "pattern": f"^(a{{0,{n}}}){{0,{n}}}$"}
    return str(llama_grammar.json_schema_to_gbnf(json.dumps(schema)))


def decoyed(n: int) -> str:
    decoy = " | ".join(f'"c" "{i}"' for i in range(6))
    return f'root ::= {decoy} | "b" bomb\n' + converted(n).replace("root ::=", "bomb ::=")


def schema(s: object) -> str:
    return str(llama_grammar.json_schema_to_gbnf(json.dumps(s)))


def main() -> None:
    if len(sys.argv) > 1:
        vocab = Path(sys.argv[1])
    elif QWEN.exists():
        vocab = QWEN
    else:
        from mtpstream.testing import make_model

        vocab = make_model()
    cases = {
        "json_object": llama_grammar.JSON_GBNF,
        "object-3-props": schema({"type": "object", "properties": {k: {"type": "string"} for k in "abc"}}),
        "200-properties": schema(
            {"type": "object", "properties": {f"f{i}": {"type": "string"} for i in range(200)}}
        ),
        "enum-2000": schema({"enum": [f"value-{i}" for i in range(2000)]}),
        **{f"issue-N{n}": converted(n) for n in (100, 200, 400, 1000)},
        "issue-N1000-decoyed": decoyed(1000),
    }
    checker = gc.GrammarChecker(vocab, budget=5.0, step_budget=1.0)
    t = time.perf_counter()
    checker.check(llama_grammar.JSON_GBNF, "grammar")
    print(f"vocabulary {vocab.name}: start-up + first check {time.perf_counter() - t:.2f} s")
    for name, text in cases.items():
        static = grammar_problem(text)
        row = [name, f"{len(text)} B", "static: " + ("refused" if static else "passes")]
        for label in ("cold", "cached"):
            t = time.perf_counter()
            try:
                checker.check(text, "grammar")
                verdict = "ok"
            except MTPError as exc:
                verdict = str(exc).split(": ", 1)[-1][:90]
            row.append(f"{label} {time.perf_counter() - t:.3f} s")
        row.append(verdict)
        print(" | ".join(row), flush=True)
    checker.close()


if __name__ == "__main__":
    main()
