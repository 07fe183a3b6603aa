"""What running grammars in the grammar host costs: grammar-constrained generation with
``grammar_process=True`` (the default) against ``False`` (grammar steps on the worker
thread), interleaved rounds in one process, on the real Qwen3.5 vocabulary (152k tokens:
the mask the host sends back is 19 KB per step) and on the small synthetic one.

    python scripts/grammar_host_cost.py [--rounds 5] [--tokens 64] [--out DIR]

Prints per model and grammar the tokens per second of both and their ratio (median over
rounds, with min-max of the per-round ratios) and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import anyio
from llama_cpp import llama_grammar

import mtpstream
from mtpstream.bench.report import write_json
from mtpstream.testing import make_model, make_real_vocab_model

GRAMMARS = {
    "json": llama_grammar.JSON_GBNF,
    "words": 'root ::= [a-z]+ (" " [a-z]+)*',
}


async def rate(mtp: mtpstream.MTP, grammar: str, tokens: int) -> float:
    t = time.perf_counter()
    n = 0
    events = mtp.stream_events("we walked along", max_tokens=tokens, grammar=grammar, cache_prompt=False)
    async for ev in events:
        n += isinstance(ev, mtpstream.TokenEvent)
    return n / (time.perf_counter() - t)


async def sitting(path: Path, rounds: int, tokens: int) -> dict[str, Any]:
    model = mtpstream.load_model(str(path))
    out: dict[str, Any] = {}
    with (
        model,
        mtpstream.init(model, n_draft=0, n_ctx=1024, grammar_process=True) as hosted,
        mtpstream.init(model, n_draft=0, n_ctx=1024, grammar_process=False) as local,
    ):
        for name, grammar in GRAMMARS.items():
            await rate(hosted, grammar, 4)  # start the host, warm both
            await rate(local, grammar, 4)
            pairs = []
            for _ in range(rounds):
                pairs.append((await rate(hosted, grammar, tokens), await rate(local, grammar, tokens)))
            ratios = [h / lo for h, lo in pairs]
            out[name] = {
                "host_tok_s": statistics.median(h for h, _ in pairs),
                "worker_tok_s": statistics.median(lo for _, lo in pairs),
                "ratio_median": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
            }
            r = out[name]
            print(
                f"{path.name[:40]:40} {name:6} host {r['host_tok_s']:7.1f} tok/s  worker "
                f"{r['worker_tok_s']:7.1f} tok/s  ratio {r['ratio_median']:.3f} "
                f"[{r['ratio_min']:.3f}, {r['ratio_max']:.3f}]"
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    result = {
        "rounds": args.rounds,
        "tokens": args.tokens,
        "real_vocab": anyio.run(sitting, make_real_vocab_model(), args.rounds, args.tokens),
        "synthetic": anyio.run(sitting, make_model(), args.rounds, args.tokens),
    }
    dst = write_json(result, args.out / f"grammar-host-{time.strftime('%Y%m%d-%H%M%S')}.json")
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
