"""OpenAI-shaped results: :class:`ChatCompletion`, :class:`ChatCompletionChunk`,
:class:`Completion` and :class:`CompletionChunk` (pydantic models whose JSON is what
the OpenAI API returns, plus an ``mtp`` extension with the call's draft counts)."""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict

from .stats import Usage

__all__ = [
    "ChatCompletion",
    "ChatCompletionChoice",
    "ChatCompletionChunk",
    "ChatCompletionChunkChoice",
    "ChatCompletionDelta",
    "ChatCompletionMessage",
    "ChatCompletionTokenLogprob",
    "ChoiceLogprobs",
    "Completion",
    "CompletionChoice",
    "CompletionChunk",
    "CompletionLogprobs",
    "CompletionUsage",
    "FinishReason",
    "FunctionCall",
    "FunctionCallDelta",
    "MTPUsage",
    "PromptTokensDetails",
    "ToolCall",
    "ToolCallDelta",
    "TopLogprob",
]

FinishReason = Literal["stop", "length", "tool_calls"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class PromptTokensDetails(_Frozen):
    cached_tokens: int = 0
    """Prompt tokens reused from the session's cache (0: the prompt was processed in full)."""


class CompletionUsage(_Frozen):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = PromptTokensDetails()


class MTPUsage(_Frozen):
    """The call's speculative decoding (extension field ``mtp``)."""

    drafts_generated: int
    drafts_accepted: int
    acceptance_rate: float


class TopLogprob(_Frozen):
    """One of the most likely tokens at a position (OpenAI's ``top_logprobs`` entry)."""

    token: str
    logprob: float
    bytes: list[int] | None


class ChatCompletionTokenLogprob(_Frozen):
    """An emitted token's log-probability under the target and its alternatives."""

    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(_Frozen):
    """A chat choice's (or chunk's) ``logprobs``: one entry per token of its content."""

    content: list[ChatCompletionTokenLogprob] | None
    refusal: list[ChatCompletionTokenLogprob] | None = None


class CompletionLogprobs(_Frozen):
    """A text completion's legacy ``logprobs``: per token its text, log-probability,
    the ``logprobs`` most likely alternatives and its character offset in the text."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class FunctionCall(_Frozen):
    name: str
    arguments: str
    """The arguments as a JSON object's text."""


class ToolCall(_Frozen):
    """A call of one of the request's ``tools`` (OpenAI's ``tool_calls`` item)."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatCompletionMessage(_Frozen):
    role: Literal["assistant"] = "assistant"
    content: str | None
    """The reply's text; None when it is only tool calls."""
    reasoning_content: str | None = None
    """The text between the template's think markers (``reasoning_format="parsed"``)."""
    tool_calls: list[ToolCall] | None = None


class ChatCompletionChoice(_Frozen):
    index: int = 0
    message: ChatCompletionMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None = None
    stop_reason: str | None = None
    """The stop string that ended the reply (vLLM's field); None (left out of the
    JSON) when something else ended it."""


class ChatCompletion(_Frozen):
    """The result of :meth:`mtpstream.MTP.chat` (OpenAI's ``chat.completion``)."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: CompletionUsage
    mtp: MTPUsage


class FunctionCallDelta(_Frozen):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(_Frozen):
    """A piece of a streamed tool call: the first of a call carries ``id``, ``type`` and
    ``function.name``; the next ones pieces of ``function.arguments``."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta


class ChatCompletionDelta(_Frozen):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatCompletionChunkChoice(_Frozen):
    index: int = 0
    delta: ChatCompletionDelta
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None
    stop_reason: str | None = None
    """On the finish chunk: the stop string that ended the reply, as in
    :attr:`ChatCompletionChoice.stop_reason`."""


class ChatCompletionChunk(_Frozen):
    """One piece of :meth:`mtpstream.MTP.stream_chat` (OpenAI's ``chat.completion.chunk``).

    The first chunk's delta carries ``role="assistant"``; exactly one chunk, the last,
    carries ``finish_reason`` (and ``usage`` and ``mtp``)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]
    usage: CompletionUsage | None = None
    mtp: MTPUsage | None = None


class CompletionChoice(_Frozen):
    index: int = 0
    text: str
    finish_reason: FinishReason | None = None
    logprobs: CompletionLogprobs | None = None


class Completion(_Frozen):
    """A text completion (OpenAI's ``text_completion``), whole or (``usage`` None) a chunk."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None
    mtp: MTPUsage | None = None


CompletionChunk = Completion
"""A streamed piece of a text completion: the same shape (OpenAI uses one type for both)."""


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage_of(u: Usage) -> tuple[CompletionUsage, MTPUsage]:
    """The OpenAI usage block and the ``mtp`` extension of one call."""
    return (
        CompletionUsage(
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
            total_tokens=u.prompt_tokens + u.completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=u.cached_tokens),
        ),
        MTPUsage(
            drafts_generated=u.drafts_generated,
            drafts_accepted=u.drafts_accepted,
            acceptance_rate=round(u.acceptance_rate, 6),
        ),
    )
