"""Bytes each RPC worker receives per decode iteration, plain vs n_draft=3 (loopback
workers started here; ``ss`` counts the bytes on the workers' sockets).

    .venv/bin/python scripts/rpc_bytes.py [--size bench|tiny]
"""

from __future__ import annotations

import argparse
import functools
import gc
import re
import subprocess

import anyio

import mtpstream
from mtpstream.testing import make_model, rpc_workers


def received(port: int) -> int:
    """Bytes received so far on the TCP sockets bound to ``port`` (the worker's side)."""
    out = subprocess.run(
        ["ss", "-tin", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    return sum(int(x) for x in re.findall(r"bytes_received:(\d+)", out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=("tiny", "bench"), default="bench")
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    path = make_model(arch="qwen35", weights="oracle", size=args.size, mtp_error_rate=0.25)
    with rpc_workers(2) as ws:
        model = mtpstream.load_model(
            path, rpc=[w.endpoint for w in ws], n_gpu_layers=mtpstream.load_model(path).n_layer
        )
        prompt = model.tokenize("The quiet river carried", add_special=True)
        for k in (0, 3):
            with mtpstream.init(model, n_draft=k, n_ctx=1024, rollback="snapshots", n_threads=1) as mtp:
                anyio.run(functools.partial(mtp.generate, prompt, max_tokens=8))
                before, st0 = [received(w.port) for w in ws], mtp.stats()
                anyio.run(functools.partial(mtp.generate, prompt, max_tokens=args.tokens))
                after, st1 = [received(w.port) for w in ws], mtp.stats()
            iters = st1.iters - st0.iters
            per_iter = [round((a - b) / iters) for a, b in zip(after, before, strict=True)]
            print(f"n_draft={k}: {iters} iterations, bytes received per iteration by each worker: {per_iter}")
        # free the split model while its workers run (a session object, even closed,
        # holds its model's weights)
        model.close()
        del model, mtp
        gc.collect()


if __name__ == "__main__":
    main()
