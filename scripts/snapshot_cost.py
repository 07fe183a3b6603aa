#!/usr/bin/env python3
# usage: python scripts/snapshot_cost.py MODEL.gguf N_SEQ K ROUNDS
"""Verify-batch cost with and without recurrent-state snapshots (n_rs_seq)."""

import statistics
import sys
import time

import llama_cpp as L

path, n_seq, k, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
L.llama_backend_init()
mp = L.llama_model_default_params()
mp.use_mmap = True
model = L.llama_model_load_from_file(path.encode(), mp)


def make(rs):
    cp = L.llama_context_default_params()
    cp.n_ctx = 1024 * n_seq
    cp.n_batch = 512
    cp.n_ubatch = 512
    cp.n_seq_max = n_seq
    cp.kv_unified = n_seq > 1
    cp.n_rs_seq = rs
    cp.n_threads = 2
    cp.n_threads_batch = 2
    cp.no_perf = True
    return L.llama_init_from_model(model, cp)


ctxs = {"snap": make(k), "plain": make(0)}
batch = L.llama_batch_init(2048, 0, 1)
hist = {m: [64] * n_seq for m in ctxs}


def add(tok, pos, seq, out):
    i = batch.n_tokens
    batch.token[i] = tok
    batch.pos[i] = pos
    batch.n_seq_id[i] = 1
    batch.seq_id[i][0] = seq
    batch.logits[i] = out
    batch.n_tokens += 1


def decode(ctx):
    assert L.llama_decode(ctx, batch) == 0
    batch.n_tokens = 0


for ctx in ctxs.values():
    for s in range(n_seq):
        for p in range(64):
            add(100 + p, p, s, False)
    decode(ctx)
t = {m: [] for m in ctxs}
for r in range(reps):
    for m in ("snap", "plain") if r % 2 == 0 else ("plain", "snap"):
        ctx = ctxs[m]
        for s in range(n_seq):
            for j in range(k + 1):
                add(200 + j, hist[m][s] + j, s, True)
        t0 = time.perf_counter()
        decode(ctx)
        t[m].append((time.perf_counter() - t0) * 1000)
        hist[m] = [h + k + 1 for h in hist[m]]
r = sorted(a / b for a, b in zip(t["snap"], t["plain"], strict=True))
print(
    f"{path.split('/')[-1]} n_seq={n_seq} verify {k + 1} tokens/seq: "
    f"snapshots {statistics.median(t['snap']):.2f} ms, none {statistics.median(t['plain']):.2f} ms, "
    f"ratio {statistics.median(r):.3f} [{r[len(r) // 10]:.3f}, {r[-len(r) // 10 - 1]:.3f}]"
)
