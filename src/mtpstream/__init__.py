"""mtpstream: Multi-Token-Prediction speculative decoding for GGUF models.

model = mtpstream.load_model("model-with-mtp.gguf")
with mtpstream.init(model, n_draft=3) as mtp:
    async for piece in mtp.stream("Write a haiku about the sea:", max_tokens=64):
        print(piece, end="")
"""

from __future__ import annotations

from ._loader import _native  # noqa: F401  (imports llama_cpp first: one libllama per process)
from .completions import (
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    CompletionChunk,
    CompletionUsage,
    MTPUsage,
)
from .context import Batch, Context
from .draft_session import DraftSession
from .errors import (
    ContextOverflowError,
    GenerationError,
    GrammarCostError,
    InvalidOptionError,
    ModelLoadError,
    MTPError,
    NoMTPHeadError,
    SessionBusyError,
    SessionClosedError,
    WorkerLostError,
)
from .events import DoneEvent, EogEvent, Event, StatsEvent, TokenEvent, TokenLogprob
from .model import Model, cpu_offers_amx_buffer, load_model
from .session import MTP, init
from .stats import MTPStats, SequenceInfo, TimingUs, Usage

__version__ = "0.1.0"

__all__ = [
    "MTP",
    "Batch",
    "ChatCompletion",
    "ChatCompletionChunk",
    "Completion",
    "CompletionChunk",
    "CompletionUsage",
    "Context",
    "ContextOverflowError",
    "DoneEvent",
    "DraftSession",
    "EogEvent",
    "Event",
    "GenerationError",
    "GrammarCostError",
    "InvalidOptionError",
    "MTPError",
    "MTPStats",
    "MTPUsage",
    "Model",
    "ModelLoadError",
    "NoMTPHeadError",
    "SequenceInfo",
    "SessionBusyError",
    "SessionClosedError",
    "StatsEvent",
    "TimingUs",
    "TokenEvent",
    "TokenLogprob",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
    "WorkerLostError",
    "__version__",
    "cpu_offers_amx_buffer",
    "init",
    "load_model",
]
