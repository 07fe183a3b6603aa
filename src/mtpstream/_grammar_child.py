"""The grammar checker's child process: ``python -m mtpstream._grammar_child MODEL MEMORY``.

It loads the model's vocabulary only (llama.cpp's ``vocab_only``, through
llama-cpp-python's low-level API, the same libllama the engine uses), caps its own
address space at ``MEMORY`` bytes, prints one JSON line ``{"ready": n_vocab}`` and then
answers one JSON line per request line. A request ``{"grammar": text, "steps": k,
"paths": p, "seed": s, "budget": b}`` builds the grammar the way the engine does
(``llama_sampler_init_grammar``), then plays ``p`` generations of up to ``k`` tokens:
each step applies the grammar over the whole vocabulary and accepts one allowed token
(path 0 picks at random, path 1 the longest allowed token, path 2 the shortest). The
answer is ``{"parsed": bool, "build_s": s, "step_s": [...], "tokens": n}``.

Times are CPU seconds of this (single-threaded) work, so that a loaded machine does
not make a grammar look costlier. Each trial sets ``RLIMIT_CPU`` to the CPU used so far
plus the request's ``budget``: the kernel ends this process with SIGXCPU when a trial
outruns it; the parent also kills it past a wall-clock deadline. A grammar that exhausts the memory cap
ends the process (llama.cpp's ``std::bad_alloc`` crosses the C API and aborts).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import random
import resource
import signal
import sys
import time
from typing import Any

__all__ = ["main"]


def _limit_memory(limit: int) -> None:
    # AddressSanitizer (scripts/sanitize.sh preloads it) reserves terabytes of address
    # space for its shadow memory: under it an address-space cap fails every allocation
    if limit > 0 and "libasan" not in os.environ.get("LD_PRELOAD", ""):
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGXCPU would dump core
    with contextlib.suppress(AttributeError, OSError):  # die with the parent, even mid-grammar (Linux)
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _Vocab:
    def __init__(self, path: str) -> None:
        import llama_cpp as L
        import numpy as np

        self.L, self.np = L, np

        def silent(level: int, text: bytes, user: Any) -> None:
            return None

        quiet = L.llama_log_callback(silent)
        self._quiet = quiet  # kept alive: llama.cpp holds the pointer
        L.llama_log_set(quiet, None)
        L.llama_backend_init()
        params = L.llama_model_default_params()
        params.vocab_only = True
        params.use_mmap = False
        self.model = L.llama_model_load_from_file(path.encode(), params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load the vocabulary of {path}")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = int(L.llama_vocab_n_tokens(self.vocab))
        dtype = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)], align=True)
        assert dtype.itemsize == ctypes.sizeof(L.llama_token_data)
        self.template = np.zeros(self.n_vocab, dtype=dtype)
        self.template["id"] = np.arange(self.n_vocab, dtype=np.int32)
        self.cand = self.template.copy()
        self.arr = L.llama_token_data_array(
            data=self.cand.ctypes.data_as(L.llama_token_data_p), size=self.n_vocab, selected=-1, sorted=False
        )
        buf = ctypes.create_string_buffer(256)
        lengths = [
            max(0, L.llama_token_to_piece(self.vocab, t, buf, 256, 0, True)) for t in range(self.n_vocab)
        ]
        self.length = np.array(lengths, dtype=np.int32)
        self.stop_at = 0.0  # CPU time after which a trial starts no more steps
        self.eog = np.array([bool(L.llama_vocab_is_eog(self.vocab, t)) for t in range(self.n_vocab)])

    def allowed(self, smpl: Any) -> Any:
        """Apply the grammar over the whole vocabulary; the allowed, non-EOG token ids."""
        np = self.np
        self.cand[:] = self.template
        self.arr.size, self.arr.selected, self.arr.sorted = self.n_vocab, -1, False
        self.L.llama_sampler_apply(smpl, ctypes.byref(self.arr))
        ok = np.isfinite(self.cand["logit"][: self.arr.size]) & ~self.eog[self.cand["id"][: self.arr.size]]
        return self.cand["id"][: self.arr.size][ok]

    def check(self, grammar: str, steps: int, paths: int, seed: int, budget: float) -> dict[str, Any]:
        """Build and play (see the module docstring); no step starts once half of
        ``budget`` CPU seconds is spent (a costly but finite grammar is judged on the
        steps it got; the other half leaves room for the step in progress)."""
        L = self.L
        out: dict[str, Any] = {"parsed": True, "build_s": 0.0, "step_s": [], "tokens": 0}
        self.stop_at = _cpu_s() + budget / 2
        for path in range(max(1, paths)):
            t = time.thread_time()
            smpl = L.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
            if path == 0:
                out["build_s"] = time.thread_time() - t
            if not smpl:
                out["parsed"] = False
                return out
            try:
                self._play(smpl, steps, path, random.Random(seed + path), out)
            finally:
                L.llama_sampler_free(smpl)
        return out

    def _play(self, smpl: Any, steps: int, path: int, rng: random.Random, out: dict[str, Any]) -> None:
        for _ in range(steps):
            if _cpu_s() > self.stop_at:
                return
            t = time.thread_time()
            ids = self.allowed(smpl)
            if len(ids) == 0:
                out["step_s"].append(time.thread_time() - t)
                return
            if path == 0:
                tok = int(ids[rng.randrange(len(ids))])
            else:
                lengths = self.length[ids]
                tok = int(ids[int(lengths.argmax() if path == 1 else lengths.argmin())])
            self.L.llama_sampler_accept(smpl, tok)
            out["step_s"].append(time.thread_time() - t)
            out["tokens"] += 1


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _limit_cpu(budget: float) -> None:
    """SIGXCPU (which ends this process) once this trial has used ``budget`` more CPU
    seconds (rounded up to whole seconds: the kernel counts in seconds)."""
    soft = math.ceil(_cpu_s() + budget)
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    resource.setrlimit(
        resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard)
    )


def main(argv: list[str]) -> int:
    path, memory = argv[0], int(argv[1])
    _limit_memory(memory)
    try:
        vocab = _Vocab(path)
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(json.dumps({"ready": vocab.n_vocab}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        _limit_cpu(float(req["budget"]))
        budget = float(req["budget"])
        res = vocab.check(str(req["grammar"]), int(req["steps"]), int(req["paths"]), int(req["seed"]), budget)
        print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
