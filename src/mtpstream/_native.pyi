# Type stubs of the nanobind extension (native/bindings.cpp). Private API.
import enum
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

LLAMA_DEFAULT_SEED: int
# native/stats.hpp's field list: (name, kind, metric, help); kind is "counter",
# "gauge" or "time"
STATS_FIELDS: tuple[tuple[str, str, str, str], ...]

class NativeError(RuntimeError):
    """``args == (code: ErrorCode, message: str, field: str)``."""

class ErrorCode(enum.Enum):
    ok = 0
    invalid_argument = 1
    model_load = 2
    no_mtp_head = 3
    context = 4
    context_overflow = 5
    generation = 6
    closed = 7
    busy = 8
    worker_lost = 9

def begin_exit(timeout_s: float) -> bool: ...
def cpu_offers_amx_buffer() -> bool: ...
def rpc_available() -> bool: ...
def rpc_serve(endpoint: str, cache_dir: str, n_threads: int, mem_bytes: int) -> str: ...

RPC_PROTO_MAJOR: int

class LogBridge:
    def __init__(self) -> None: ...
    def install(self) -> None: ...
    def set_min_level(self, level: int) -> None: ...
    def drain(self) -> list[tuple[int, str]]: ...

class Model:
    @property
    def address(self) -> int: ...
    @staticmethod
    def load(
        path: str,
        n_gpu_layers: int | None,
        load_mtp: bool,
        use_mmap: bool,
        repack: bool | None,
        n_cpu_moe: int,
        progress: Callable[[float], object] | None,
        rpc: list[str],
        tensor_split: list[float],
        rpc_timeout: float,
        host_tail_from: int,
        n_layer_all: int,
    ) -> Model: ...
    path: str
    load_mtp: bool
    repack: bool
    host_tail: bool
    rpc_loss: str
    rpc_relays: list[str]
    n_vocab: int
    n_embd: int
    n_layer: int
    n_layer_nextn: int
    n_ctx_train: int
    size_bytes: int
    n_params: int
    description: str
    chat_template: str
    bos: int
    eos: int
    def metadata(self) -> list[tuple[str, str]]: ...
    def is_eog(self, token: int) -> bool: ...
    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]: ...
    def detokenize(self, ids: Sequence[int]) -> bytes: ...
    def token_text(self, token: int) -> str: ...
    def token_to_piece(self, token: int, special: bool = False) -> bytes: ...

class Runtime:
    def __init__(self) -> None: ...
    def shutdown(self) -> None: ...

class EventKind(enum.Enum):
    token = 0
    stats = 1
    done = 2
    eog = 3
    error = 4
    cancelled = 5

class Rollback(enum.Enum):
    snapshots = 0
    replay = 1
    automatic = 2

class Verify(enum.Enum):
    match = 0
    rejection = 1

class Usage:
    prompt_tokens: int
    completion_tokens: int
    drafts_generated: int
    drafts_accepted: int
    cached_tokens: int

class TokenProb:
    token: int
    logprob: float
    piece: bytes

class Event:
    kind: EventKind
    token: int
    text: bytes
    finish_reason: str
    stop: bytes
    usage: Usage
    error: str
    error_code: ErrorCode
    logprobs: list[TokenProb]

class StatsSnapshot:  # one attribute per STATS_FIELDS entry, in its order
    tokens_emitted: int
    prompt_tokens: int
    drafts_generated: int
    drafts_accepted: int
    iters: int
    prompt_tokens_cached: int
    checkpoints: int
    checkpoint_bytes: int
    rollback_fallbacks: int
    replayed_tokens: int
    context_switches: int
    rejection_iters: int
    rejection_drafts: int
    rejection_accepted: int
    verify_fallbacks: int
    t_draft_us: int
    t_verify_us: int
    t_sample_us: int
    t_ckpt_us: int
    t_prefill_us: int
    t_total_us: int
    n_draft: int

class SequenceCounts:
    active: int
    queued: int

class SlotView:
    id: int
    busy: bool
    n_prompt: int
    n_cached: int
    n_decoded: int
    n_past: int
    cache_tokens: int
    cache_extendable: bool
    cache_checkpoints: int

class ContextOptions:
    n_ctx: int
    n_seq: int
    n_batch: int
    n_ubatch: int
    n_threads: int
    n_threads_batch: int
    flash_attn: int
    type_k: int
    type_v: int
    offload_kqv: int
    prompt_cache: bool
    checkpoint_bytes: int
    rollback: Rollback
    grammar_host: list[str]
    def __init__(self) -> None: ...

class SamplingOptions:
    temp: float
    top_k: int
    top_p: float
    min_p: float
    seed: int
    penalty_last_n: int
    penalty_repeat: float
    penalty_freq: float
    penalty_present: float
    logit_bias: list[tuple[int, float]]
    grammar: str
    grammar_triggers: list[str]
    grammar_step_budget_us: int
    verify: Verify
    def __init__(self) -> None: ...

class GenerationOptions:
    prompt: list[int]
    max_tokens: int
    sampling: SamplingOptions
    stop: list[str]
    emit_stats_every: int
    cache_prompt: bool
    n_logprobs: int
    checkpoint_hint: int
    def __init__(self) -> None: ...

class Job:
    finished: bool
    def drain(self) -> list[Event]: ...
    def cancel(self) -> None: ...

class Fault(enum.Enum):
    none = 0
    masked_draft_rows = 1
    skip_draft_catch_up = 2

class Engine:
    @staticmethod
    def create(
        target: Model, draft: Model | None, n_draft: int, auto_draft: bool, options: ContextOptions
    ) -> Engine: ...
    n_draft: int
    auto_draft: bool
    rollback: str
    verify_cost_ratio: float
    n_ctx: int
    n_seq: int
    n_batch: int
    n_ubatch: int
    state_bytes: int
    closed: bool
    fault: Fault
    def stats(self) -> StatsSnapshot: ...
    def sequences(self, runtime: Runtime) -> SequenceCounts: ...
    def slots(self) -> list[SlotView]: ...
    def submit(
        self,
        runtime: Runtime,
        options: GenerationOptions,
        wake_fd: int,
        wait: bool,
        capacity: int,
    ) -> Job: ...
    def close(self, runtime: Runtime) -> None: ...

# --- the low-level draft session (native/bindings_draft.cpp)
class Batch:
    def __init__(self, capacity: int) -> None: ...
    def add(self, token: int, pos: int, seq_id: int, logits: bool) -> int: ...
    def clear(self) -> None: ...
    size: int
    capacity: int
    def entry(self, i: int) -> tuple[int, int, int, bool]: ...

class ContextKind(enum.Enum):
    target = 0
    mtp = 1

class UserContextOptions:
    def __init__(self) -> None: ...
    kind: ContextKind
    n_ctx: int
    n_seq: int
    n_batch: int
    n_ubatch: int
    n_rs_seq: int
    n_threads: int
    n_threads_batch: int
    flash_attn: int
    type_k: int
    type_v: int

class Context:
    @staticmethod
    def create(model: Model, options: UserContextOptions) -> Context: ...
    @staticmethod
    def adopt(model: Model, address: int, kind: ContextKind) -> Context: ...
    def decode(self, batch: Batch) -> None: ...
    def logits(self, i: int) -> npt.NDArray[np.float32]: ...
    def hidden(self, i: int) -> npt.NDArray[np.float32]: ...
    def seq_rm(self, seq_id: int, p0: int, p1: int) -> None: ...
    def seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None: ...
    def seq_pos_max(self, seq_id: int) -> int: ...
    def close(self) -> None: ...
    closed: bool
    kind: ContextKind
    n_ctx: int
    n_seq: int
    n_batch: int
    n_vocab: int
    n_embd: int

class DraftSession:
    @staticmethod
    def create(target: Context, draft: Context, n_seq: int, n_draft_max: int) -> DraftSession: ...
    def begin(self, seq_id: int, prompt: list[int]) -> None: ...
    def process(self, batch: Batch) -> None: ...
    def draft(self, seq_id: int, n_past: int, id_last: int, n_draft: int) -> list[int]: ...
    def accept(self, seq_id: int, n_accepted: int) -> None: ...
    def close(self) -> None: ...
    closed: bool
    n_seq: int
    n_draft_max: int
