#!/usr/bin/env python3
# usage: python scripts/fold_cost.py MODEL.gguf N_SEQ K PROMPT_TOKENS ROUNDS
"""Does folding a new call's prompt chunk into the verify decode save time?
Times, interleaved: verify (n_seq x (k+1) tokens), prefill (P tokens of a new seq)
separately vs in one llama_decode. Low-level llama_cpp ctypes on a synthetic GGUF."""

import statistics
import sys
import time

import llama_cpp as L

path, n_seq, k, P, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
L.llama_backend_init()
mp = L.llama_model_default_params()
mp.use_mmap = True
model = L.llama_model_load_from_file(path.encode(), mp)
cp = L.llama_context_default_params()
cp.n_ctx = 1024 * (n_seq + 1)
cp.n_batch = 1024
cp.n_ubatch = 1024
cp.n_seq_max = n_seq + 1
cp.kv_unified = True
cp.n_rs_seq = k
cp.n_threads = 2
cp.n_threads_batch = 2
cp.no_perf = True
ctx = L.llama_init_from_model(model, cp)
mem = L.llama_get_memory(ctx)
batch = L.llama_batch_init(2048, 0, 1)


def add(tok, pos, seq, out):
    i = batch.n_tokens
    batch.token[i] = tok
    batch.pos[i] = pos
    batch.n_seq_id[i] = 1
    batch.seq_id[i][0] = seq
    batch.logits[i] = out
    batch.n_tokens += 1


def decode():
    rc = L.llama_decode(ctx, batch)
    assert rc == 0, rc
    batch.n_tokens = 0


hist = [64] * n_seq
for s in range(n_seq):  # history
    for p in range(64):
        add(100 + p, p, s, False)
decode()


def verify_part():
    for s in range(n_seq):
        for j in range(k + 1):
            add(200 + j, hist[s] + j, s, True)


def verify_done():
    for s in range(n_seq):
        assert L.llama_memory_seq_rm(mem, s, hist[s] + 1, -1)  # keep 1 (rollback k)
        hist[s] += 1


def prefill_part():
    L.llama_memory_seq_rm(mem, n_seq, -1, -1)
    for p in range(P):
        add(300 + p, p, n_seq, p == P - 1)


sep, comb = [], []
for r in range(reps):
    for mode in ("sep", "comb") if r % 2 == 0 else ("comb", "sep"):
        t0 = time.perf_counter()
        if mode == "sep":
            verify_part()
            decode()
            prefill_part()
            decode()
        else:
            verify_part()
            prefill_part()
            decode()
        dt = time.perf_counter() - t0
        verify_done()
        (sep if mode == "sep" else comb).append(dt * 1000)
ratios = sorted(c / s for c, s in zip(comb, sep, strict=True))
print(
    f"{path.split('/')[-1]} n_seq={n_seq} k={k} P={P}: separate {statistics.median(sep):.2f} ms, "
    f"folded {statistics.median(comb):.2f} ms, folded/separate median {statistics.median(ratios):.3f} "
    f"[{ratios[len(ratios) // 10]:.3f}, {ratios[-len(ratios) // 10 - 1]:.3f}]"
)
