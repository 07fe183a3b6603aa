#!/usr/bin/env python3
"""Which matrix multiplies of a model's graph would take llama.cpp's broken AMX path.

    python scripts/amx_shapes.py [MODEL] [N_SEQ] [TOKENS_PER_SEQ]

Decodes one ubatch of N_SEQ sequences (default 2 x 4 tokens) through llama-cpp-python's
low-level API with a graph callback, and prints every MUL_MAT by weight name with the
weight's and the activation's shapes. Those marked are a 2D weight times a batched
(3D/4D) activation: ggml_backend_amx_mul_mat (ggml-cpu/amx/mmq.cpp, llama-cpp-python
0.3.36) offsets the weight by the batch index there instead of broadcasting it, so with
the weight in the AMX buffer they read and write out of bounds. MODEL defaults to the
synthetic tiny qwen35 model. Runs on any CPU: it reads the graph, not the kernels.
"""

from __future__ import annotations

import ctypes
import sys

import llama_cpp as L

from mtpstream.testing import make_model

GGML_MAX_DIMS = 4
GGML_MAX_SRC = 10
GGML_OP_MUL_MAT = 29  # enum ggml_op of the pinned ggml


class Tensor(ctypes.Structure):
    """The head of struct ggml_tensor (ggml.h of the pinned ggml)."""


Tensor._fields_ = [
    ("type", ctypes.c_int),
    ("buffer", ctypes.c_void_p),
    ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
    ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
    ("op", ctypes.c_int),
    ("op_params", ctypes.c_int32 * 16),
    ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(Tensor) * GGML_MAX_SRC),
    ("view_src", ctypes.c_void_p),
    ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p),
    ("name", ctypes.c_char * 64),
]


def main(path: str, n_seq: int, n_tok: int) -> None:
    L.llama_backend_init()
    mp = L.llama_model_default_params()
    mp.use_extra_bufts = False
    model = L.llama_model_load_from_file(path.encode(), mp)
    seen: dict[tuple[str, tuple[int, ...], tuple[int, ...]], int] = {}

    @L.ggml_backend_sched_eval_callback  # type: ignore[misc]
    def cb(t: int, ask: bool, _ud: int) -> bool:
        if not ask:
            return True
        node = ctypes.cast(t, ctypes.POINTER(Tensor)).contents
        if node.op == GGML_OP_MUL_MAT:
            w, a = node.src[0].contents, node.src[1].contents
            name = w.name.decode()
            name = name.split(".", 2)[-1] if name.startswith("blk.") else name
            key = (name, tuple(w.ne), tuple(a.ne))
            seen[key] = seen.get(key, 0) + 1
        return False

    cp = L.llama_context_default_params()
    cp.n_ctx = 512
    cp.n_batch = cp.n_ubatch = max(64, n_seq * n_tok)
    cp.n_seq_max = n_seq
    cp.kv_unified = True
    cp.cb_eval = cb
    ctx = L.llama_init_from_model(model, cp)
    batch = L.llama_batch_init(n_seq * n_tok, 0, 1)
    for i in range(n_seq * n_tok):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = 100 + i, i % n_tok, 1, 1
        batch.seq_id[i][0] = i // n_tok
    batch.n_tokens = n_seq * n_tok
    if L.llama_decode(ctx, batch) != 0:
        raise SystemExit("llama_decode failed")
    print(f"{path}: one ubatch of {n_seq} sequences x {n_tok} tokens")
    for (name, w, a), count in sorted(seen.items()):
        broken = w[2] * w[3] == 1 and a[2] * a[3] > 1
        mark = "  <- 2D weight x batched activation (AMX: out of bounds)" if broken else ""
        print(f"  {name:26s} weight {list(w)} x activation {list(a)} (x{count}){mark}")
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    L.llama_model_free(model)


if __name__ == "__main__":
    main(
        sys.argv[1] if len(sys.argv) > 1 else str(make_model(weights="random")),
        int(sys.argv[2]) if len(sys.argv) > 2 else 2,
        int(sys.argv[3]) if len(sys.argv) > 3 else 4,
    )
