#!/usr/bin/env python3
"""What llama.cpp's decode costs for the batch shapes the engine could choose.

Runs llama-cpp-python's low-level API directly (no mtpstream in the loop) on one
GGUF, the two variants of each measurement interleaved round by round, and prints
the median ratio with a 10-90% range:

  fold MODEL N_SEQ K PROMPT ROUNDS
      verify of N_SEQ x (K+1) tokens and a new sequence's PROMPT-token chunk:
      in one llama_decode against two.
  snapshots MODEL N_SEQ K ROUNDS
      the same verify on a context keeping K recurrent-state snapshots per
      sequence (what rolling drafts back needs) against one keeping none.
  replay MODEL N_SEQ K ROUNDS
      the same verify with snapshots against one without, where each sequence's
      state is first shared with a spare sequence id (rollback="replay"'s backup,
      dropped after the decode); first checks that a state restored from the
      backup decodes to the same logits.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import llama_cpp as L

HISTORY = 64  # tokens every verifying sequence holds before the measurement


class Decoder:
    """One context of `n_seq` sequences (kv_unified, 2 threads) and a batch to fill."""

    def __init__(self, model: object, n_seq: int, n_rs_seq: int, n_spare: int = 0) -> None:
        cp = L.llama_context_default_params()
        cp.n_ctx = 1024 * n_seq
        cp.n_batch = cp.n_ubatch = 1024
        cp.n_seq_max = n_seq + n_spare
        cp.kv_unified = n_seq + n_spare > 1
        cp.n_rs_seq = n_rs_seq
        cp.n_threads = cp.n_threads_batch = 2
        cp.no_perf = True
        self.ctx = L.llama_init_from_model(model, cp)
        self.mem = L.llama_get_memory(self.ctx)
        self.batch = L.llama_batch_init(2048, 0, 1)

    def add(self, tok: int, pos: int, seq: int, out: bool) -> None:
        b, i = self.batch, self.batch.n_tokens
        b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, out
        b.seq_id[i][0] = seq
        b.n_tokens += 1

    def decode(self) -> None:
        rc = L.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        self.batch.n_tokens = 0

    def fill_history(self, n_seq: int) -> list[int]:
        for s in range(n_seq):
            for p in range(HISTORY):
                self.add(100 + p, p, s, False)
        self.decode()
        return [HISTORY] * n_seq

    def add_verify(self, hist: list[int], k: int) -> None:
        for s, h in enumerate(hist):
            for j in range(k + 1):
                self.add(200 + j, h + j, s, True)


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def report(label: str, a_name: str, a: list[float], b_name: str, b: list[float]) -> None:
    r = sorted(x / y for x, y in zip(a, b, strict=True))
    lo, hi = r[len(r) // 10], r[-len(r) // 10 - 1]
    print(
        f"{label}: {a_name} {statistics.median(a):.2f} ms, {b_name} {statistics.median(b):.2f} ms, "
        f"{a_name}/{b_name} {statistics.median(r):.3f} [{lo:.3f}, {hi:.3f}]"
    )


def fold(model: object, n_seq: int, k: int, prompt: int, rounds: int) -> None:
    d = Decoder(model, n_seq + 1, k)  # the last sequence reads the prompt
    hist = d.fill_history(n_seq)

    def add_prompt() -> None:
        L.llama_memory_seq_rm(d.mem, n_seq, -1, -1)
        for p in range(prompt):
            d.add(300 + p, p, n_seq, p == prompt - 1)

    def separate() -> None:
        d.add_verify(hist, k)
        d.decode()
        add_prompt()
        d.decode()

    def folded() -> None:
        d.add_verify(hist, k)
        add_prompt()
        d.decode()

    t: dict[str, list[float]] = {"folded": [], "separate": []}
    for r in range(rounds):
        for name in ("separate", "folded") if r % 2 == 0 else ("folded", "separate"):
            t[name].append(timed(folded if name == "folded" else separate))
            for s in range(n_seq):  # keep one verify token: a rollback of k
                if not L.llama_memory_seq_rm(d.mem, s, hist[s] + 1, -1):
                    raise RuntimeError("rollback failed")
                hist[s] += 1
    report(f"n_seq={n_seq} k={k} prompt={prompt}", "folded", t["folded"], "separate", t["separate"])


def snapshots(model: object, n_seq: int, k: int, rounds: int) -> None:
    decoders = {"snapshots": Decoder(model, n_seq, k), "none": Decoder(model, n_seq, 0)}
    hist = {name: d.fill_history(n_seq) for name, d in decoders.items()}
    t: dict[str, list[float]] = {name: [] for name in decoders}
    for r in range(rounds):
        for name in ("snapshots", "none") if r % 2 == 0 else ("none", "snapshots"):
            d = decoders[name]
            d.add_verify(hist[name], k)
            t[name].append(timed(d.decode))
            hist[name] = [h + k + 1 for h in hist[name]]
    report(f"n_seq={n_seq} verify {k + 1} tokens each", "snapshots", t["snapshots"], "none", t["none"])


def _logits(d: Decoder, n_rows: int, n_vocab: int) -> list[float]:
    rows = L.llama_get_logits(d.ctx)
    return [rows[i] for i in range(n_rows * n_vocab)]


def replay(model: object, n_seq: int, k: int, rounds: int) -> None:
    n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    backup = Decoder(model, n_seq, 0, n_spare=n_seq)
    hist = backup.fill_history(n_seq)

    def share() -> None:
        for s in range(n_seq):
            L.llama_memory_seq_cp(backup.mem, s, n_seq + s, -1, -1)

    def drop() -> None:
        for s in range(n_seq):
            L.llama_memory_seq_rm(backup.mem, n_seq + s, -1, -1)

    share()
    backup.add_verify(hist, k)
    backup.decode()
    first = _logits(backup, n_seq * (k + 1), n_vocab)
    for s in range(n_seq):  # restore every sequence from its backup and decode again
        L.llama_memory_seq_rm(backup.mem, s, -1, -1)
        L.llama_memory_seq_cp(backup.mem, n_seq + s, s, -1, -1)
    backup.add_verify(hist, k)
    backup.decode()
    again = _logits(backup, n_seq * (k + 1), n_vocab)
    diff = max(abs(a - b) for a, b in zip(first, again, strict=True))
    print(f"restored from the backup: max |logit difference| {diff:.3g}")
    drop()
    snap = Decoder(model, n_seq, k)
    hists = {"snapshots": snap.fill_history(n_seq), "backup": [h + k + 1 for h in hist]}

    def with_backup() -> None:
        share()
        backup.add_verify(hists["backup"], k)
        backup.decode()
        drop()

    def with_snapshots() -> None:
        snap.add_verify(hists["snapshots"], k)
        snap.decode()

    t: dict[str, list[float]] = {"snapshots": [], "backup": []}
    for r in range(rounds):
        for name in ("snapshots", "backup") if r % 2 == 0 else ("backup", "snapshots"):
            t[name].append(timed(with_snapshots if name == "snapshots" else with_backup))
            hists[name] = [h + k + 1 for h in hists[name]]
    report(f"n_seq={n_seq} verify {k + 1} tokens each", "snapshots", t["snapshots"], "backup", t["backup"])


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("fold", "snapshots", "replay"):
        print(__doc__, file=sys.stderr)
        return 2
    L.llama_backend_init()
    mp = L.llama_model_default_params()
    mp.use_mmap = True
    model = L.llama_model_load_from_file(argv[1].encode(), mp)
    if not model:
        print(f"cannot load {argv[1]}", file=sys.stderr)
        return 1
    nums = [int(x) for x in argv[2:]]
    if argv[0] == "fold":
        fold(model, *nums)
    elif argv[0] == "replay":
        replay(model, *nums)
    else:
        snapshots(model, *nums)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
