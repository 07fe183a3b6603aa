#!/usr/bin/env python3
"""What llama.cpp's repacked weight buffers are worth: load_model(repack=True) against
repack=False on one GGUF, interleaved round by round, plain decoding (n_draft=0) and
MTP (n_draft=3) on one sequence, and MTP on STREAMS sequences when given (> 1).

    python scripts/repack_cost.py [MODEL] [ROUNDS] [MAX_TOKENS] [STREAMS]

MODEL defaults to the synthetic bench model (Q8_0, n_embd 1024). Prints per setting
the median tokens/s of each variant, the median ratio on/off with its 10-90% range,
and writes benchmarks/results/repack-<time>.json.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import llama_cpp

import mtpstream
from mtpstream.testing import make_model

PROMPT = "The quiet river carried the boats past the mill and under the old bridge"


async def tok_per_s(mtp: mtpstream.MTP, prompt: list[int], n_streams: int, max_tokens: int) -> float:
    emitted = 0

    async def one() -> None:
        nonlocal emitted
        async for ev in mtp.stream_events(prompt, max_tokens=max_tokens, cache_prompt=False):
            emitted += isinstance(ev, mtpstream.TokenEvent)

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(n_streams):
            tg.start_soon(one)
    return emitted / (time.perf_counter() - t0)


def spread(xs: list[float]) -> tuple[float, float, float]:
    s = sorted(xs)
    lo, hi = s[int(0.1 * (len(s) - 1))], s[round(0.9 * (len(s) - 1))]
    return statistics.median(s), lo, hi


async def main(path: Path, rounds: int, max_tokens: int, streams: int) -> dict[str, Any]:
    models = {flag: mtpstream.load_model(path, repack=flag) for flag in (True, False)}
    prompt = models[True].tokenize(PROMPT)
    settings = [(0, 1), (3, 1)] + ([(3, streams)] if streams > 1 else [])  # (n_draft, streams)
    out: dict[str, Any] = {"model": str(path), "rounds": rounds, "max_tokens": max_tokens, "settings": []}
    for n_draft, n_streams in settings:
        sessions = {
            flag: mtpstream.init(m, n_draft=n_draft, n_ctx=512, n_seq=n_streams) for flag, m in models.items()
        }
        for mtp in sessions.values():  # warm-up
            await tok_per_s(mtp, prompt, n_streams, 8)
        runs: dict[bool, list[float]] = {True: [], False: []}
        ratios = []
        for r in range(rounds):
            order = (True, False) if r % 2 == 0 else (False, True)
            got = {flag: await tok_per_s(sessions[flag], prompt, n_streams, max_tokens) for flag in order}
            for flag, v in got.items():
                runs[flag].append(v)
            ratios.append(got[True] / got[False])
        for mtp in sessions.values():
            mtp.close()
        on, off, ratio = spread(runs[True]), spread(runs[False]), spread(ratios)
        print(
            f"n_draft={n_draft} streams={n_streams}: repack on {on[0]:.1f} tok/s, off {off[0]:.1f} tok/s, "
            f"on/off {ratio[0]:.3f}x [{ratio[1]:.3f}, {ratio[2]:.3f}]"
        )
        out["settings"].append(
            {
                "n_draft": n_draft,
                "streams": n_streams,
                "on_tok_s": runs[True],
                "off_tok_s": runs[False],
                "ratio_median": ratio[0],
                "ratio_p10": ratio[1],
                "ratio_p90": ratio[2],
            }
        )
    for m in models.values():
        m.close()
    return out


if __name__ == "__main__":
    model = Path(sys.argv[1]) if len(sys.argv) > 1 else make_model(size="bench", weights="random")
    n_rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    n_tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    n_streams = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    result = anyio.run(main, model, n_rounds, n_tokens, n_streams)
    result["cpu_offers_amx_buffer"] = mtpstream.cpu_offers_amx_buffer()
    result["system_info"] = llama_cpp.llama_print_system_info().decode()
    dest = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
    dest.mkdir(parents=True, exist_ok=True)
    f = dest / time.strftime("repack-%Y%m%d-%H%M%S.json")
    f.write_text(json.dumps(result, indent=1))
    print(f"wrote {f}")
