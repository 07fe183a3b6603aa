"""``stream_options.include_usage`` the way OpenAI streams it.

mtpstream's own chunk streams put ``usage`` (and the ``mtp`` extension) on the
chunk with the ``finish_reason``. :class:`UsageChunks` reshapes that for a request
that follows OpenAI: the finish chunk loses ``usage`` (it keeps ``mtp``), and with
``include_usage`` one more chunk follows with ``choices: []`` and the ``usage``.
"""

from __future__ import annotations

from typing import Any, Protocol

from .completions import ChatCompletionChunk, Completion

__all__ = ["Chunk", "UsageChunks", "openai_chunk"]

Chunk = ChatCompletionChunk | Completion


class _Chunks(Protocol):
    async def __anext__(self) -> Chunk: ...

    async def aclose(self) -> None: ...


class UsageChunks:
    """``chunks`` with the usage moved as described in the module docstring."""

    def __init__(self, chunks: _Chunks, include_usage: bool) -> None:
        self._chunks = chunks
        self._include = include_usage
        self._usage: Chunk | None = None  # the usage chunk, once the finish chunk went out
        self._ended = False

    def __aiter__(self) -> UsageChunks:
        return self

    async def __anext__(self) -> Chunk:
        if self._usage is not None:
            usage, self._usage = self._usage, None
            return usage
        if self._ended:
            raise StopAsyncIteration
        chunk = await self._chunks.__anext__()
        if chunk.usage is None:
            return chunk
        self._ended = True
        if self._include:
            self._usage = chunk.model_copy(update={"choices": [], "mtp": None})
        return chunk.model_copy(update={"usage": None})

    async def aclose(self) -> None:
        """Close the underlying stream (idempotent)."""
        self._ended = True
        self._usage = None
        await self._chunks.aclose()

    async def __aenter__(self) -> UsageChunks:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def openai_chunk(dumped: dict[str, Any]) -> dict[str, Any]:
    """A chunk dumped without its None fields, with ``finish_reason`` and ``logprobs``
    back on every choice as ``null`` where unset (OpenAI sends both on every chunk)."""
    for choice in dumped.get("choices", ()):
        choice.setdefault("finish_reason", None)
        choice.setdefault("logprobs", None)
    return dumped
