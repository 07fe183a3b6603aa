"""OpenAI-style chunk streams over an event stream (chat and completions), and the
assembly of a whole chat completion from its chunks: the shapes ``_openai`` hands to
``MTP.stream_chat``/``chat`` and to the server. With an output splitter a chat
stream's text becomes ``content``, ``reasoning_content`` and ``tool_calls`` deltas;
with ``logprobs`` each chunk carries its tokens' log-probabilities."""

from __future__ import annotations

import json
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import anyio

from ._chat_output import ChatOutput, Part
from ._logprob_chunks import (
    LogprobTracker,
    chat_logprobs,
    completion_logprobs,
    merge_chat,
    merge_completion,
)
from ._stream import EventStream, StreamState
from ._stream_usage import UsageChunks
from .completions import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionDelta,
    ChatCompletionMessage,
    ChoiceLogprobs,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    FinishReason,
    FunctionCall,
    FunctionCallDelta,
    ToolCall,
    ToolCallDelta,
    new_id,
    now,
    usage_of,
)
from .events import DoneEvent, EogEvent, TokenEvent
from .stats import Usage
from .tool_calls import ParsedCall

# ------------------------------------------------------------------ chunk streams
_C = TypeVar("_C", ChatCompletionChunk, Completion)
Tokens = list[tuple[int, TokenEvent]] | None  # a chunk's tokens, with logprobs requested


class _ChunkStream(Generic[_C]):
    """OpenAI-style chunks of an event stream: a piece per non-empty token text and a
    last chunk with the finish reason and usage (subclasses shape the chunks). With
    the ``logprobs`` option each chunk carries its tokens' (``_logprob_chunks``)."""

    _prefix = "cmpl"

    def __init__(self, events: EventStream, model: str, text_offset: int = 0) -> None:
        self._events = events
        self._model = model
        self._id = new_id(self._prefix)
        self._created = now()
        self._done = False
        self._stop: str | None = None  # the stop string that ended the call
        self._logprobs = LogprobTracker(text_offset) if events.options.logprobs is not None else None

    def __aiter__(self) -> _ChunkStream[_C]:
        return self

    def _piece(self, text: str, tokens: Tokens) -> _C:
        raise NotImplementedError

    def _last(self, text: str, reason: FinishReason, usage: Usage, tokens: Tokens) -> _C:
        raise NotImplementedError

    async def __anext__(self) -> _C:
        if self._done:
            raise StopAsyncIteration
        lp = self._logprobs
        while True:
            ev = await self._events.__anext__()
            if isinstance(ev, TokenEvent):
                if lp is not None:
                    lp.token(ev)
                if ev.text:
                    return self._piece(ev.text, lp.release(ev.text) if lp is not None else None)
                continue
            if isinstance(ev, (DoneEvent, EogEvent)):
                self._done = True
                reason: FinishReason = (
                    "length" if isinstance(ev, DoneEvent) and ev.finish_reason == "length" else "stop"
                )
                stopped = isinstance(ev, DoneEvent) and ev.finish_reason == "stop"
                self._stop = ev.stop if isinstance(ev, DoneEvent) else None
                tokens = lp.finish(ev.text, stopped) if lp is not None else None
                return self._last(ev.text, reason, ev.usage, tokens)

    async def aclose(self) -> None:
        """Stop the generation and wait until the worker has acknowledged it (idempotent)."""
        self._done = True
        await self._events.aclose()

    async def __aenter__(self) -> _ChunkStream[_C]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class ChatStream(_ChunkStream[ChatCompletionChunk]):
    """The chunks of one chat call; the first carries ``role="assistant"``. With an
    ``output`` (:class:`ChatOutput`) the text is split into ``content``,
    ``reasoning_content`` and ``tool_calls`` deltas, the calls streamed the OpenAI way
    (index, id and name first, then the arguments)."""

    _prefix = "chatcmpl"

    def __init__(self, events: EventStream, model: str, output: ChatOutput | None = None) -> None:
        super().__init__(events, model)
        self._started = False
        self._output = output
        self._pending: deque[ChatCompletionChunk] = deque()
        self._n_calls = 0
        # with logprobs and an output splitter: the log-probabilities of text the
        # splitter holds back, given to the next chunk it lets out
        self._held: list[ChoiceLogprobs] = []

    def _chunk(
        self,
        delta: ChatCompletionDelta,
        reason: FinishReason | None = None,
        usage: Usage | None = None,
        tokens: Tokens = None,
        logprobs: ChoiceLogprobs | None = None,
    ) -> ChatCompletionChunk:
        cu, mu = usage_of(usage) if usage is not None else (None, None)
        if tokens is not None:
            logprobs = chat_logprobs(tokens)
        stop = self._stop if reason is not None else None
        choice = ChatCompletionChunkChoice(
            delta=delta, finish_reason=reason, logprobs=logprobs, stop_reason=stop
        )
        return ChatCompletionChunk(
            id=self._id,
            created=self._created,
            model=self._model,
            choices=[choice],
            usage=cu,
            mtp=mu,
        )

    def _parts(self, parts: list[Part]) -> None:
        for part in parts:
            held, self._held = (merge_chat(self._held) if self._held else None), []
            if isinstance(part, ParsedCall):
                self._pending.extend(self._call_chunks(part, held))
            else:
                kind, text = part
                field = "reasoning_content" if kind == "reasoning" else "content"
                delta = ChatCompletionDelta.model_validate({field: text})
                self._pending.append(self._chunk(delta, logprobs=held))

    def _call_chunks(self, call: ParsedCall, held: ChoiceLogprobs | None) -> list[ChatCompletionChunk]:
        index = self._n_calls
        self._n_calls += 1
        name = FunctionCallDelta(name=call.name, arguments="")
        head = ToolCallDelta(index=index, id=call_id(), type="function", function=name)
        args = ToolCallDelta(index=index, function=FunctionCallDelta(arguments=arguments_json(call)))
        return [
            self._chunk(ChatCompletionDelta(tool_calls=[head]), logprobs=held),
            self._chunk(ChatCompletionDelta(tool_calls=[args])),
        ]

    def _piece(self, text: str, tokens: Tokens) -> ChatCompletionChunk:
        return self._chunk(ChatCompletionDelta(content=text), tokens=tokens)

    def _last(self, text: str, reason: FinishReason, usage: Usage, tokens: Tokens) -> ChatCompletionChunk:
        if self._output is None:
            return self._chunk(ChatCompletionDelta(content=text or None), reason, usage, tokens)
        if tokens:
            self._held.append(chat_logprobs(tokens))
        self._parts(self._output.feed(text) + self._output.finish())
        if self._n_calls and reason == "stop":
            reason = "tool_calls"
        held = merge_chat(self._held) if self._held else None  # tokens of held-back text that became nothing
        last = self._chunk(ChatCompletionDelta(), reason, usage, logprobs=held)
        if not self._pending:
            return last
        self._pending.append(last)
        return self._pending.popleft()

    async def __anext__(self) -> ChatCompletionChunk:
        if self._pending:
            return self._pending.popleft()
        if not self._started and not self._done:
            # submit first, so that a refused call (busy, context overflow) raises here
            if self._events.state is StreamState.NEW:
                await self._events.checked_start()
            self._started = True
            return self._chunk(ChatCompletionDelta(role="assistant", content=""))
        if self._output is None or self._done:
            return await super().__anext__()
        while not self._pending:
            chunk = await super().__anext__()
            if self._done:  # the last chunk, or the first of the parts flushed at the end
                return chunk
            if chunk.choices[0].logprobs is not None:
                self._held.append(chunk.choices[0].logprobs)
            self._parts(self._output.feed(chunk.choices[0].delta.content or ""))
        return self._pending.popleft()


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def arguments_json(call: ParsedCall) -> str:
    """A call's arguments as OpenAI sends them: a JSON object's text."""
    return json.dumps(call.arguments, ensure_ascii=False)


class PreparingChatStream:
    """The async iterator behind :meth:`MTP.stream_chat`: renders and tokenizes the
    messages in a worker thread at the first ``__anext__`` (``prepare``), then reads
    the :class:`ChatStream` of that prompt."""

    def __init__(self, prepare: Callable[[], ChatStream], include_usage: bool | None = None) -> None:
        self._prepare: Callable[[], ChatStream] | None = prepare
        self._inner: ChatStream | UsageChunks | None = None
        self._include_usage = include_usage  # None: usage on the finish chunk
        self._closed = False

    def __aiter__(self) -> PreparingChatStream:
        return self

    async def __anext__(self) -> ChatCompletionChunk:
        if self._inner is None:
            prepare = self._prepare
            if self._closed or prepare is None:
                raise StopAsyncIteration
            self._prepare = None  # prepared once, even if that fails
            inner = await anyio.to_thread.run_sync(prepare)
            if self._closed:
                await inner.aclose()
                raise StopAsyncIteration
            self._inner = inner if self._include_usage is None else UsageChunks(inner, self._include_usage)
        chunk = await self._inner.__anext__()
        assert isinstance(chunk, ChatCompletionChunk)
        return chunk

    async def aclose(self) -> None:
        """Stop the generation and wait until the worker has acknowledged it (idempotent)."""
        self._closed = True
        if self._inner is not None:
            await self._inner.aclose()

    async def __aenter__(self) -> PreparingChatStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class CompletionStream(_ChunkStream[Completion]):
    """Text-completion chunks of one call (the server's ``/v1/completions``); with
    ``echo``, that text (the prompt) opens the first chunk."""

    def __init__(self, events: EventStream, model: str, echo: str = "") -> None:
        super().__init__(events, model, text_offset=len(echo))
        self._echo = echo

    def _chunk(
        self, text: str, reason: FinishReason | None = None, usage: Usage | None = None, tokens: Tokens = None
    ) -> Completion:
        cu, mu = usage_of(usage) if usage is not None else (None, None)
        text, self._echo = self._echo + text, ""
        logprobs = completion_logprobs(tokens) if tokens is not None else None
        return Completion(
            id=self._id,
            created=self._created,
            model=self._model,
            choices=[CompletionChoice(text=text, finish_reason=reason, logprobs=logprobs)],
            usage=cu,
            mtp=mu,
        )

    def _piece(self, text: str, tokens: Tokens) -> Completion:
        return self._chunk(text, tokens=tokens)

    def _last(self, text: str, reason: FinishReason, usage: Usage, tokens: Tokens) -> Completion:
        return self._chunk(text, reason, usage, tokens)

    async def collect(self) -> Completion:
        """The whole completion (one choice with all the text)."""
        parts: list[str] = []
        logprobs: list[CompletionLogprobs] = []
        last: Completion | None = None
        try:
            async for chunk in self:
                parts.append(chunk.choices[0].text)
                if chunk.choices[0].logprobs is not None:
                    logprobs.append(chunk.choices[0].logprobs)
                last = chunk
        finally:
            await self.aclose()
        assert last is not None
        choice = CompletionChoice(
            text="".join(parts),
            finish_reason=last.choices[0].finish_reason,
            logprobs=merge_completion(logprobs) if logprobs else None,
        )
        return last.model_copy(update={"choices": [choice]})


async def collect_chat(chunks: PreparingChatStream) -> ChatCompletion:
    """The whole answer of a chat chunk stream (what :meth:`MTP.chat` returns)."""
    parts: list[str] = []
    logprobs: list[ChoiceLogprobs] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    final: ChatCompletionChunk | None = None
    async with chunks:
        async for chunk in chunks:
            delta = chunk.choices[0].delta
            if delta.content:
                parts.append(delta.content)
            if delta.reasoning_content:
                reasoning.append(delta.reasoning_content)
            for d in delta.tool_calls or ():
                if d.index == len(calls):
                    calls.append({"id": d.id or call_id(), "name": d.function.name or "", "arguments": ""})
                calls[d.index]["arguments"] += d.function.arguments or ""
            if chunk.choices[0].logprobs is not None:
                logprobs.append(chunk.choices[0].logprobs)
            final = chunk
    assert final is not None and final.usage is not None and final.mtp is not None
    reason = final.choices[0].finish_reason
    assert reason is not None
    tool_calls = [
        ToolCall(id=c["id"], function=FunctionCall(name=c["name"], arguments=c["arguments"])) for c in calls
    ]
    message = ChatCompletionMessage(
        content="".join(parts) if parts or not tool_calls else None,
        reasoning_content="".join(reasoning) if reasoning else None,
        tool_calls=tool_calls or None,
    )
    merged = merge_chat(logprobs) if logprobs else None
    return ChatCompletion(
        id=final.id,
        created=final.created,
        model=final.model,
        choices=[
            ChatCompletionChoice(
                message=message,
                finish_reason=reason,
                logprobs=merged,
                stop_reason=final.choices[0].stop_reason,
            )
        ],
        usage=final.usage,
        mtp=final.mtp,
    )
