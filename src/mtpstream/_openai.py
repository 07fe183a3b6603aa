"""The OpenAI dialect, shared by :meth:`MTP.chat`, :meth:`MTP.stream_chat` and the
server: the request models, the one mapping of a call's options (OpenAI's names,
``response_format``) onto :class:`GenerationOptions`, and the streams of
OpenAI-shaped chunks over an :class:`EventStream`.

(``_openai``, not ``openai``: the name stays clear of the OpenAI client package,
which tests and users import beside mtpstream.)

OpenAI parameter names map onto :meth:`mtpstream.MTP.generate`'s options:

======================  ============================================================
OpenAI / llama-cpp      mtpstream
======================  ============================================================
temperature             temp
top_p                   top_p
max_tokens              max_tokens
max_completion_tokens   max_tokens
stop                    stop
seed                    seed
frequency_penalty       penalty_freq
presence_penalty        penalty_present
repeat_penalty          penalty_repeat
top_k                   top_k
min_p                   min_p
grammar                 grammar
response_format         grammar (converted)
logit_bias              logit_bias
logprobs (chat)         logprobs: top_logprobs (0 if not given) when true, else None
logprobs (completions)  logprobs
n, best_of              only 1
======================  ============================================================

Parameters with no effect locally (``user``, ``store``, ``metadata``, ...) and the
refused ones are listed in :mod:`mtpstream._openai_params`.

Our own names are accepted too. The default is greedy (``temperature=0``), as
everywhere in mtpstream, not OpenAI's 1.0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import anyio
from pydantic import BaseModel, ConfigDict

from ._logprob_chunks import (
    LogprobTracker,
    chat_logprobs,
    completion_logprobs,
    merge_chat,
    merge_completion,
)
from ._openai_params import Api, include_usage, openai_only
from ._stream import EventStream, StreamState
from ._stream_usage import UsageChunks
from .chat import check_messages, grammar_for_response_format
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
    new_id,
    now,
    usage_of,
)
from .errors import InvalidOptionError
from .events import DoneEvent, EogEvent, TokenEvent
from .options import GenerationOptions, validate
from .stats import Usage

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
# the envelope: the request's model name and streaming flag, used by the caller
_IGNORED = frozenset({"model", "stream"})


# ------------------------------------------------------------------ options
def openai_options(options: Mapping[str, Any], api: Api = "chat") -> dict[str, Any]:
    """OpenAI-named options as mtpstream's (see the module docstring for the table,
    :mod:`mtpstream._openai_params` for the parameters that are not sampling options).

    Raises:
        InvalidOptionError: ``n`` other than 1, both ``max_tokens`` and
            ``max_completion_tokens``, an option under two names, or a refused
            parameter.
    """
    out: dict[str, Any] = {}
    for name, value in openai_only(options, api).items():
        if name in _IGNORED:
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
            return validate(GenerationOptions, options).grammar_from("response_format")
    return validate(GenerationOptions, options)


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
    include_usage: bool | None = None  # stream_options.include_usage (None: not given)
    options: GenerationOptions

    @classmethod
    def of(cls, messages: object, options: Mapping[str, Any]) -> ChatRequest:
        """From :meth:`MTP.stream_chat`'s arguments (OpenAI's names or ours).

        Raises:
            InvalidOptionError: bad messages or option (``.field`` names it).
        """
        options = dict(options)
        wait = wait_flag(options.pop("wait", True))
        model = options.pop("model", None)
        usage = include_usage(options.pop("stream_options", None), stream=True)
        msgs = check_messages(messages)
        return cls(
            messages=msgs,
            model=str(model) if model else None,
            wait=wait,
            include_usage=usage,
            options=generation_options(openai_options(options)),
        )


class RequestBody(_Request):
    """A server request's body: whether to stream (and then whether a last chunk
    carries the usage), and the call's options."""

    stream: bool = False
    include_usage: bool = False
    options: dict[str, Any]


class ChatBody(RequestBody):
    """The body of ``POST /v1/chat/completions``: the envelope typed, the rest
    (``options``) passed on to :meth:`MTP.stream_chat`, which maps it."""

    messages: Any
    chat_template: Any = None

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> ChatBody:
        envelope = ("messages", "chat_template", "stream", "model", "stream_options")
        rest = {k: v for k, v in body.items() if k not in envelope}
        stream = stream_flag(body.get("stream"))
        return cls(
            messages=body.get("messages"),
            chat_template=body.get("chat_template"),
            stream=stream,
            include_usage=bool(include_usage(body.get("stream_options"), stream)),
            options=rest,
        )


class CompletionBody(RequestBody):
    """The body of ``POST /v1/completions``: the prompt and the options, OpenAI's
    names mapped onto ours (once; :meth:`MTP.stream_events` validates them)."""

    prompt: str | list[int]
    echo: bool = False

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> CompletionBody:
        envelope = ("prompt", "echo", "model", "stream", "stream_options")
        stream = stream_flag(body.get("stream"))
        options = openai_options({k: v for k, v in body.items() if k not in envelope}, "completions")
        echo = body.get("echo")
        if echo is not None and not isinstance(echo, bool):
            raise InvalidOptionError(
                f"invalid option 'echo': must be true or false (got {echo!r:.80})",
                field="echo",
            )
        if echo and options.get("logprobs") is not None:
            raise InvalidOptionError(
                "option 'echo' with 'logprobs' is not supported: the prompt's log-probabilities are not "
                "computed",
                field="echo",
            )
        return cls(
            prompt=_prompt_of(body.get("prompt")),
            stream=stream,
            include_usage=bool(include_usage(body.get("stream_options"), stream)),
            echo=bool(echo),
            options=options,
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
    """The chunks of one chat call; the first carries ``role="assistant"``."""

    _prefix = "chatcmpl"

    def __init__(self, events: EventStream, model: str) -> None:
        super().__init__(events, model)
        self._started = False

    def _chunk(
        self,
        delta: ChatCompletionDelta,
        reason: FinishReason | None = None,
        usage: Usage | None = None,
        tokens: Tokens = None,
    ) -> ChatCompletionChunk:
        cu, mu = usage_of(usage) if usage is not None else (None, None)
        logprobs = chat_logprobs(tokens) if tokens is not None else None
        return ChatCompletionChunk(
            id=self._id,
            created=self._created,
            model=self._model,
            choices=[ChatCompletionChunkChoice(delta=delta, finish_reason=reason, logprobs=logprobs)],
            usage=cu,
            mtp=mu,
        )

    def _piece(self, text: str, tokens: Tokens) -> ChatCompletionChunk:
        return self._chunk(ChatCompletionDelta(content=text), tokens=tokens)

    def _last(self, text: str, reason: FinishReason, usage: Usage, tokens: Tokens) -> ChatCompletionChunk:
        return self._chunk(ChatCompletionDelta(content=text or None), reason, usage, tokens)

    async def __anext__(self) -> ChatCompletionChunk:
        if not self._started and not self._done:
            # submit first, so that a refused call (busy, context overflow) raises here
            if self._events.state is StreamState.NEW:
                await self._events.checked_start()
            self._started = True
            return self._chunk(ChatCompletionDelta(role="assistant", content=""))
        return await super().__anext__()


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
    final: ChatCompletionChunk | None = None
    async with chunks:
        async for chunk in chunks:
            if chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
            if chunk.choices[0].logprobs is not None:
                logprobs.append(chunk.choices[0].logprobs)
            final = chunk
    assert final is not None and final.usage is not None and final.mtp is not None
    reason = final.choices[0].finish_reason
    assert reason is not None
    message = ChatCompletionMessage(content="".join(parts))
    merged = merge_chat(logprobs) if logprobs else None
    return ChatCompletion(
        id=final.id,
        created=final.created,
        model=final.model,
        choices=[ChatCompletionChoice(message=message, finish_reason=reason, logprobs=merged)],
        usage=final.usage,
        mtp=final.mtp,
    )
