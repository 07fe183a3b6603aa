#!/usr/bin/env python3
"""Accepted tokens per verify of verify="match" against verify="rejection" on the soft
oracle (a count, not a timing), beside what its SoftSpec predicts.

    python scripts/rejection_acceptance.py [TEMP] [MTP_ERROR_RATE] [N_DRAFT] [SIZE]

Defaults: temperature 0.8, mtp_error_rate 0.25, n_draft 3, the tiny model. Runs 16
seeded calls of 250 tokens per rollback, n_seq 1 and 4 (one thread: the numbers do
not depend on the machine) and prints accepted drafts per verify (``drafts_accepted /
iters``) and per draft for both verifications, their ratio, and the expectation
``sum_{j=1..k} a^j`` for a verify of k drafts (the last iterations of a call draft
fewer, and rollback="replay" drafts fewer after a rejection, so the measured figure
lies somewhat below it).
"""

from __future__ import annotations

import sys

import anyio

import mtpstream
from mtpstream.testing import accepted_per_verify, load_soft_spec, make_model

SEEDS = range(16)
MAX_TOKENS = 250


async def measure(
    model: mtpstream.Model,
    prompt: list[int],
    verify: str,
    temp: float,
    n_draft: int,
    rollback: str,
    n_seq: int,
) -> mtpstream.MTPStats:
    session = {"n_draft": n_draft, "n_ctx": 512, "n_seq": n_seq, "n_threads": 1, "rollback": rollback}
    with mtpstream.init(model, **session) as mtp:

        async def one(seed: int) -> None:
            await mtp.generate(prompt, max_tokens=MAX_TOKENS, temp=temp, seed=seed, verify=verify)

        async with anyio.create_task_group() as tg:
            for seed in SEEDS:
                tg.start_soon(one, seed)
        return mtp.stats()


async def main(temp: float, rate: float, n_draft: int, size: str) -> None:
    path = make_model(weights="soft", size=size, mtp_error_rate=rate)  # type: ignore[arg-type]
    spec = load_soft_spec(path)
    prompt = [spec.successors[0][0]]
    with mtpstream.load_model(path) as model:
        for rollback in ("snapshots", "replay"):
            for n_seq in (1, 4):
                per_verify = {}
                for verify in ("match", "rejection"):
                    s = await measure(model, prompt, verify, temp, n_draft, rollback, n_seq)
                    per_verify[verify] = s.drafts_accepted / s.iters
                    print(
                        f"rollback={rollback:9s} n_seq={n_seq} {verify:9s}: "
                        f"{per_verify[verify]:.3f} accepted/verify, "
                        f"{s.drafts_accepted / s.drafts_generated:.3f} per draft "
                        f"({s.drafts_accepted} of {s.drafts_generated} in {s.iters} iterations)"
                    )
                print(f"    rejection / match: {per_verify['rejection'] / per_verify['match']:.2f}x")
    a_r, a_m = spec.rejection_acceptance(temp), spec.match_acceptance(temp)
    print(
        f"expected per judged draft: rejection {a_r:.4f}, match {a_m:.4f}; per verify of {n_draft} drafts: "
        f"{accepted_per_verify(a_r, n_draft):.3f} vs {accepted_per_verify(a_m, n_draft):.3f}"
    )


if __name__ == "__main__":
    args = sys.argv[1:]
    anyio.run(
        main,
        float(args[0]) if len(args) > 0 else 0.8,
        float(args[1]) if len(args) > 1 else 0.25,
        int(args[2]) if len(args) > 2 else 3,
        args[3] if len(args) > 3 else "tiny",
    )
