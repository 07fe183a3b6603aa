"""Hyper-parameters of the synthetic Qwen3.5 / Qwen3.5-MoE models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Arch = Literal["qwen35", "qwen35moe"]
Size = Literal["tiny", "small", "bench"]
Kind = Literal["mtp", "plain", "sidecar"]
Weights = Literal["random", "oracle", "soft"]

ARCHS: tuple[Arch, ...] = ("qwen35", "qwen35moe")
SIZES: tuple[Size, ...] = ("tiny", "small", "bench")
KINDS: tuple[Kind, ...] = ("mtp", "plain", "sidecar")
WEIGHTS: tuple[Weights, ...] = ("random", "oracle", "soft")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of one synthetic model (trunk + optional NextN block)."""

    arch: Arch
    size: Size
    n_embd: int
    n_layer: int
    """Trunk layers (the NextN block, when present, is layer ``n_layer``)."""
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    full_attention_interval: int
    ssm_d_state: int
    ssm_n_group: int
    ssm_dt_rank: int
    ssm_d_conv: int
    rope_dims: int
    rope_sections: tuple[int, int, int, int]
    min_vocab: int
    n_ctx_train: int = 32768
    rope_freq_base: float = 10_000_000.0
    rms_eps: float = 1e-6
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    n_ff_shexp: int = 0
    quantized: bool = False
    """Write large matrices as Q8_0 (otherwise F16)."""

    @property
    def ssm_d_inner(self) -> int:
        """GDN value width; the loader requires ``state_size * time_step_rank``."""
        return self.ssm_d_state * self.ssm_dt_rank

    @property
    def is_moe(self) -> bool:
        """Whether the FFN is a mixture of experts."""
        return self.n_expert > 0

    def is_recurrent(self, il: int) -> bool:
        """Whether trunk layer ``il`` is a Gated-DeltaNet (linear attention) layer."""
        return il < self.n_layer and (il + 1) % self.full_attention_interval != 0


def _sections(rope_dims: int) -> tuple[int, int, int, int]:
    half = rope_dims // 2
    a = (half * 11) // 32
    return (a, a, half - 2 * a, 0)


def model_config(arch: Arch, size: Size) -> ModelConfig:
    """Return the hyper-parameters for ``arch`` at ``size``."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")
    moe = arch == "qwen35moe"
    if size in ("tiny", "small"):
        # "small": the tiny shapes 32 layers deep (F16, about 1 ms per target decode
        # on 2 cores), where the loop's per-iteration overhead shows
        return ModelConfig(
            arch=arch,
            size=size,
            n_embd=128,
            n_layer=4 if size == "tiny" else 32,
            n_head=4,
            n_head_kv=2,
            head_dim=32,
            n_ff=256,
            full_attention_interval=4,
            ssm_d_state=16,
            ssm_n_group=2,
            ssm_dt_rank=4,
            ssm_d_conv=4,
            rope_dims=16,
            rope_sections=_sections(16),
            min_vocab=0,
            n_expert=8 if moe else 0,
            n_expert_used=2 if moe else 0,
            n_ff_exp=64 if moe else 0,
            n_ff_shexp=128 if moe else 0,
            quantized=False,
        )
    # "bench": shaped like Qwen3.5-0.8B (dense) / a scaled-down 35B-A3B (MoE)
    return ModelConfig(
        arch=arch,
        size=size,
        n_embd=1024,
        n_layer=24,
        n_head=8,
        n_head_kv=2,
        head_dim=256,
        n_ff=3584,
        full_attention_interval=4,
        ssm_d_state=128,
        ssm_n_group=16,
        ssm_dt_rank=16,
        ssm_d_conv=4,
        rope_dims=64,
        rope_sections=_sections(64),
        min_vocab=32768,
        n_expert=16 if moe else 0,
        n_expert_used=4 if moe else 0,
        n_ff_exp=256 if moe else 0,
        n_ff_shexp=512 if moe else 0,
        quantized=True,
    )
