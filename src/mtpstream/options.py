"""Validated options (pydantic). Nothing reaches native code before passing here."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from ._grammar_limits import grammar_problem
from .errors import InvalidOptionError

__all__ = [
    "GGML_TYPES",
    "INT32_MAX",
    "MAX_PENALTY",
    "MAX_SEQUENCES",
    "MAX_TEMP",
    "MAX_THREADS",
    "MAX_TOP_LOGPROBS",
    "GenerationOptions",
    "SessionOptions",
    "check_text",
]

INT32_MAX = 2**31 - 1
"""Every integer that reaches llama.cpp is an int32."""
MAX_THREADS = 512
"""ggml's own limit on the threads of one computation (GGML_MAX_N_THREADS)."""
MAX_SEQUENCES = 64
"""The most sequences one session decodes together (``n_seq``)."""
MAX_TEMP = 100.0
"""The highest temperature (above ~10 sampling is already uniform; 1e308 overflows float32)."""
MAX_PENALTY = 100.0
"""The largest repeat/frequency/presence penalty (magnitude)."""
MAX_TOP_LOGPROBS = 20
"""The most alternatives per token ``logprobs`` may ask for (OpenAI's top_logprobs limit)."""
MAX_LOGIT_BIAS = 100.0
"""A ``logit_bias`` value lies in [-MAX_LOGIT_BIAS, MAX_LOGIT_BIAS] (OpenAI's range)."""
MAX_GRAMMAR_TRIGGERS = 16
"""The most words ``grammar_triggers`` takes."""
MAX_TRIGGER_CHARS = 256
"""The longest word of ``grammar_triggers``."""
MIN_TIMEOUT_S = 0.001
MAX_TIMEOUT_S = 10_000_000.0
"""A call's ``timeout`` lies between these (seconds)."""

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
    n_ctx: int = Field(default=2048, ge=1, le=INT32_MAX)
    n_seq: int = Field(default=1, ge=1, le=MAX_SEQUENCES)
    n_threads: int | None = Field(default=None, ge=1, le=MAX_THREADS)
    n_threads_batch: int | None = Field(default=None, ge=1, le=MAX_THREADS)
    n_batch: int | None = Field(default=None, ge=1, le=INT32_MAX)
    """None: ``min(n_ctx * n_seq, max(512, n_seq * (n_draft + 1)))`` (``_bridge.default_n_batch``)."""
    n_ubatch: int | None = Field(default=None, ge=1, le=INT32_MAX)
    flash_attn: bool | None = None
    type_k: KVType | None = None
    type_v: KVType | None = None
    offload_kqv: bool | None = None
    prompt_cache: bool = True
    prompt_cache_checkpoint_bytes: int = Field(default=256 * 2**20, ge=0, le=2**63 - 1)
    rollback: Literal["auto", "snapshots", "replay"] = "auto"
    grammar_budget: float | None = Field(default=5.0, gt=0.0, le=3600.0, allow_inf_nan=False)
    grammar_step_budget: float | None = Field(default=1.0, gt=0.0, le=3600.0, allow_inf_nan=False)
    grammar_process: bool = True
    """Run each call's grammar steps in a child process (the grammar host), which the
    engine kills when a step outlasts ``3 * grammar_step_budget + 2`` seconds; False
    runs them on the worker thread, where such a step would hold every call."""
    grammar_memory: int = Field(default=4 * 2**30, ge=512 * 2**20, le=2**62)
    """The address-space cap (bytes, at least 512 MiB) of the grammar checker's and the
    grammar host's processes: a grammar that needs more is refused or ends its call."""

    @model_validator(mode="after")
    def _context_fits_int32(self) -> SessionOptions:
        if self.n_ctx * self.n_seq > INT32_MAX:
            raise ValueError(f"n_ctx * n_seq ({self.n_ctx * self.n_seq}) exceeds the int32 range")
        return self

    @model_validator(mode="after")
    def _quantized_v_needs_flash_attn(self) -> SessionOptions:
        if self.type_v not in (None, "f32", "f16", "bf16") and self.flash_attn is False:
            raise ValueError("a quantized V cache (type_v) requires flash attention; drop flash_attn=False")
        return self

    @field_validator("n_draft", mode="before")
    @classmethod
    def _n_draft(cls, v: Any) -> Any:
        if v == "auto" and isinstance(v, str):
            return v
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 32:
            raise ValueError("n_draft must be an int from 0 to 32, or 'auto'")
        return v


class GenerationOptions(_Strict):
    """Options of ``stream``/``stream_events``/``generate``."""

    max_tokens: int = Field(default=256, ge=1, le=INT32_MAX)
    temp: float = Field(default=0.0, ge=0.0, le=MAX_TEMP, allow_inf_nan=False)
    top_k: int = Field(default=0, ge=0, le=INT32_MAX)
    top_p: float = Field(default=1.0, ge=0.0, le=1.0)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=0xFFFFFFFE)
    penalty_last_n: int = Field(default=64, ge=-1, le=INT32_MAX)
    penalty_repeat: float = Field(default=1.0, gt=0.0, le=MAX_PENALTY, allow_inf_nan=False)
    penalty_freq: float = Field(default=0.0, ge=-MAX_PENALTY, le=MAX_PENALTY, allow_inf_nan=False)
    penalty_present: float = Field(default=0.0, ge=-MAX_PENALTY, le=MAX_PENALTY, allow_inf_nan=False)
    grammar: str | None = None
    grammar_triggers: tuple[str, ...] = ()
    """With ``grammar``: a lazy grammar, as llama.cpp's. The output is free until it
    contains one of these words; the grammar holds from that word on (it must match
    text that starts with the word). A word that is one token of the vocabulary
    (e.g. a special ``<tool_call>``) triggers on that token. At most 16 words of 1-256
    characters. ``tool_choice="auto"`` uses it for the tool-call markup."""
    logit_bias: tuple[tuple[int, float], ...] = ()
    """(token id, bias) pairs added to the target's logits before sampling; a mapping
    of token id to bias is accepted. Each bias lies in [-100, 100] (OpenAI's range;
    -100 bans a token in practice), ids must lie in the vocabulary."""
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    """None: none. n: every :class:`TokenEvent` carries its token's log-probability
    under the target and the n most likely alternatives (0-20)."""
    stop: tuple[str, ...] = ()
    emit_stats_every: int = Field(default=0, ge=0, le=INT32_MAX)
    cache_prompt: bool = True
    verify: Literal["match", "rejection"] = "match"
    """How drafts are verified at temperature > 0: ``"match"`` (greedy drafts, kept when
    the target samples the same token) or ``"rejection"`` (drafts sampled from the
    head, kept with probability min(1, p/q); see the README). Temperature 0 is the
    greedy path either way; a grammar or penalties make ``"rejection"`` run as
    ``"match"`` (counted in :attr:`MTPStats.verify_fallbacks`)."""
    timeout: float | None = Field(default=None, ge=MIN_TIMEOUT_S, le=MAX_TIMEOUT_S)
    _grammar_field: str = PrivateAttr(default="grammar")  # the option the grammar came from
    _checkpoint_at: int = PrivateAttr(default=-1)  # see checkpoint_at

    @property
    def grammar_field(self) -> str:
        """The option a refused grammar is reported under (``InvalidOptionError.field``):
        ``"grammar"``, or what :meth:`grammar_from` set (``"response_format"``)."""
        return self._grammar_field

    @property
    def checkpoint_at(self) -> int:
        """A prompt position the prompt cache should keep a checkpoint at (-1: none);
        set by the chat path (:meth:`keep_checkpoint_at`), not an option."""
        return self._checkpoint_at

    def keep_checkpoint_at(self, position: int) -> GenerationOptions:
        """Ask for a prompt-cache checkpoint at ``position`` (where a chat's generation
        prompt starts: the next turn shares the prompt up to there even when its template
        drops this turn's reasoning); returns ``self``."""
        self._checkpoint_at = position
        return self

    def grammar_from(self, field: str) -> GenerationOptions:
        """Record that the grammar came from option ``field`` (e.g. ``response_format``);
        returns ``self``."""
        self._grammar_field = field
        return self

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, v: Any) -> Any:
        if v is None:
            return ()
        if isinstance(v, str):
            v = (v,)
        if isinstance(v, list):
            v = tuple(v)
        if not isinstance(v, tuple):
            raise ValueError(f"stop must be a str or a list of str, not {type(v).__name__}")
        for s in v:
            if not isinstance(s, str) or s == "":
                raise ValueError("stop strings must be non-empty str")
            check_text(s, "stop")
        return v

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _logit_bias(cls, v: Any) -> Any:
        return logit_bias_pairs(v)

    @field_validator("grammar_triggers", mode="before")
    @classmethod
    def _grammar_triggers(cls, v: Any) -> Any:
        if v is None:
            return ()
        if isinstance(v, str) or not isinstance(v, list | tuple):
            raise ValueError("grammar_triggers must be a list of str")
        if len(v) > MAX_GRAMMAR_TRIGGERS:
            raise ValueError(f"grammar_triggers takes at most {MAX_GRAMMAR_TRIGGERS} words")
        for word in v:
            if not isinstance(word, str) or not 1 <= len(word) <= MAX_TRIGGER_CHARS:
                raise ValueError(f"grammar_triggers must be words of 1-{MAX_TRIGGER_CHARS} characters")
            check_text(word, "grammar_triggers")
        return tuple(v)

    @model_validator(mode="after")
    def _triggers_need_a_grammar(self) -> GenerationOptions:
        if self.grammar_triggers and self.grammar is None:
            raise ValueError("grammar_triggers needs a grammar")
        return self

    @field_validator("grammar")
    @classmethod
    def _grammar(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("grammar is empty")
        if v is not None:
            check_text(v, "grammar")
            problem = grammar_problem(v)
            if problem is not None:
                raise ValueError(problem)
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("timeout must be finite")
        return v


def logit_bias_pairs(v: Any) -> tuple[tuple[int, float], ...]:
    """``logit_bias`` as (token id, bias) pairs: from None, a mapping (keys ints, or
    decimal strings as JSON carries them) or pairs; ``ValueError`` naming the entry
    that is not an id with a finite bias in range. Token ids are checked against the
    vocabulary when the call is submitted."""
    if v is None:
        return ()
    items = v.items() if isinstance(v, Mapping) else v
    if not isinstance(items, (list, tuple)) and not isinstance(v, Mapping):
        raise ValueError(f"logit_bias must map token ids to biases, not {type(v).__name__}")
    out: dict[int, float] = {}
    for item in items:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise ValueError(f"logit_bias entries must be (token id, bias) pairs (got {_short(item)})")
        key, bias = item
        if isinstance(key, str) and key.strip().lstrip("-").isdigit():
            key = int(key)
        if isinstance(key, bool) or not isinstance(key, int) or key < 0 or key > INT32_MAX:
            raise ValueError(f"logit_bias keys must be token ids (got {_short(key)})")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias):
            raise ValueError(f"logit_bias for token {key} must be a finite number (got {_short(bias)})")
        if abs(bias) > MAX_LOGIT_BIAS:
            raise ValueError(f"logit_bias for token {key} must lie in [-100, 100] (got {bias})")
        out[key] = float(bias)
    return tuple(out.items())


def check_text(text: str, field: str) -> None:
    """Raise ``ValueError`` unless ``text`` encodes as UTF-8 (a lone surrogate does not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{field} is not valid text: {exc.reason} at index {exc.start} ({text[exc.start : exc.end]!r})"
        ) from None


M = TypeVar("M", bound=BaseModel)


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 30]}... ({len(text)} characters)"


_CROSS_CHECKED = ("type_v", "grammar_triggers")  # options refused by a model validator


def validate(model: type[M], values: dict[str, Any]) -> M:
    """Build ``model`` from keyword arguments, raising :class:`InvalidOptionError`
    whose ``field`` is the option the user passed (never pydantic's internal path)."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = err["loc"]
        if not loc:  # a check across options names the one it refuses
            loc = next(((name,) for name in _CROSS_CHECKED if name in err["msg"]), ())
        field = str(loc[0]) if loc else None
        reason = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown option '{field}'"
        elif field is not None and field in values:
            msg = f"invalid option '{field}': {reason} (got {_short(values[field])})"
        else:
            msg = f"invalid options: {reason}"
        raise InvalidOptionError(msg, field=field) from None
