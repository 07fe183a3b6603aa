"""Measure what a GBNF grammar costs llama.cpp, one dimension at a time.

Prints, for each family of grammars and each size, the seconds of
``llama_sampler_init_grammar`` (parse + first stacks), of one ``apply`` over the
whole vocabulary and of ``accept``-ing a short text. The limits in
``mtpstream._grammar_limits`` were chosen from this table. Each case runs in a
child process with a time budget, so a grammar that crashes or wedges llama.cpp
shows as ``crash``/``timeout`` instead of ending the measurement.

    .venv/bin/python scripts/grammar_cost.py [family ...]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable

BUDGET_S = 20.0


def nested_groups(n: int) -> str:
    """``n`` nested optional groups, as the JSON-schema converter writes maxLength."""
    return 'root ::= "x" ' + '("a" ' * n + ")?" * n


def nested_parens(n: int) -> str:
    return "root ::= " + "(" * n + '"a"' + ")" * n


def counted(n: int) -> str:
    return f'root ::= "a"{{0,{n}}}'


def nested_counted(n: int) -> str:
    """``(a{0,n}){0,n}`` as the converter writes it (nested groups, two levels)."""
    inner = '("a" ' * n + ")?" * n
    return f"root ::= root-1 {'(root-1 ' * (n - 1)}{')?' * (n - 1)}\nroot-1 ::= ({inner})"


def alternatives(n: int) -> str:
    return "root ::= " + " | ".join(f'"w{i}"' for i in range(n))


def rules(n: int) -> str:
    body = "\n".join(f'r{i} ::= "a" r{i + 1}?' for i in range(n))
    return f'root ::= r0\n{body}\nr{n} ::= "b"'


def ambiguous_alts(n: int) -> str:
    """``n`` alternatives all starting alike: every one stays a live stack."""
    return "root ::= (" + " | ".join(f'"a"* "{chr(98 + i % 20)}"' for i in range(n)) + ")"


def star_chain(n: int) -> str:
    """``n`` consecutive ``"a"*``: after k a's, every split is a live stack."""
    return "root ::= " + ' "a"*' * n + ' "b"'


FAMILIES: dict[str, tuple[Callable[[int], str], list[int]]] = {
    "nested_groups": (nested_groups, [100, 500, 1000, 2000, 4000, 8000]),
    "nested_parens": (nested_parens, [100, 500, 1000, 2000, 4000, 8000]),
    "counted": (counted, [100, 1000, 10000, 100000]),
    "nested_counted": (nested_counted, [10, 25, 50, 100, 200]),
    "alternatives": (alternatives, [100, 1000, 10000, 50000]),
    "rules": (rules, [100, 1000, 10000, 50000]),
    "ambiguous_alts": (ambiguous_alts, [10, 100, 1000, 5000]),
    "star_chain": (star_chain, [5, 10, 20, 40, 80]),
}

CHILD = r"""
import ctypes, json, sys, time
import llama_cpp as L
from mtpstream.testing import make_model
L.llama_backend_init()
L.llama_log_set(L.llama_log_callback(lambda *a: None), ctypes.c_void_p(0))
p = L.llama_model_default_params(); p.vocab_only = True
import os
path = os.environ.get("GRAMMAR_COST_MODEL") or str(make_model())
model = L.llama_model_load_from_file(path.encode(), p)
vocab = L.llama_model_get_vocab(model)
n_vocab = L.llama_vocab_n_tokens(vocab)
grammar = sys.stdin.read().encode()
t0 = time.perf_counter()
smpl = L.llama_sampler_init_grammar(vocab, grammar, b"root")
t_init = time.perf_counter() - t0
if not smpl:
    print(json.dumps({"init": t_init, "error": "parse"})); sys.exit()
arr_t = L.llama_token_data * n_vocab
template = arr_t(*[L.llama_token_data(i, 0.0, 0.0) for i in range(n_vocab)])
data = arr_t()
ctypes.memmove(data, template, ctypes.sizeof(template))
arr = L.llama_token_data_array(data, n_vocab, -1, False)
t0 = time.perf_counter()
L.llama_sampler_apply(smpl, ctypes.byref(arr))
t_apply = time.perf_counter() - t0
allowed = [data[i].id for i in range(n_vocab) if data[i].logit != float("-inf")]
t_py = 0.0
text = os.environ.get("GRAMMAR_COST_TEXT", "").encode()
buf = (L.llama_token * (len(text) + 8))()
n_text = L.llama_tokenize(vocab, text, len(text), buf, len(text) + 8, False, True) if text else 0
t0 = time.perf_counter(); n_acc = 0
for k in range(int(os.environ.get("GRAMMAR_COST_STEPS", "8")) if not text else max(n_text, 0)):
    tp = time.perf_counter()
    toks = [buf[k]] if text else [t for t in allowed if not L.llama_vocab_is_eog(vocab, t)]
    t_py += time.perf_counter() - tp
    if not toks or toks[0] not in allowed:
        break
    L.llama_sampler_accept(smpl, toks[0]); n_acc += 1
    ctypes.memmove(data, template, ctypes.sizeof(template))
    arr = L.llama_token_data_array(data, n_vocab, -1, False)
    L.llama_sampler_apply(smpl, ctypes.byref(arr))
    tp = time.perf_counter()
    allowed = set(data[i].id for i in range(n_vocab) if data[i].logit != float("-inf"))
    t_py += time.perf_counter() - tp
t_step = (time.perf_counter() - t0 - t_py) / max(n_acc, 1)
out = {"init": t_init, "apply": t_apply, "step": t_step, "accepted": n_acc, "n_vocab": n_vocab}
out["allowed"] = len(allowed)
print(json.dumps(out))
"""


def measure(grammar: str) -> dict[str, object]:
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD], input=grammar, capture_output=True, text=True, timeout=BUDGET_S
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timeout > {BUDGET_S:.0f} s"}
    if proc.returncode != 0:
        return {"error": f"crash (exit {proc.returncode})"}
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str]) -> None:
    names = argv or list(FAMILIES)
    for name in names:
        make, sizes = FAMILIES[name]
        for n in sizes:
            g = make(n)
            t0 = time.perf_counter()
            r = measure(g)
            wall = time.perf_counter() - t0
            cols = " ".join(f"{k}={v:.4f}s" if isinstance(v, float) else f"{k}={v}" for k, v in r.items())
            print(f"{name:15s} n={n:<7d} bytes={len(g):<8d} {cols} (wall {wall:.1f}s)", flush=True)
            if "error" in r:
                break


if __name__ == "__main__":
    main(sys.argv[1:])
