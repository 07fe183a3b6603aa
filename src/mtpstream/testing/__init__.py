"""Synthetic Qwen3.5 / Qwen3.5-MoE GGUF models with an MTP (NextN) head, for tests.

``make_model(...)`` writes (once, into a cache) a real llama.cpp-loadable model
with a gpt2-style word-level tokenizer.  With ``weights="oracle"`` the target's
greedy output follows a known successor map and the MTP head agrees with it
except on a chosen fraction of tokens, so speculative-decoding acceptance is
known exactly (:func:`expected_acceptance`) and analytically
(:func:`analytic_acceptance`).  ``head=`` chooses what the oracle head drafts
from: the token (``"token"``), the hidden row it is fed (``"hidden"``) or its
own KV entry at the previous position (``"kv"``) or two back (``"kv2"``);
:func:`inject_fault` puts a
known engine bug back so a test can see the acceptance drop.

With ``weights="soft"`` target and head share a known next-token distribution
(0.5 / 0.3 / 0.2 over three successors at temperature 1; the head's is moved
towards 0.1 / 0.1 / 0.8 by ``mtp_error_rate``), so acceptance at temperature > 0
is known: :func:`load_soft_spec` gives the :class:`SoftSpec`, whose
``rejection_acceptance(temp, ...)`` is ``sum_x min(p(x), q(x))`` per draft.

Example::

    from mtpstream.testing import make_model, load_spec, expected_acceptance
    path = make_model(arch="qwen35", weights="oracle", size="tiny", mtp_error_rate=0.25)
    spec = load_spec(path)
    res = expected_acceptance(spec, [spec.chain_start], n_draft=3, n_tokens=64)
"""

from __future__ import annotations

from ._api import (
    CACHE_ENV,
    SyntheticModel,
    build_spec,
    default_cache_dir,
    describe,
    expected_acceptance,
    load_model,
    load_soft_spec,
    load_spec,
    make_model,
    oracle_margins,
)
from ._config import (
    ARCHS,
    KINDS,
    SIZES,
    WEIGHTS,
    Arch,
    Kind,
    ModelConfig,
    Size,
    Weights,
    model_config,
)
from ._faults import FAULTS, Fault, inject_fault
from ._oracle import HEAD_MODES, STOP_WORD, AcceptanceResult, HeadMode, OracleSpec, analytic_acceptance
from ._real_vocab import make_real_vocab_model, template_path
from ._soft import HEAD_SKEW, TARGET_PROBS, SoftSpec, accepted_per_verify
from ._writer import FORMAT_VERSION
from .rpc_workers import RpcWorker, free_port, rpc_workers

__all__ = [
    "ARCHS",
    "CACHE_ENV",
    "FAULTS",
    "FORMAT_VERSION",
    "HEAD_MODES",
    "HEAD_SKEW",
    "KINDS",
    "SIZES",
    "STOP_WORD",
    "TARGET_PROBS",
    "WEIGHTS",
    "AcceptanceResult",
    "Arch",
    "Fault",
    "HeadMode",
    "Kind",
    "ModelConfig",
    "OracleSpec",
    "RpcWorker",
    "Size",
    "SoftSpec",
    "SyntheticModel",
    "Weights",
    "accepted_per_verify",
    "analytic_acceptance",
    "build_spec",
    "default_cache_dir",
    "describe",
    "expected_acceptance",
    "free_port",
    "inject_fault",
    "load_model",
    "load_soft_spec",
    "load_spec",
    "make_model",
    "make_real_vocab_model",
    "model_config",
    "oracle_margins",
    "rpc_workers",
    "template_path",
]
