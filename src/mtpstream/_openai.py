"""The OpenAI dialect, shared by :meth:`MTP.chat`, :meth:`MTP.stream_chat` and the
server: the request models, the one mapping of a call's options (OpenAI's names,
``response_format``) onto :class:`GenerationOptions`, and the streams of
OpenAI-shaped chunks over an :class:`EventStream`.

(``_openai``, not ``openai``: the name stays clear of the OpenAI client package,
which tests and users import beside mtpstream.)

OpenAI parameter names map onto :meth:`mtpstream.MTP.generate`'s options:

=====================  =================
OpenAI / llama-cpp     mtpstream
=====================  =================
temperature            temp
top_p                  top_p
max_tokens             max_tokens
max_completion_tokens  max_tokens
stop                   stop
seed                   seed
frequency_penalty      penalty_freq
presence_penalty       penalty_present
repeat_penalty         penalty_repeat
top_k                  top_k
min_p                  min_p
grammar                grammar
response_format        grammar (converted)
n                      only 1
=====================  =================

Chat calls also take ``tools``, ``tool_choice``, ``parallel_tool_calls``
(:mod:`._tool_options`, parsed by :mod:`mtpstream.tool_calls`), ``chat_template_kwargs``,
``reasoning_effort`` and ``reasoning_format`` (:mod:`._reasoning`); :class:`ChatRequest`
keeps them apart from the generation options.

Our own names are accepted too. The default is greedy (``temperature=0``), as
everywhere in mtpstream, not OpenAI's 1.0.
"""

from __future__ import annotations

import json
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import anyio
from pydantic import BaseModel, ConfigDict

from ._chat_output import ChatOutput, Part
from ._reasoning import reasoning_format, template_kwargs
from ._stream import EventStream, StreamState
from ._tool_options import ToolOptions, tool_options
from .chat import check_messages, grammar_for_response_format
from .completions import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionDelta,
    ChatCompletionMessage,
    Completion,
    CompletionChoice,
    FinishReason,
    FunctionCall,
    FunctionCallDelta,
    ToolCall,
    ToolCallDelta,
    new_id,
    now,
    usage_of,
)
from .errors import InvalidOptionError
from .events import DoneEvent, EogEvent, TokenEvent
from .options import GenerationOptions, validate
from .stats import Usage
from .tool_calls import ParsedCall

__all__ = [
    "ChatBody",
    "ChatRequest",
    "ChatStream",
    "CompletionBody",
    "CompletionStream",
    "PreparingChatStream",
    "RequestBody",
    "collect_chat",
    "generation_options",
    "openai_options",
    "wait_flag",
]

_OPENAI_NAMES: dict[str, str] = {
    "temperature": "temp",
    "max_completion_tokens": "max_tokens",
    "frequency_penalty": "penalty_freq",
    "presence_penalty": "penalty_present",
    "repeat_penalty": "penalty_repeat",
}
# accepted and ignored: they change nothing in a single local completion
_IGNORED = frozenset({"model", "user", "stream", "logit_bias", "logprobs", "top_logprobs", "stream_options"})


# ------------------------------------------------------------------ options
def openai_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI-named options as mtpstream's (see the module docstring for the table).

    Raises:
        InvalidOptionError: ``n`` other than 1, both ``max_tokens`` and
            ``max_completion_tokens``, or an option under two names.
    """
    out: dict[str, Any] = {}
    for name, value in options.items():
        if name in _IGNORED:
            continue
        if name == "n":
            if value not in (None, 1) or isinstance(value, bool):
                raise InvalidOptionError(
                    f"invalid option 'n': only n=1 is supported (got {value!r})", field="n"
                )
            continue
        ours = _OPENAI_NAMES.get(name, name)
        if ours in out:
            raise InvalidOptionError(f"option '{ours}' was given twice (as '{name}' too)", field=name)
        if value is None:
            continue  # JSON clients send explicit nulls for "default"
        out[ours] = value
    return out


def generation_options(options: Mapping[str, Any]) -> GenerationOptions:
    """Validated call options (mtpstream's names), ``response_format`` turned into a grammar."""
    options = dict(options)
    if "response_format" in options:
        grammar = grammar_for_response_format(options.pop("response_format"))
        if grammar is not None:
            if options.get("grammar"):
                raise InvalidOptionError(
                    "give either grammar or response_format, not both", field="response_format"
                )
            options["grammar"] = grammar
            opts = validate(GenerationOptions, options)
            opts._grammar_field = "response_format"  # what a refused grammar names
            return opts
    return validate(GenerationOptions, options)


def forced_grammar_options(options: GenerationOptions, grammar: str) -> GenerationOptions:
    """``options`` with the grammar of a forced tool call (refusals name ``tools``)."""
    values = options.model_dump()
    values["grammar"] = grammar
    opts = validate(GenerationOptions, values)
    opts._grammar_field = "tools"
    return opts


def wait_flag(wait: object) -> bool:
    if not isinstance(wait, bool):
        raise InvalidOptionError(f"invalid option 'wait': must be True or False (got {wait!r})", field="wait")
    return wait


def stream_flag(stream: object) -> bool:
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise InvalidOptionError(
            f"invalid option 'stream': must be true or false (got {type(stream).__name__})", field="stream"
        )
    return stream


# ------------------------------------------------------------------ requests
class _Request(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)


class ChatRequest(_Request):
    """A chat call, checked and mapped once: the messages, the result's ``model``
    name (None: the session's), ``wait`` and the generation options."""

    messages: list[dict[str, Any]]
    model: str | None = None
    wait: bool = True
    options: GenerationOptions
    tools: ToolOptions | None = None
    template_kwargs: dict[str, Any] = {}
    reasoning_format: str = "parsed"

    @classmethod
    def of(cls, messages: object, options: Mapping[str, Any]) -> ChatRequest:
        """From :meth:`MTP.stream_chat`'s arguments (OpenAI's names or ours).

        Raises:
            InvalidOptionError: bad messages or option (``.field`` names it).
        """
        options = dict(options)
        wait = wait_flag(options.pop("wait", True))
        model = options.pop("model", None)
        pop = options.pop
        tools = tool_options(pop("tools", None), pop("tool_choice", None), pop("parallel_tool_calls", None))
        kwargs = template_kwargs(pop("chat_template_kwargs", None), pop("reasoning_effort", None))
        fmt = reasoning_format(options.pop("reasoning_format", None) or "parsed")
        msgs = check_messages(messages)
        gen = generation_options(openai_options(options))
        if tools is not None and tools.forced and gen.grammar is not None:
            raise InvalidOptionError(
                "a forced tool_choice ('required' or a function) brings its own grammar: "
                "give no grammar or response_format with it",
                field="tool_choice",
            )
        return cls(
            messages=msgs,
            model=str(model) if model else None,
            wait=wait,
            options=gen,
            tools=tools,
            template_kwargs=kwargs,
            reasoning_format=fmt,
        )

    def template_vars(self) -> dict[str, Any]:
        """What the template sees besides the messages: the tools (none with
        ``tool_choice="none"``) and ``chat_template_kwargs``."""
        tools = self.tools.tools if self.tools is not None and self.tools.mode != "none" else None
        return {**self.template_kwargs, "tools": tools or None}


class RequestBody(_Request):
    """A server request's body: whether to stream, and the call's options."""

    stream: bool = False
    options: dict[str, Any]


class ChatBody(RequestBody):
    """The body of ``POST /v1/chat/completions``: the envelope typed, the rest
    (``options``) passed on to :meth:`MTP.stream_chat`, which maps it."""

    messages: Any
    chat_template: Any = None

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> ChatBody:
        rest = {k: v for k, v in body.items() if k not in ("messages", "chat_template", "stream", "model")}
        return cls(
            messages=body.get("messages"),
            chat_template=body.get("chat_template"),
            stream=stream_flag(body.get("stream")),
            options=rest,
        )


class CompletionBody(RequestBody):
    """The body of ``POST /v1/completions``: the prompt and the options, OpenAI's
    names mapped onto ours (once; :meth:`MTP.stream_events` validates them)."""

    prompt: str | list[int]

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> CompletionBody:
        dropped = ("prompt", "echo", "suffix", "best_of", "model", "stream")
        return cls(
            prompt=_prompt_of(body.get("prompt")),
            stream=stream_flag(body.get("stream")),
            options=openai_options({k: v for k, v in body.items() if k not in dropped}),
        )


def _prompt_of(prompt: Any) -> str | list[int]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return prompt
    raise InvalidOptionError(
        "prompt must be a string, a list of one string, or a list of token ids", field="prompt"
    )


# ------------------------------------------------------------------ chunk streams
_C = TypeVar("_C", ChatCompletionChunk, Completion)


class _ChunkStream(Generic[_C]):
    """OpenAI-style chunks of an event stream: a piece per non-empty token text and a
    last chunk with the finish reason and usage (subclasses shape the chunks)."""

    _prefix = "cmpl"

    def __init__(self, events: EventStream, model: str) -> None:
        self._events = events
        self._model = model
        self._id = new_id(self._prefix)
        self._created = now()
        self._done = False

    def __aiter__(self) -> _ChunkStream[_C]:
        return self

    def _piece(self, text: str) -> _C:
        raise NotImplementedError

    def _last(self, text: str, reason: FinishReason, usage: Usage) -> _C:
        raise NotImplementedError

    async def __anext__(self) -> _C:
        if self._done:
            raise StopAsyncIteration
        while True:
            ev = await self._events.__anext__()
            if isinstance(ev, TokenEvent):
                if ev.text:
                    return self._piece(ev.text)
                continue
            if isinstance(ev, (DoneEvent, EogEvent)):
                self._done = True
                reason: FinishReason = (
                    "length" if isinstance(ev, DoneEvent) and ev.finish_reason == "length" else "stop"
                )
                return self._last(ev.text, reason, ev.usage)

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

    def _chunk(
        self, delta: ChatCompletionDelta, reason: FinishReason | None = None, usage: Usage | None = None
    ) -> ChatCompletionChunk:
        cu, mu = usage_of(usage) if usage is not None else (None, None)
        return ChatCompletionChunk(
            id=self._id,
            created=self._created,
            model=self._model,
            choices=[ChatCompletionChunkChoice(delta=delta, finish_reason=reason)],
            usage=cu,
            mtp=mu,
        )

    def _parts(self, parts: list[Part]) -> None:
        for part in parts:
            if isinstance(part, ParsedCall):
                self._pending.extend(self._call_chunks(part))
            elif part[0] == "reasoning":
                self._pending.append(self._chunk(ChatCompletionDelta(reasoning_content=part[1])))
            else:
                self._pending.append(self._chunk(ChatCompletionDelta(content=part[1])))

    def _call_chunks(self, call: ParsedCall) -> list[ChatCompletionChunk]:
        index = self._n_calls
        self._n_calls += 1
        name = FunctionCallDelta(name=call.name, arguments="")
        head = ToolCallDelta(index=index, id=call_id(), type="function", function=name)
        args = ToolCallDelta(index=index, function=FunctionCallDelta(arguments=arguments_json(call)))
        return [self._chunk(ChatCompletionDelta(tool_calls=[d])) for d in (head, args)]

    def _piece(self, text: str) -> ChatCompletionChunk:
        return self._chunk(ChatCompletionDelta(content=text))

    def _last(self, text: str, reason: FinishReason, usage: Usage) -> ChatCompletionChunk:
        if self._output is None:
            return self._chunk(ChatCompletionDelta(content=text or None), reason, usage)
        self._parts(self._output.feed(text) + self._output.finish())
        if self._n_calls and reason == "stop":
            reason = "tool_calls"
        last = self._chunk(ChatCompletionDelta(), reason, usage)
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

    def __init__(self, prepare: Callable[[], ChatStream]) -> None:
        self._prepare: Callable[[], ChatStream] | None = prepare
        self._inner: ChatStream | None = None
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
            self._inner = inner
        return await self._inner.__anext__()

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
    """Text-completion chunks of one call (the server's ``/v1/completions``)."""

    def _chunk(self, text: str, reason: FinishReason | None = None, usage: Usage | None = None) -> Completion:
        cu, mu = usage_of(usage) if usage is not None else (None, None)
        return Completion(
            id=self._id,
            created=self._created,
            model=self._model,
            choices=[CompletionChoice(text=text, finish_reason=reason)],
            usage=cu,
            mtp=mu,
        )

    def _piece(self, text: str) -> Completion:
        return self._chunk(text)

    def _last(self, text: str, reason: FinishReason, usage: Usage) -> Completion:
        return self._chunk(text, reason, usage)

    async def collect(self) -> Completion:
        """The whole completion (one choice with all the text)."""
        parts: list[str] = []
        last: Completion | None = None
        try:
            async for chunk in self:
                parts.append(chunk.choices[0].text)
                last = chunk
        finally:
            await self.aclose()
        assert last is not None
        choice = CompletionChoice(text="".join(parts), finish_reason=last.choices[0].finish_reason)
        return last.model_copy(update={"choices": [choice]})


async def collect_chat(chunks: PreparingChatStream) -> ChatCompletion:
    """The whole answer of a chat chunk stream (what :meth:`MTP.chat` returns)."""
    parts: list[str] = []
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
    return ChatCompletion(
        id=final.id,
        created=final.created,
        model=final.model,
        choices=[ChatCompletionChoice(message=message, finish_reason=reason)],
        usage=final.usage,
        mtp=final.mtp,
    )
