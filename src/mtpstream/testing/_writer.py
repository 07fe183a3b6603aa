"""Generate the tensors and metadata of a synthetic model and write the GGUF file."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import gguf
import numpy as np

from ._config import Kind, ModelConfig, Weights
from ._oracle import HEAD_LAG, HeadMode, OracleLayout, oracle_layout, rng_for
from ._soft import SoftLayout, SoftSpec, soft_layout
from ._tokenizer import CHAT_TEMPLATE, Vocab, build_vocab

FORMAT_VERSION = 2
"""Bumped whenever generated files change; part of the cache key."""

META_PREFIX = "mtpstream.testing."

QType = Literal["f32", "f16", "q8_0"]

_STREAM_WEIGHTS = 100

_GGML_TYPES: dict[QType, gguf.GGMLQuantizationType] = {
    "f32": gguf.GGMLQuantizationType.F32,
    "f16": gguf.GGMLQuantizationType.F16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
}


@dataclass(frozen=True)
class TensorPlan:
    """One tensor to write: numpy shape (slowest dimension first), type, data factory."""

    name: str
    shape: tuple[int, ...]
    qtype: QType
    make: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        """Size of the tensor data in the file."""
        n = math.prod(self.shape)
        if self.qtype == "f32":
            return 4 * n
        if self.qtype == "f16":
            return 2 * n
        return n // 32 * 34


@dataclass(frozen=True)
class ModelRequest:
    """All arguments that determine a synthetic model file."""

    cfg: ModelConfig
    weights: Weights
    kind: Kind
    seed: int
    mtp_error_rate: float
    head: HeadMode = "token"


_KV_HEADS = ("kv", "kv2")
"""Head modes whose draft reads the head's own KV cache (a positional attention)."""

KV_ROPE_FREQ_BASE = 10.0
"""RoPE base of ``head="kv"`` files: every rotary frequency is high enough that
the head's positional attention peaks sharply at the previous position (the
trunk's attention has zero output weights, so the value changes nothing else)."""

KV_QK_NORM_WEIGHT = 8.0
"""Scale of the ``"kv"`` head's query and key: the previous position's score
leads every other position's by > 40 (softmax weight < 1e-17)."""


class _Builder:
    """Creates the tensor plans for one model request."""

    def __init__(self, req: ModelRequest, vocab: Vocab) -> None:
        self.req = req
        self.cfg = req.cfg
        self.vocab = vocab
        # oracle and soft weights: zero output projections, the hidden state is the embedding
        self.oracle = req.weights != "random"
        self.layout: OracleLayout | None = (
            oracle_layout(vocab, req.seed, req.mtp_error_rate) if req.weights == "oracle" else None
        )
        self.soft: SoftLayout | None = (
            soft_layout(vocab, req.seed, self.cfg.n_embd) if req.weights == "soft" else None
        )
        self._class_vectors: np.ndarray | None = None

    # -- helpers -----------------------------------------------------------------

    def matrix_type(self) -> QType:
        return "q8_0" if self.cfg.quantized else "f16"

    def class_vectors(self) -> np.ndarray:
        assert self.layout is not None
        if self._class_vectors is None:
            self._class_vectors = self.layout.class_vectors(
                self.req.seed, self.cfg.n_embd, const_dim=self.req.head in _KV_HEADS
            )
        return self._class_vectors

    def soft_spec(self) -> SoftSpec:
        assert self.soft is not None
        return self.soft.spec(self.cfg.n_embd, self.cfg.quantized, self.req.mtp_error_rate)

    @property
    def slot(self) -> int:
        """Width of one slot of the head's residual stream (a quarter of n_embd):
        slot 0 the input token's class code, slot 1 the code read from the hidden
        row, slot 2 ("kv") or 3 ("kv2") the code the attention read from a KV entry."""
        return self.cfg.n_embd // 4

    def normal(self, name: str, shape: tuple[int, ...], std: float) -> Callable[[], np.ndarray]:
        seed = self.req.seed

        def make() -> np.ndarray:
            rng = rng_for(seed, _STREAM_WEIGHTS, name)
            a = rng.standard_normal(size=shape, dtype=np.float32)
            a *= np.float32(std)
            return a

        return make

    @staticmethod
    def const(shape: tuple[int, ...], value: float) -> Callable[[], np.ndarray]:
        def make() -> np.ndarray:
            return np.full(shape, value, dtype=np.float32)

        return make

    def linear(self, name: str, n_out: int, n_in: int) -> TensorPlan:
        """A projection with standard ``1/sqrt(fan_in)`` init."""
        shape = (n_out, n_in)
        return TensorPlan(name, shape, self.matrix_type(), self.normal(name, shape, 1.0 / math.sqrt(n_in)))

    def out_proj(self, name: str, shape: tuple[int, ...]) -> TensorPlan:
        """A projection back into the residual stream: zero for oracle weights."""
        qtype = self.matrix_type()
        if self.oracle:
            return TensorPlan(name, shape, qtype, self.const(shape, 0.0))
        n_in = shape[-1]
        std = 1.0 / math.sqrt(n_in) / math.sqrt(2.0 * (self.cfg.n_layer + 1))
        return TensorPlan(name, shape, qtype, self.normal(name, shape, std))

    def ones(self, name: str, shape: tuple[int, ...]) -> TensorPlan:
        return TensorPlan(name, shape, "f32", self.const(shape, 1.0))

    # -- global tensors ------------------------------------------------------------

    def token_embd(self) -> TensorPlan:
        shape = (self.vocab.n_vocab, self.cfg.n_embd)
        name = "token_embd.weight"
        if not self.oracle:
            return TensorPlan(name, shape, self.matrix_type(), self.normal(name, shape, 1.0))

        def make() -> np.ndarray:
            if self.soft is not None:
                soft_rows: np.ndarray = self.soft.vectors[self.soft.token_class]
                return soft_rows
            assert self.layout is not None
            rows: np.ndarray = self.class_vectors()[self.layout.token_class]
            return rows

        return TensorPlan(name, shape, self.matrix_type(), make)

    def lm_head(self, name: str, head: bool) -> TensorPlan:
        shape = (self.vocab.n_vocab, self.cfg.n_embd)
        if not self.oracle:
            return TensorPlan(
                name,
                shape,
                self.matrix_type(),
                self.normal(name, shape, 8.0 / math.sqrt(self.cfg.n_embd)),
            )

        def make() -> np.ndarray:
            if self.soft is not None:
                spec = self.soft_spec()
                return self.soft.lm_head(self.vocab.n_vocab, spec.head_logits if head else spec.target_logits)
            assert self.layout is not None
            rows = self.layout.class_head if head else self.layout.class_succ
            w = np.zeros(shape, dtype=np.float32)
            w[rows] = self.class_vectors()
            return w

        return TensorPlan(name, shape, self.matrix_type(), make)

    # -- blocks --------------------------------------------------------------------

    def attention(self, il: int) -> Iterator[TensorPlan]:
        c = self.cfg
        p = f"blk.{il}."
        yield self.linear(p + "attn_q.weight", 2 * c.n_head * c.head_dim, c.n_embd)
        yield self.linear(p + "attn_k.weight", c.n_head_kv * c.head_dim, c.n_embd)
        yield self.linear(p + "attn_v.weight", c.n_head_kv * c.head_dim, c.n_embd)
        yield self.out_proj(p + "attn_output.weight", (c.n_embd, c.n_head * c.head_dim))
        yield self.ones(p + "attn_q_norm.weight", (c.head_dim,))
        yield self.ones(p + "attn_k_norm.weight", (c.head_dim,))

    def delta_net(self, il: int) -> Iterator[TensorPlan]:
        c = self.cfg
        p = f"blk.{il}."
        key_dim = c.ssm_d_state * c.ssm_n_group
        value_dim = c.ssm_d_state * c.ssm_dt_rank
        conv_dim = 2 * key_dim + value_dim
        seed = self.req.seed
        yield self.linear(p + "attn_qkv.weight", conv_dim, c.n_embd)
        yield self.linear(p + "attn_gate.weight", value_dim, c.n_embd)
        conv_name = p + "ssm_conv1d.weight"
        yield TensorPlan(
            conv_name,
            (conv_dim, c.ssm_d_conv),
            "f32",
            self.normal(conv_name, (conv_dim, c.ssm_d_conv), 1.0 / math.sqrt(c.ssm_d_conv)),
        )
        n_v = c.ssm_dt_rank

        def dt_bias() -> np.ndarray:
            rng = rng_for(seed, _STREAM_WEIGHTS, p + "ssm_dt.bias")
            dt = np.exp(rng.uniform(math.log(1e-3), math.log(1e-1), size=n_v))
            return np.log(np.expm1(dt)).astype(np.float32)  # inverse softplus

        def ssm_a() -> np.ndarray:
            rng = rng_for(seed, _STREAM_WEIGHTS, p + "ssm_a")
            return (-rng.uniform(1.0, 16.0, size=n_v)).astype(np.float32)

        yield TensorPlan(p + "ssm_dt.bias", (n_v,), "f32", dt_bias)
        yield TensorPlan(p + "ssm_a", (n_v,), "f32", ssm_a)
        for nm in ("ssm_beta.weight", "ssm_alpha.weight"):
            yield TensorPlan(
                p + nm,
                (n_v, c.n_embd),
                "f32",
                self.normal(p + nm, (n_v, c.n_embd), 1.0 / math.sqrt(c.n_embd)),
            )
        yield self.ones(p + "ssm_norm.weight", (c.ssm_d_state,))
        yield self.out_proj(p + "ssm_out.weight", (c.n_embd, value_dim))

    def ffn(self, il: int) -> Iterator[TensorPlan]:
        c = self.cfg
        p = f"blk.{il}."
        if not c.is_moe:
            yield self.linear(p + "ffn_gate.weight", c.n_ff, c.n_embd)
            yield self.linear(p + "ffn_up.weight", c.n_ff, c.n_embd)
            yield self.out_proj(p + "ffn_down.weight", (c.n_embd, c.n_ff))
            return
        # the router stays f32: with F16 routers batched and single-token decoding
        # can pick different experts
        router = p + "ffn_gate_inp.weight"
        yield TensorPlan(
            router,
            (c.n_expert, c.n_embd),
            "f32",
            self.normal(router, (c.n_expert, c.n_embd), 1.0 / math.sqrt(c.n_embd)),
        )
        for nm in ("ffn_gate_exps.weight", "ffn_up_exps.weight"):
            shape = (c.n_expert, c.n_ff_exp, c.n_embd)
            yield TensorPlan(
                p + nm,
                shape,
                self.matrix_type(),
                self.normal(p + nm, shape, 1.0 / math.sqrt(c.n_embd)),
            )
        yield self.out_proj(p + "ffn_down_exps.weight", (c.n_expert, c.n_embd, c.n_ff_exp))
        sg = p + "ffn_gate_inp_shexp.weight"
        yield TensorPlan(sg, (c.n_embd,), "f32", self.normal(sg, (c.n_embd,), 1.0 / math.sqrt(c.n_embd)))
        yield self.linear(p + "ffn_gate_shexp.weight", c.n_ff_shexp, c.n_embd)
        yield self.linear(p + "ffn_up_shexp.weight", c.n_ff_shexp, c.n_embd)
        yield self.out_proj(p + "ffn_down_shexp.weight", (c.n_embd, c.n_ff_shexp))

    def trunk_block(self, il: int) -> Iterator[TensorPlan]:
        p = f"blk.{il}."
        yield self.ones(p + "attn_norm.weight", (self.cfg.n_embd,))
        yield self.ones(p + "post_attention_norm.weight", (self.cfg.n_embd,))
        if self.cfg.is_recurrent(il):
            yield from self.delta_net(il)
        else:
            yield from self.attention(il)
        yield from self.ffn(il)

    def nextn_block(self, il: int) -> Iterator[TensorPlan]:
        c = self.cfg
        p = f"blk.{il}."
        yield self.ones(p + "attn_norm.weight", (c.n_embd,))
        yield self.ones(p + "post_attention_norm.weight", (c.n_embd,))
        if self.oracle and self.req.head in _KV_HEADS:
            yield from self.kv_attention(il)
        else:
            yield from self.attention(il)
        yield from self.ffn(il)
        eh = p + "nextn.eh_proj.weight"
        eh_shape = (c.n_embd, 2 * c.n_embd)
        if self.oracle:
            n = c.n_embd
            q = self.slot
            token_mode = self.req.head == "token"

            def eh_make() -> np.ndarray:
                # input = concat(enorm(token embedding), hnorm(hidden))
                w = np.zeros(eh_shape, dtype=np.float32)
                if token_mode:  # keep the token embedding
                    w[np.arange(n), np.arange(n)] = 1.0
                else:  # slot 0 <- the token's code, slot 1 <- the code in the hidden row's slot 0
                    w[np.arange(q), np.arange(q)] = 1.0
                    w[q + np.arange(q), n + np.arange(q)] = 1.0
                return w

            yield TensorPlan(eh, eh_shape, self.matrix_type(), eh_make)
        else:
            yield TensorPlan(
                eh,
                eh_shape,
                self.matrix_type(),
                self.normal(eh, eh_shape, 1.0 / math.sqrt(2 * c.n_embd)),
            )
        yield self.ones(p + "nextn.enorm.weight", (c.n_embd,))
        yield self.ones(p + "nextn.hnorm.weight", (c.n_embd,))
        yield self.ones(p + "nextn.shared_head_norm.weight", (c.n_embd,))
        if self.oracle and self.req.head != "token":
            yield self.slot_head(p + "nextn.shared_head_head.weight")
        else:
            yield self.lm_head(p + "nextn.shared_head_head.weight", head=True)

    def slot_head(self, name: str) -> TensorPlan:
        """The draft LM head of a "hidden"/"kv"/"kv2" head: the row of the predicted token
        for class ``c`` holds ``c``'s code in the slot the mode reads."""
        shape = (self.vocab.n_vocab, self.cfg.n_embd)
        lag = HEAD_LAG[self.req.head]
        q = self.slot

        def make() -> np.ndarray:
            assert self.layout is not None
            targets = self.layout.head_targets(lag)
            valid = np.flatnonzero(targets >= 0)
            codes = self.class_vectors()[:, :q]
            if len(np.unique(targets[valid])) != len(valid):  # pragma: no cover - construction invariant
                raise AssertionError("head targets are not distinct")
            if len(np.unique(codes[valid], axis=0)) != len(valid):  # pragma: no cover
                raise AssertionError("two classes share a slot code; choose another seed")
            w = np.zeros(shape, dtype=np.float32)
            w[targets[valid], lag * q : (lag + 1) * q] = codes[valid]
            return w

        return TensorPlan(name, shape, self.matrix_type(), make)

    def kv_attention(self, il: int) -> Iterator[TensorPlan]:
        """The "kv"/"kv2" head's attention: query head 0 and key head 0 are constant
        vectors (from the constant dimension 0) with the query pre-rotated by one
        position ("kv2": two), so the score peaks at the previous position (two back)
        whatever the content; value head 0 carries slot 1 of that entry into slot 2
        ("kv2": slot 3), the slot the draft LM head reads."""
        c = self.cfg
        p = f"blk.{il}."
        hd, nrot, q = c.head_dim, c.rope_dims, self.slot
        lag = HEAD_LAG[self.req.head]
        shift = lag - 1  # positions back the attention reads
        half = nrot // 2
        theta = KV_ROPE_FREQ_BASE ** (-2.0 * np.arange(half) / nrot)
        if hd < q:  # pragma: no cover - config invariant
            raise AssertionError("head_dim must hold a slot")
        qtype = self.matrix_type()

        def wq() -> np.ndarray:
            w = np.zeros((2 * c.n_head * hd, c.n_embd), dtype=np.float32)
            w[np.arange(half), 0] = np.cos(shift * theta)  # head 0's query; its gate rows stay 0
            w[half + np.arange(half), 0] = -np.sin(shift * theta)
            return w

        def wk() -> np.ndarray:
            w = np.zeros((c.n_head_kv * hd, c.n_embd), dtype=np.float32)
            w[np.arange(half), 0] = 1.0
            return w

        def wv() -> np.ndarray:
            w = np.zeros((c.n_head_kv * hd, c.n_embd), dtype=np.float32)
            w[np.arange(q), q + np.arange(q)] = 1.0
            return w

        def wo() -> np.ndarray:
            w = np.zeros((c.n_embd, c.n_head * hd), dtype=np.float32)
            w[lag * q + np.arange(q), np.arange(q)] = 2.0  # undo the sigmoid(0) = 0.5 gate
            return w

        yield TensorPlan(p + "attn_q.weight", (2 * c.n_head * hd, c.n_embd), qtype, wq)
        yield TensorPlan(p + "attn_k.weight", (c.n_head_kv * hd, c.n_embd), qtype, wk)
        yield TensorPlan(p + "attn_v.weight", (c.n_head_kv * hd, c.n_embd), qtype, wv)
        yield TensorPlan(p + "attn_output.weight", (c.n_embd, c.n_head * hd), qtype, wo)
        yield TensorPlan(p + "attn_q_norm.weight", (hd,), "f32", self.const((hd,), KV_QK_NORM_WEIGHT))
        yield TensorPlan(p + "attn_k_norm.weight", (hd,), "f32", self.const((hd,), KV_QK_NORM_WEIGHT))

    def plans(self) -> list[TensorPlan]:
        c = self.cfg
        kind = self.req.kind
        out: list[TensorPlan] = [
            self.token_embd(),
            self.ones("output_norm.weight", (c.n_embd,)),
            self.lm_head("output.weight", head=False),
        ]
        if kind != "sidecar":
            for il in range(c.n_layer):
                out.extend(self.trunk_block(il))
        if kind != "plain":
            out.extend(self.nextn_block(c.n_layer))
        return out


def _add_soft_metadata(w: gguf.GGUFWriter, spec: SoftSpec) -> None:
    m = META_PREFIX
    w.add_array(m + "soft_token_class", list(spec.token_class))
    w.add_array(m + "soft_successors", [t for succ in spec.successors for t in succ])
    w.add_array(m + "soft_target_logits", list(spec.target_logits))
    w.add_array(m + "soft_head_logits", list(spec.head_logits))


def _add_metadata(w: gguf.GGUFWriter, req: ModelRequest, vocab: Vocab, layout: OracleLayout | None) -> None:
    _add_hyperparameters(w, req)
    _add_tokenizer(w, vocab)
    _add_synthetic_keys(w, req, layout)


def _add_hyperparameters(w: gguf.GGUFWriter, req: ModelRequest) -> None:
    c = req.cfg
    a = c.arch
    w.add_string("general.name", f"mtpstream synthetic {a} {c.size} {req.weights} {req.kind}")
    w.add_uint32(
        "general.file_type",
        int(gguf.LlamaFileType.MOSTLY_Q8_0 if c.quantized else gguf.LlamaFileType.MOSTLY_F16),
    )
    n_nextn = 0 if req.kind == "plain" else 1
    w.add_uint32(f"{a}.context_length", c.n_ctx_train)
    w.add_uint32(f"{a}.embedding_length", c.n_embd)
    w.add_uint32(f"{a}.block_count", c.n_layer + n_nextn)
    if n_nextn:
        w.add_uint32(f"{a}.nextn_predict_layers", n_nextn)
    w.add_uint32(f"{a}.feed_forward_length", c.n_ff_shexp if c.is_moe else c.n_ff)
    w.add_uint32(f"{a}.attention.head_count", c.n_head)
    w.add_uint32(f"{a}.attention.head_count_kv", c.n_head_kv)
    w.add_uint32(f"{a}.attention.key_length", c.head_dim)
    w.add_uint32(f"{a}.attention.value_length", c.head_dim)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", c.rms_eps)
    w.add_float32(f"{a}.rope.freq_base", KV_ROPE_FREQ_BASE if req.head in _KV_HEADS else c.rope_freq_base)
    w.add_uint32(f"{a}.rope.dimension_count", c.rope_dims)
    w.add_array(f"{a}.rope.dimension_sections", list(c.rope_sections))
    w.add_uint32(f"{a}.ssm.conv_kernel", c.ssm_d_conv)
    w.add_uint32(f"{a}.ssm.inner_size", c.ssm_d_inner)
    w.add_uint32(f"{a}.ssm.state_size", c.ssm_d_state)
    w.add_uint32(f"{a}.ssm.time_step_rank", c.ssm_dt_rank)
    w.add_uint32(f"{a}.ssm.group_count", c.ssm_n_group)
    w.add_uint32(f"{a}.full_attention_interval", c.full_attention_interval)
    if c.is_moe:
        w.add_uint32(f"{a}.expert_count", c.n_expert)
        w.add_uint32(f"{a}.expert_used_count", c.n_expert_used)
        w.add_uint32(f"{a}.expert_feed_forward_length", c.n_ff_exp)
        w.add_uint32(f"{a}.expert_shared_feed_forward_length", c.n_ff_shexp)


def _add_tokenizer(w: gguf.GGUFWriter, vocab: Vocab) -> None:
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", "qwen2")
    w.add_array("tokenizer.ggml.tokens", list(vocab.tokens))
    w.add_array("tokenizer.ggml.token_type", list(vocab.token_types))
    w.add_array("tokenizer.ggml.merges", vocab.merges())
    w.add_uint32("tokenizer.ggml.bos_token_id", vocab.bos_id)
    w.add_uint32("tokenizer.ggml.eos_token_id", vocab.eos_id)
    w.add_uint32("tokenizer.ggml.padding_token_id", vocab.pad_id)
    w.add_bool("tokenizer.ggml.add_bos_token", False)
    w.add_string("tokenizer.chat_template", CHAT_TEMPLATE)


def _add_synthetic_keys(w: gguf.GGUFWriter, req: ModelRequest, layout: OracleLayout | None) -> None:
    """What :mod:`mtpstream.testing` reads back: the request and the oracle's tables."""
    c = req.cfg
    m = META_PREFIX
    w.add_uint32(m + "format_version", FORMAT_VERSION)
    w.add_string(m + "arch", c.arch)
    w.add_string(m + "size", c.size)
    w.add_string(m + "weights", req.weights)
    w.add_string(m + "kind", req.kind)
    w.add_uint64(m + "seed", req.seed)
    w.add_float64(m + "mtp_error_rate", req.mtp_error_rate)
    w.add_string(m + "head", req.head)
    if layout is not None:
        spec = layout.spec(req.mtp_error_rate, with_head=req.kind != "plain", head_mode=req.head)
        w.add_array(m + "succ", list(spec.succ))
        if spec.head is not None:
            w.add_array(m + "head_map", list(spec.head))
        w.add_uint32(m + "eos_token_id", spec.eos_token_id)
        w.add_string(m + "stop_word", spec.stop_word)
        w.add_uint32(m + "stop_token_id", spec.stop_token_id)
        w.add_uint32(m + "chain_start", spec.chain_start)


def _encode(plan: TensorPlan) -> np.ndarray:
    data = plan.make()
    if data.shape != plan.shape:  # pragma: no cover - construction invariant
        raise AssertionError(f"{plan.name}: shape {data.shape} != {plan.shape}")
    if plan.qtype == "f32":
        return np.ascontiguousarray(data, dtype=np.float32)
    if plan.qtype == "f16":
        return np.ascontiguousarray(data, dtype=np.float16)
    q = gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
    return np.ascontiguousarray(q)


def write_model(req: ModelRequest, path: str | os.PathLike[str]) -> None:
    """Write the GGUF file for ``req`` to ``path`` (streaming one tensor at a time)."""
    vocab = build_vocab(req.cfg.min_vocab)
    builder = _Builder(req, vocab)
    plans = builder.plans()
    w = gguf.GGUFWriter(path, req.cfg.arch)
    try:
        _add_metadata(w, req, vocab, builder.layout)
        if builder.soft is not None:
            _add_soft_metadata(w, builder.soft_spec())
        for p in plans:
            w.add_tensor_info(p.name, p.shape, np.dtype(np.float32), p.nbytes, raw_dtype=_GGML_TYPES[p.qtype])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for p in plans:
            data = _encode(p)
            if data.nbytes != p.nbytes:  # pragma: no cover - construction invariant
                raise AssertionError(f"{p.name}: {data.nbytes} bytes, planned {p.nbytes}")
            w.write_tensor_data(data)
    finally:
        w.close()
