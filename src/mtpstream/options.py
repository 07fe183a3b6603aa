"""Validated options (pydantic). Nothing reaches native code before passing here."""

from __future__ import annotations

import math
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import InvalidOptionError

__all__ = ["GGML_TYPES", "GenerationOptions", "SessionOptions"]

# ggml_type ids of the KV-cache types llama.cpp accepts
GGML_TYPES: dict[str, int] = {
    "f32": 0,
    "f16": 1,
    "q4_0": 2,
    "q4_1": 3,
    "q5_0": 6,
    "q5_1": 7,
    "q8_0": 8,
    "bf16": 30,
}

KVType = Literal["f32", "f16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "bf16"]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class SessionOptions(_Strict):
    """Options of :func:`mtpstream.init` (apply to the target and the draft context)."""

    n_draft: int | Literal["auto"] = Field(default=3)
    n_ctx: int = Field(default=2048, ge=1)
    n_threads: int | None = Field(default=None, ge=1)
    n_threads_batch: int | None = Field(default=None, ge=1)
    n_batch: int | None = Field(default=None, ge=1)
    n_ubatch: int | None = Field(default=None, ge=1)
    flash_attn: bool | None = None
    type_k: KVType | None = None
    type_v: KVType | None = None
    offload_kqv: bool | None = None

    @model_validator(mode="after")
    def _quantized_v_needs_flash_attn(self) -> SessionOptions:
        if self.type_v not in (None, "f32", "f16", "bf16") and self.flash_attn is False:
            raise ValueError("a quantized V cache (type_v) requires flash attention; drop flash_attn=False")
        return self

    @field_validator("n_draft")
    @classmethod
    def _n_draft(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 0 <= v <= 32:
            raise ValueError("n_draft must be between 0 and 32, or 'auto'")
        return v


class GenerationOptions(_Strict):
    """Options of ``stream``/``stream_events``/``generate``."""

    max_tokens: int = Field(default=256, ge=1)
    temp: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    top_k: int = Field(default=0, ge=0)
    top_p: float = Field(default=1.0, ge=0.0, le=1.0)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=0xFFFFFFFE)
    penalty_last_n: int = Field(default=64, ge=-1)
    penalty_repeat: float = Field(default=1.0, gt=0.0, allow_inf_nan=False)
    penalty_freq: float = Field(default=0.0, allow_inf_nan=False)
    penalty_present: float = Field(default=0.0, allow_inf_nan=False)
    grammar: str | None = None
    stop: tuple[str, ...] = ()
    emit_stats_every: int = Field(default=0, ge=0)
    timeout: float | None = Field(default=None, gt=0.0)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, v: Any) -> Any:
        if v is None:
            return ()
        if isinstance(v, str):
            v = (v,)
        if isinstance(v, list):
            v = tuple(v)
        if isinstance(v, tuple):
            for s in v:
                if not isinstance(s, str) or s == "":
                    raise ValueError("stop strings must be non-empty str")
        return v

    @field_validator("grammar")
    @classmethod
    def _grammar(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("grammar is empty")
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("timeout must be finite")
        return v


M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], values: dict[str, Any]) -> M:
    """Build ``model`` from keyword arguments, raising :class:`InvalidOptionError`."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        if not err["loc"] and "type_v" in err["msg"]:
            err["loc"] = ("type_v",)
        field = ".".join(str(p) for p in err["loc"]) or None
        if err["type"] == "extra_forbidden":
            msg = f"unknown option '{field}'"
        else:
            msg = f"invalid option '{field}': {err['msg']} (got {err.get('input')!r})"
        raise InvalidOptionError(msg, field=str(err["loc"][0]) if err["loc"] else None) from None
