"""Every conversion between Python and the native extension, typed from ``_native.pyi``.

Option structs (:func:`context_options`, :func:`generation_options`), events, usage
and stats snapshots, the batch limits llama.cpp would abort on, and the one mapping
of native errors (:class:`~mtpstream._native.ErrorCode`) to :class:`MTPError`
subclasses, with llama.cpp's own error lines appended and ``.field`` kept.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from . import _logging, _runtime, errors
from ._loader import _native
from .errors import GenerationError, InvalidOptionError, ModelLoadError, MTPError, SessionClosedError
from .events import DoneEvent, EogEvent, Event, StatsEvent, TokenEvent, TokenLogprob
from .options import GGML_TYPES, GenerationOptions, SessionOptions
from .stats import STATS_FIELDS, MTPStats, SequenceInfo, TimingUs, Usage

_T = TypeVar("_T")

_ROLLBACKS = {
    "auto": _native.Rollback.automatic,
    "snapshots": _native.Rollback.snapshots,
    "replay": _native.Rollback.replay,
}

NativeError = _native.NativeError
NativeModel = _native.Model
NativeEngine = _native.Engine
NativeJob = _native.Job
NativeEvent = _native.Event
EventKind = _native.EventKind
ErrorCode = _native.ErrorCode

# the one mapping of native error codes (native/status.hpp) to exception classes
_ERRORS: dict[_native.ErrorCode, type[MTPError]] = {
    ErrorCode.invalid_argument: errors.InvalidOptionError,
    ErrorCode.model_load: errors.ModelLoadError,
    ErrorCode.no_mtp_head: errors.NoMTPHeadError,
    ErrorCode.context: errors.MTPError,
    ErrorCode.context_overflow: errors.ContextOverflowError,
    ErrorCode.generation: errors.GenerationError,
    ErrorCode.closed: errors.SessionClosedError,
    ErrorCode.busy: errors.SessionBusyError,
    ErrorCode.worker_lost: errors.WorkerLostError,
}


# ------------------------------------------------------------------ errors
def error(exc: BaseException, *, llama_lines: bool = True, suffix: str = "") -> MTPError:
    """The typed error of a ``NativeError(code, message, field)``: the class by its
    :class:`ErrorCode`, the message with ``suffix`` and (``llama_lines``) llama.cpp's
    own error lines logged meanwhile (e.g. a grammar parse error), ``.field`` kept."""
    args: tuple[object, ...] = tuple(getattr(exc, "args", ()))
    if len(args) == 3 and isinstance(args[0], ErrorCode):
        cls = _ERRORS.get(args[0], MTPError)
        message, field = str(args[1]) + suffix, str(args[2]) or None
    else:
        cls, message, field = MTPError, str(exc) + suffix, None
    if llama_lines:
        message = _logging.with_errors(message, _logging.flush())
    if cls is InvalidOptionError:
        return InvalidOptionError(message, field=field)
    return cls(message)


# ------------------------------------------------------------------ models and engines
def load_model(
    path: str,
    n_gpu_layers: int | None,
    load_mtp: bool,
    use_mmap: bool,
    repack: bool | None,
    n_cpu_moe: int,
    progress: Callable[[float], object] | None,
    arch: str,
    rpc: Sequence[str] = (),
    tensor_split: Sequence[float] = (),
    rpc_timeout: float = 300.0,
    host_tail: tuple[int, int] = (-1, 0),
) -> _native.Model:
    """A native model; every failure a :class:`ModelLoadError` naming the architecture.
    ``n_cpu_moe``: the blocks whose MoE experts stay in CPU memory (-1: all); ``rpc``:
    the RPC workers taking offloaded layers (checked by the caller); ``host_tail``: the
    first layer kept on this host's CPU (-1: none) and the model's block count."""
    _logging.sync_level()
    try:
        native = _native.Model.load(
            path,
            n_gpu_layers,
            load_mtp,
            use_mmap,
            repack,
            n_cpu_moe,
            progress,
            list(rpc),
            list(tensor_split),
            rpc_timeout,
            *host_tail,
        )
    except _native.NativeError as exc:
        message = str(error(exc, suffix=f" [architecture '{arch}']"))
        if "unable to allocate" in message:  # llama.cpp's log says which device refused
            message = message.replace(_LOAD_CAUSES, _ALLOC_CAUSE, 1)
        raise ModelLoadError(message) from None
    _logging.flush()
    return native


# native/model.cpp's guess at why llama.cpp refused a file, and what its log may show instead
_LOAD_CAUSES = (
    "(unsupported architecture, missing tensors or a corrupt file; "
    "enable the 'mtpstream.llama' logger for details)"
)
_ALLOC_CAUSE = (
    "(a device could not allocate its share of the weights: not enough free memory there, "
    "or an `mtpstream rpc-server --mem` worker's cap)"
)


def create_engine(
    model: _native.Model,
    draft: _native.Model | None,
    n_draft: int,
    auto: bool,
    opts: SessionOptions,
    grammar_host: list[str],
) -> _native.Engine:
    """A native engine for a validated session (errors mapped, ``.field`` kept);
    ``grammar_host``: the grammar host's command line (empty: none)."""
    _logging.sync_level()
    c = context_options(opts)
    c.grammar_host = grammar_host
    try:
        engine = _native.Engine.create(model, draft, n_draft, auto, c)
    except _native.NativeError as exc:
        raise error(exc) from None
    _logging.flush()
    return engine


def submit(
    engine: _native.Engine,
    prompt: list[int],
    opts: GenerationOptions,
    wake_fd: int,
    wait: bool,
    capacity: int,
    grammar_step_budget: float | None = None,
) -> _native.Job:
    """Submit one call; native code owns ``wake_fd`` once this returns or raises
    :class:`MTPError` (a conversion error before that leaves it to the caller)."""
    try:
        native = generation_options(prompt, opts, stats=True, step_budget=grammar_step_budget)
        return engine.submit(_runtime.get(), native, wake_fd, wait, capacity)
    except _native.NativeError as exc:
        raise error(exc) from None


def cpu_offers_amx_buffer() -> bool:
    return _native.cpu_offers_amx_buffer()


def rpc_available() -> bool:
    return _native.rpc_available()


def rpc_protocol_major() -> int:
    return _native.RPC_PROTO_MAJOR


def rpc_serve(endpoint: str, cache_dir: str, n_threads: int, mem_bytes: int = 0) -> str:
    return _native.rpc_serve(endpoint, cache_dir, n_threads, mem_bytes)


def close_engine(engine: _native.Engine) -> None:
    """Cancel the engine's calls, wait for the worker to let go, free its contexts."""
    engine.close(_runtime.get())
    _logging.flush()


def set_fault(engine: _native.Engine, fault: str) -> None:
    """Make ``engine`` misbehave on purpose (test only): ``fault`` names a member of
    the native ``Fault`` enum (``"none"`` restores the real engine).

    Raises:
        AttributeError: ``fault`` is not a member of ``Fault``.
    """
    engine.fault = getattr(_native.Fault, fault)


def tokenize(model: _native.Model, text: str, add_special: bool) -> list[int]:
    """Token ids of ``text`` with special tokens parsed."""
    return list(model.tokenize(text, add_special, True))


# ------------------------------------------------------------------ options
def generation_options(
    prompt: list[int], o: GenerationOptions, *, stats: bool, step_budget: float | None = None
) -> _native.GenerationOptions:
    """The native engine's options for one call (bound struct, fields by name)."""
    n = _native.GenerationOptions()
    n.prompt = prompt
    n.max_tokens = o.max_tokens
    n.stop = list(o.stop)
    n.emit_stats_every = o.emit_stats_every if stats else 0
    n.cache_prompt = o.cache_prompt
    n.n_logprobs = -1 if o.logprobs is None else o.logprobs
    n.checkpoint_hint = o.checkpoint_at
    s = _native.SamplingOptions()
    s.temp = o.temp
    s.top_k = o.top_k
    s.top_p = o.top_p
    s.min_p = o.min_p
    s.seed = o.seed if o.seed is not None else int(_native.LLAMA_DEFAULT_SEED)
    s.penalty_last_n = o.penalty_last_n
    s.penalty_repeat = o.penalty_repeat
    s.penalty_freq = o.penalty_freq
    s.penalty_present = o.penalty_present
    s.logit_bias = list(o.logit_bias)
    s.grammar = o.grammar or ""
    s.grammar_triggers = list(o.grammar_triggers)
    # the engine's CPU-time budget per grammar step (0: none)
    s.grammar_step_budget_us = max(1, round(step_budget * 1e6)) if step_budget else 0
    s.verify = _native.Verify.rejection if o.verify == "rejection" else _native.Verify.match
    n.sampling = s
    return n


def context_options(opts: SessionOptions) -> _native.ContextOptions:
    """The native context options of a validated session (0 or -1: llama.cpp's default)."""
    c = _native.ContextOptions()
    c.n_ctx = opts.n_ctx
    c.n_seq = opts.n_seq
    c.n_batch = opts.n_batch or 0
    c.n_ubatch = opts.n_ubatch or 0
    c.n_threads = opts.n_threads or (os.cpu_count() or 1)
    c.n_threads_batch = opts.n_threads_batch or opts.n_threads or (os.cpu_count() or 1)
    c.flash_attn = -1 if opts.flash_attn is None else int(opts.flash_attn)
    c.type_k = -1 if opts.type_k is None else GGML_TYPES[opts.type_k]
    c.type_v = -1 if opts.type_v is None else GGML_TYPES[opts.type_v]
    c.offload_kqv = -1 if opts.offload_kqv is None else int(opts.offload_kqv)
    c.prompt_cache = opts.prompt_cache
    c.checkpoint_bytes = opts.prompt_cache_checkpoint_bytes
    c.rollback = _ROLLBACKS[opts.rollback]
    return c


def default_n_batch(n_ctx: int, n_seq: int, n_draft: int) -> int:
    """``n_batch`` when not given: ``min(n_ctx * n_seq, max(512, n_seq * (n_draft + 1)))``
    (as native ``Engine::create`` computes it)."""
    return min(n_ctx * n_seq, max(512, n_seq * (n_draft + 1)))


def check_batch(opts: SessionOptions, n_draft: int) -> None:
    """The batch limits llama.cpp would abort on, named after the option to change."""
    per_round = opts.n_seq * (n_draft + 1)  # every sequence's draft step in one MTP batch
    n_batch = opts.n_batch or default_n_batch(opts.n_ctx, opts.n_seq, n_draft)
    n_ubatch = opts.n_ubatch or n_batch
    batch_field = "n_batch" if opts.n_batch else "n_ctx"
    ubatch_field = "n_ubatch" if opts.n_ubatch else batch_field
    if n_ubatch > n_batch:
        raise InvalidOptionError(
            f"n_ubatch ({n_ubatch}) must not exceed n_batch ({n_batch})", field=ubatch_field
        )
    if n_batch < n_draft + 1:
        default = (
            ""
            if opts.n_batch
            else " (n_batch defaults to min(n_ctx * n_seq, max(512, n_seq * (n_draft + 1)))"
            f" with n_ctx={opts.n_ctx})"
        )
        raise InvalidOptionError(
            f"n_batch ({n_batch}) must be at least n_draft + 1 ({n_draft + 1}){default}", field=batch_field
        )
    if n_draft > 0 and opts.n_seq > 1 and n_batch < per_round:
        raise InvalidOptionError(
            f"n_batch ({n_batch}) must be at least n_seq * (n_draft + 1) ({per_round}) so that every "
            "sequence's draft step fits one batch",
            field=batch_field,
        )
    if n_draft > 0 and n_ubatch < n_draft + 2:
        raise InvalidOptionError(
            f"n_ubatch ({n_ubatch}) must be at least n_draft + 2 ({n_draft + 2}) for recurrent-state "
            "rollback; raise n_ubatch/n_ctx or lower n_draft",
            field=ubatch_field,
        )


# ------------------------------------------------------------------ results
def usage(u: _native.Usage) -> Usage:
    return Usage(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        drafts_generated=u.drafts_generated,
        drafts_accepted=u.drafts_accepted,
        cached_tokens=u.cached_tokens,
    )


def stats(engine: _native.Engine, calls: int) -> MTPStats:
    """The engine's counters as one consistent :class:`MTPStats` (lock-free), copied
    field by field from the native field list (:data:`STATS_FIELDS`)."""
    s = engine.stats()
    counts = engine.sequences(_runtime.get())
    values: dict[str, Any] = {}  # ints (Any: model_construct takes **kwargs)
    timing: dict[str, Any] = {}
    for f in STATS_FIELDS:
        if f.kind == "time":
            timing[f.timing_key] = int(getattr(s, f.name))
        else:
            values[f.name] = int(getattr(s, f.name))
    t_tot = timing["total"]
    timing["other"] = max(0, t_tot - timing["draft"] - timing["verify"] - timing["sample"] - timing["ckpt"])
    decoded = max(0, values["tokens_emitted"] - calls)
    gen, acc = values["drafts_generated"], values["drafts_accepted"]
    return MTPStats.model_construct(
        **values,
        acceptance_rate=acc / gen if gen else 0.0,
        tokens_per_sec=decoded / (t_tot / 1e6) if t_tot else 0.0,
        timing_us=TimingUs.model_construct(**timing),
        n_seq=engine.n_seq,
        active_sequences=counts.active,
        queued=counts.queued,
        state_bytes=engine.state_bytes,
    )


def sequences(engine: _native.Engine) -> tuple[SequenceInfo, ...]:
    """The engine's sequences as of its last step (a copy taken under its lock)."""
    return tuple(
        SequenceInfo(
            id=v.id,
            busy=v.busy,
            n_prompt=v.n_prompt,
            n_cached=v.n_cached,
            n_decoded=v.n_decoded,
            n_past=v.n_past,
            cache_tokens=v.cache_tokens,
            cache_extendable=v.cache_extendable,
            cache_checkpoints=v.cache_checkpoints,
        )
        for v in engine.slots()
    )


def context_info(engine: _native.Engine, opts: SessionOptions) -> dict[str, Any]:
    """What the session's contexts run with: the options resolved as
    :func:`context_options` and the engine resolve them (``type_k``/``type_v`` None:
    llama.cpp's f16; ``flash_attn`` "on", "off" or "auto")."""
    threads = opts.n_threads or (os.cpu_count() or 1)
    return {
        "n_threads": threads,
        "n_threads_batch": opts.n_threads_batch or threads,
        "n_batch": int(engine.n_batch),
        "n_ubatch": int(engine.n_ubatch),
        "flash_attn": {None: "auto", True: "on", False: "off"}[opts.flash_attn],
        "type_k": opts.type_k or "f16",
        "type_v": opts.type_v or "f16",
    }


def is_terminal(ev: _native.Event) -> bool:
    return ev.kind not in (EventKind.token, EventKind.stats)


def is_cancelled(ev: _native.Event) -> bool:
    return ev.kind == EventKind.cancelled


def event(ev: _native.Event, stats_now: Callable[[], MTPStats]) -> Event:
    """The Python event of a native one; an error or a cancellation raises."""
    kind = ev.kind
    if kind == EventKind.token:
        probs = ev.logprobs
        if not probs:
            return TokenEvent(ev.token, ev.text.decode("utf-8"))
        chosen, *top = (TokenLogprob(p.token, p.piece, p.logprob) for p in probs)
        return TokenEvent(ev.token, ev.text.decode("utf-8"), chosen, tuple(top))
    if kind == EventKind.stats:
        return StatsEvent(stats_now())
    if kind == EventKind.cancelled:
        # only reachable if someone else cancelled this job (e.g. session.close())
        raise SessionClosedError("the generation was cancelled because the session was closed")
    if kind == EventKind.error:
        lost = ev.error_code == ErrorCode.worker_lost
        raise (errors.WorkerLostError if lost else GenerationError)(ev.error or "generation failed")
    if kind == EventKind.eog:
        return EogEvent(stats_now(), usage(ev.usage), ev.token, ev.text.decode("utf-8"))
    stop = ev.stop.decode("utf-8", "replace") if ev.finish_reason == "stop" else None
    return DoneEvent(stats_now(), usage(ev.usage), ev.finish_reason, ev.text.decode("utf-8"), stop)  # type: ignore[arg-type]


def drain(job: _native.Job) -> Sequence[_native.Event]:
    return job.drain()


# ------------------------------------------------------------------ the draft session (Context, DraftSession)
NativeBatch = _native.Batch
NativeContext = _native.Context
NativeDraftSession = _native.DraftSession


def checked(fn: Callable[[], _T]) -> _T:
    """``fn()`` with a native error raised as its :class:`MTPError` subclass."""
    try:
        return fn()
    except _native.NativeError as exc:
        raise error(exc) from None


def new_batch(capacity: int) -> _native.Batch:
    return _native.Batch(capacity)


def create_context(
    model: _native.Model, kind: str, sizes: dict[str, int], opts: SessionOptions
) -> _native.Context:
    """A native user context: ``kind`` "target" or "mtp", ``sizes`` n_ctx, n_seq,
    n_batch, n_ubatch, n_rs_seq (0: the default), the rest as a session's contexts."""
    o = _native.UserContextOptions()
    o.kind = _native.ContextKind.mtp if kind == "mtp" else _native.ContextKind.target
    for name, value in sizes.items():
        setattr(o, name, value)
    c = context_options(opts)
    o.n_threads, o.n_threads_batch = c.n_threads, c.n_threads_batch
    o.flash_attn, o.type_k, o.type_v = c.flash_attn, c.type_k, c.type_v
    _logging.sync_level()
    native = checked(lambda: _native.Context.create(model, o))
    _logging.flush()
    return native


def adopt_context(model: _native.Model, address: int, kind: str) -> _native.Context:
    """A native user context taking over the llama_context at ``address`` (made by
    llama-cpp-python's low-level API on ``model``'s llama_model)."""
    k = _native.ContextKind.mtp if kind == "mtp" else _native.ContextKind.target
    return checked(lambda: _native.Context.adopt(model, address, k))


def create_draft_session(
    target: _native.Context, draft: _native.Context, n_seq: int, n_draft_max: int
) -> _native.DraftSession:
    return checked(lambda: _native.DraftSession.create(target, draft, n_seq, n_draft_max))
