"""MTP sessions: :func:`init` and the :class:`MTP` streaming API."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import time
import warnings
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType
from typing import IO, Any

import anyio

from . import _grammar_check, _logging, _runtime
from ._loader import _native
from .chat import _check_messages, chat_prompt, grammar_for_response_format, openai_options, render_messages
from .completions import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionDelta,
    ChatCompletionMessage,
    Completion,
    CompletionChoice,
    new_id,
    now,
    usage_of,
)
from .errors import (
    GenerationError,
    InvalidOptionError,
    MTPError,
    NoMTPHeadError,
    SessionBusyError,
    SessionClosedError,
    from_native,
)
from .events import DoneEvent, EogEvent, Event, StatsEvent, TokenEvent
from .model import Model
from .options import GGML_TYPES, GenerationOptions, SessionOptions, check_text, validate
from .stats import MTPStats, Usage

__all__ = ["MTP", "init"]

_QUEUE_CAPACITY = 512
# the longest draft n_draft="auto" may choose
AUTO_MAX_DRAFT = 6
_KIND = _native.EventKind
# a call queued behind a stream that is still open checks on it this often, and warns
# after this long without a timeout (it never waits silently)
_QUEUED_CHECK_S = 0.5
_QUEUED_WARN_S = 10.0
# an open stream whose reader has not come back for this long counts as not being read
_IDLE_READER_S = 1.0


class MTP:
    """A speculative-decoding session over one model. Create it with :func:`init`.

    Calls on one session run one at a time, in the order they start iterating;
    several sessions (on one model or several) run concurrently. Use it as a
    (async) context manager or call :meth:`close`.
    """

    def __init__(self, model: Model, draft_model: Model | None, options: SessionOptions, engine: Any):
        self._model = model
        self._model_native: Any = model._handle  # keeps the weights alive after model.close()
        self._n_vocab = model.n_vocab
        self._draft_model = draft_model
        self._options = options
        self._engine: Any = engine
        self._calls = 0
        self._allow_request_templates = False
        # streams of this session that started and have not finished, oldest first
        self._open: list[weakref.ref[_EventStream]] = []
        self._grammar_checker = _grammar_check.for_session(model.path, options)

    # ------------------------------------------------------------------ facts
    @property
    def model(self) -> Model:
        """The target model."""
        return self._model

    @property
    def n_draft(self) -> int:
        """Draft tokens per iteration (0: plain decoding); with ``auto``, the longest allowed."""
        return int(self._live.n_draft)

    @property
    def auto_draft(self) -> bool:
        """True if the draft length adapts (``n_draft="auto"``); see ``stats().n_draft``."""
        return bool(self._live.auto_draft)

    @property
    def n_ctx(self) -> int:
        """Context size in tokens (prompt + generated)."""
        return int(self._live.n_ctx)

    @property
    def n_seq(self) -> int:
        """How many calls run at once, batched (the rest queue)."""
        return int(self._live.n_seq)

    @property
    def state_bytes(self) -> int:
        """Bytes of KV cache and recurrent state the session holds (both contexts, all
        ``n_seq`` sequences; allocated at :func:`init`)."""
        return int(self._live.state_bytes)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._engine is None

    @property
    def allow_request_templates(self) -> bool:
        """Whether calls may pass a ``chat_template`` other than the model's own
        (default False: a template is a program, see :func:`init`). Settable."""
        return self._allow_request_templates

    @allow_request_templates.setter
    def allow_request_templates(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise InvalidOptionError(
                f"allow_request_templates must be True or False (got {value!r})",
                field="allow_request_templates",
            )
        self._allow_request_templates = value

    @property
    def _live(self) -> Any:
        engine = self._engine
        if engine is None:
            raise SessionClosedError("the session is closed")
        return engine

    # ------------------------------------------------------------------ generation
    def stream_events(
        self, prompt: str | Sequence[int], *, wait: bool = True, **options: Any
    ) -> AsyncIterator[Event]:
        """Generate from ``prompt``, yielding :class:`TokenEvent`, :class:`StatsEvent` and
        exactly one terminal :class:`DoneEvent` or :class:`EogEvent`.

        ``prompt`` is text (tokenized with special tokens parsed) or token ids. Options:
        ``max_tokens, temp, top_k, top_p, min_p, seed, penalty_last_n, penalty_repeat,
        penalty_freq, penalty_present, grammar, response_format, stop, emit_stats_every,
        timeout``. ``response_format`` is OpenAI's (``{"type": "json_object"}`` or
        ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}``) and
        becomes a grammar through llama-cpp-python's JSON-schema converter.
        ``wait=False`` raises :class:`SessionBusyError` instead of queueing behind
        another call.

        The stream is also an async context manager (``async with
        mtp.stream_events(p) as s:``), which closes it for sure on exit. Leaving an
        ``async for`` early (break, exception, cancellation) cancels the generation at
        once; a stream that is kept but no longer read holds the session until it is
        closed (``await s.aclose()``, idempotent, from any task) or garbage collected.
        A call queued behind such a stream warns after 10 s and, with ``timeout``,
        raises :class:`SessionBusyError` naming it.

        Raises:
            InvalidOptionError: a bad prompt or option (``.field`` names it).
            ContextOverflowError: the prompt does not fit into ``n_ctx``.
            SessionBusyError: ``wait=False`` and the session is busy; a second task
                reads this stream; or ``timeout`` passed while queued behind an open stream.
            GenerationError: llama.cpp failed; the session stays usable.
            SessionClosedError: the session was closed.
            TimeoutError: no event within ``timeout`` seconds.
        """
        if not isinstance(wait, bool):
            raise InvalidOptionError(
                f"invalid option 'wait': must be True or False (got {wait!r})", field="wait"
            )
        opts = _generation_options(options)
        tokens = self._prompt_tokens(prompt)
        return _EventStream(self, tokens, opts, wait)

    def stream(self, prompt: str | Sequence[int], **options: Any) -> AsyncIterator[str]:
        """Generate from ``prompt``, yielding non-empty pieces of text.

        Same options as :meth:`stream_events`; leaving the loop early cancels the
        generation at once (the iterator is a plain object, not an async
        generator, so nothing waits for garbage collection).
        """
        return _TextStream(self.stream_events(prompt, **options))

    async def generate(self, prompt: str | Sequence[int], **options: Any) -> str:
        """Generate from ``prompt`` and return the whole text."""
        parts: list[str] = []
        events = self.stream_events(prompt, **options)
        async with contextlib.aclosing(events):  # type: ignore[type-var]
            async for ev in events:
                if isinstance(ev, (TokenEvent, DoneEvent, EogEvent)):
                    parts.append(ev.text)
        return "".join(parts)

    def _prompt_tokens(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidOptionError("prompt is empty", field="prompt")
            try:
                check_text(prompt, "prompt")
            except ValueError as exc:
                raise InvalidOptionError(str(exc), field="prompt") from None
            tokens = list(self._model_native.tokenize(prompt, not self._starts_with_bos(prompt), True))
        elif isinstance(prompt, (list, tuple)):
            tokens = list(prompt)
            n_vocab = self._n_vocab
            for i, t in enumerate(tokens):
                if isinstance(t, bool) or not isinstance(t, int):
                    raise InvalidOptionError(
                        f"prompt token at index {i} must be int, not {type(t).__name__}", field="prompt"
                    )
                if not 0 <= t < n_vocab:
                    raise InvalidOptionError(
                        f"prompt token {t} at index {i} is out of range for a vocabulary of {n_vocab} tokens",
                        field="prompt",
                    )
        else:
            raise InvalidOptionError(
                f"prompt must be str or a list of token ids, not {type(prompt).__name__}", field="prompt"
            )
        if not tokens:
            raise InvalidOptionError("prompt is empty", field="prompt")
        return tokens

    def _starts_with_bos(self, text: str) -> bool:
        bos = self._model.bos
        return bos is not None and bool(bos_text := self._model.token_text(bos)) and text.startswith(bos_text)

    # ------------------------------------------------------------------ chat
    def render_chat(self, messages: Sequence[Mapping[str, Any]], chat_template: str | None = None) -> str:
        """The prompt text :meth:`chat` generates from: ``messages`` rendered by the
        model's ``tokenizer.chat_template`` (or ``chat_template``, when
        :attr:`allow_request_templates`) with the generation prompt. Blocking (the
        template renders within time and size limits); :meth:`chat` renders in a
        worker thread.

        Raises:
            InvalidOptionError: no template or a template that is not allowed
                (``field="chat_template"``), malformed messages, or a template that
                fails to render or goes over a limit.
        """
        bos, eos = self._bos_eos_text()
        return render_messages(messages, self._chat_template(chat_template), bos, eos)

    def tokenize_chat(
        self, messages: Sequence[Mapping[str, Any]], chat_template: str | None = None
    ) -> list[int]:
        """The prompt token ids :meth:`chat` generates from: :meth:`render_chat`'s text
        tokenized so that text inside a message never becomes a special token (a
        message's ``<|im_start|>`` stays plain text) while the template's own
        special-token text does. Blocking, like :meth:`render_chat`.

        Raises:
            InvalidOptionError: as :meth:`render_chat`; special-token text in a message
                that the template moves or cuts (``field="messages"``).
        """
        return self._chat_tokens(_check_messages(messages), self._chat_template(chat_template))

    def _bos_eos_text(self) -> tuple[str, str]:
        model = self._model
        bos = model.token_text(model.bos) if model.bos is not None else ""
        eos = model.token_text(model.eos) if model.eos is not None else ""
        return bos, eos

    def _chat_template(self, chat_template: Any) -> str | None:
        """The template a call renders with; a request's own only when allowed."""
        own = self._model.chat_template
        if chat_template is None or chat_template == own:
            return own
        if not isinstance(chat_template, str):
            raise InvalidOptionError(
                f"chat_template must be a string, not {type(chat_template).__name__}", field="chat_template"
            )
        if not self._allow_request_templates:
            raise InvalidOptionError(
                "a chat_template other than the model's own is not allowed on this session "
                "(mtpstream.init(..., allow_request_templates=True); server: --allow-request-templates)",
                field="chat_template",
            )
        return chat_template

    def _chat_tokens(self, messages: list[dict[str, Any]], template: str | None) -> list[int]:
        native = self._model_native
        bos, eos = self._bos_eos_text()
        text, tokens = chat_prompt(messages, template, bos, eos, native.tokenize, native.token_text)
        try:
            check_text(text, "prompt")
        except ValueError as exc:
            raise InvalidOptionError(str(exc), field="prompt") from None
        if not tokens:
            raise InvalidOptionError("prompt is empty", field="prompt")
        return tokens

    async def chat(
        self, messages: Sequence[Mapping[str, Any]], *, chat_template: str | None = None, **options: Any
    ) -> ChatCompletion:
        """Answer a conversation: the assistant's next message as an OpenAI-shaped
        :class:`ChatCompletion` (identical to :meth:`generate` on
        :meth:`render_chat`'s prompt; the end-of-turn token ends it).

        ``model`` (OpenAI's request field) only sets the ``model`` the result carries
        (default :attr:`model_name`). Options take OpenAI's names (``temperature, top_p, max_tokens`` or
        ``max_completion_tokens, stop, seed, frequency_penalty, presence_penalty,
        response_format``; ``n`` must be 1) and llama-cpp-python's extras (``top_k,
        min_p, repeat_penalty, grammar``), besides mtpstream's own (see
        :mod:`mtpstream.chat`).

        Raises:
            InvalidOptionError: bad messages, template or option (``.field`` names it).
            ContextOverflowError, GenerationError, SessionBusyError, SessionClosedError,
            TimeoutError: as :meth:`stream_events`.
        """
        parts: list[str] = []
        final: ChatCompletionChunk | None = None
        async with self.stream_chat(messages, chat_template=chat_template, **options) as chunks:
            async for chunk in chunks:
                delta = chunk.choices[0].delta.content
                if delta:
                    parts.append(delta)
                final = chunk
        assert final is not None and final.usage is not None and final.mtp is not None
        reason = final.choices[0].finish_reason
        assert reason is not None
        return ChatCompletion(
            id=final.id,
            created=final.created,
            model=final.model,
            choices=[
                ChatCompletionChoice(
                    message=ChatCompletionMessage(content="".join(parts)), finish_reason=reason
                )
            ],
            usage=final.usage,
            mtp=final.mtp,
        )

    def stream_chat(
        self, messages: Sequence[Mapping[str, Any]], *, chat_template: str | None = None, **options: Any
    ) -> _PreparingChatStream:
        """:meth:`chat` as a stream of :class:`ChatCompletionChunk`: the first delta
        carries ``role="assistant"``, exactly one chunk (the last) the
        ``finish_reason``, ``usage`` and ``mtp``. Also an async context manager;
        leaving early cancels the generation at once. Messages and options are
        checked here; the template renders (and the prompt is tokenized) in a worker
        thread when iteration starts, so errors of those come from the first
        ``__anext__``.

        Raises: as :meth:`chat`.
        """
        wait = options.pop("wait", True)
        if not isinstance(wait, bool):
            raise InvalidOptionError(
                f"invalid option 'wait': must be True or False (got {wait!r})", field="wait"
            )
        name = str(options.pop("model", None) or self.model_name)
        template = self._chat_template(chat_template)
        msgs = _check_messages(messages)
        opts = _generation_options(openai_options(options))

        def prepare() -> _ChatStream:
            return _ChatStream(_EventStream(self, self._chat_tokens(msgs, template), opts, wait), name)

        return _PreparingChatStream(prepare)

    def _stream_completion(
        self, prompt: str | Sequence[int], model: str, **options: Any
    ) -> _CompletionStream:
        """Text-completion chunks of :meth:`stream_events` (the server's ``/v1/completions``)."""
        events = self.stream_events(prompt, **openai_options(options))
        assert isinstance(events, _EventStream)
        return _CompletionStream(events, model)

    @property
    def model_name(self) -> str:
        """The name results carry in ``model``: the GGUF file's stem."""
        return self._model.path.stem

    # ------------------------------------------------------------------ sync helpers
    def generate_sync(self, prompt: str | Sequence[int], **options: Any) -> str:
        """:meth:`generate` for scripts and notebooks without an event loop.

        Raises:
            RuntimeError: called inside a running event loop (use ``await generate``).
            Otherwise as :meth:`generate`.
        """
        _no_running_loop("generate")
        return anyio.run(functools.partial(self.generate, prompt, **options))

    def chat_sync(self, messages: Sequence[Mapping[str, Any]], **options: Any) -> ChatCompletion:
        """:meth:`chat` for scripts and notebooks without an event loop.

        Raises:
            RuntimeError: called inside a running event loop (use ``await chat``).
            Otherwise as :meth:`chat`.
        """
        _no_running_loop("chat")
        return anyio.run(functools.partial(self.chat, messages, **options))

    # ------------------------------------------------------------------ stats
    def stats(self) -> MTPStats:
        """Cumulative counters of this session; lock-free, safe from any thread or task."""
        engine = self._live
        return MTPStats._from_native(
            engine.stats(), self._calls, engine.sequences(_runtime.get()), engine.n_seq, engine.state_bytes
        )

    def print_stats(self, file: IO[str] | None = None) -> None:
        """Print an upstream-style summary of :meth:`stats` (to stderr by default)."""
        self.stats().print(file)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Cancel any running or queued call, wait for the worker to let go, free the contexts."""
        engine = self._engine
        if engine is None:
            return
        engine.close(_runtime.get())
        self._engine = None
        if self._grammar_checker is not None:
            self._grammar_checker.close()
        _logging.flush()

    def __enter__(self) -> MTP:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> MTP:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return "<mtpstream.MTP closed>"
        seqs = f" n_seq={self.n_seq}" if self.n_seq > 1 else ""
        return (
            f"<mtpstream.MTP n_draft={self.n_draft} n_ctx={self.n_ctx}{seqs} model={self._model.path.name!r}>"
        )


class _EventStream:
    """The async iterator behind :meth:`MTP.stream_events`.

    The job is submitted when iteration starts. The worker pushes events into a
    native queue and writes a byte to a socket; we wait on that socket (asyncio or
    trio, through anyio) and drain every pending event per wake-up. If the stream
    is abandoned (break, exception, cancellation, timeout, garbage collection) the
    job is cancelled; the session's next call starts only after the worker has
    acknowledged it.
    """

    def __init__(self, session: MTP, prompt: list[int], opts: GenerationOptions, wait: bool) -> None:
        self._session = session
        self._prompt = prompt
        self._opts = opts
        self._wait = wait
        self._job: Any = None
        self._sock: socket.socket | None = None
        self._buffer: deque[Any] = deque()
        self._finished = False
        self._got_event = False
        self._reader: object | None = None  # the task reading right now
        self._closing = False  # aclose() was called (from any task)
        self._started_at = 0.0
        self._last_read = 0.0  # monotonic time a reader last entered or left __anext__

    def __aiter__(self) -> _EventStream:
        return self

    async def __aenter__(self) -> _EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "finished" if self._finished else "open" if self._job is not None else "not started"
        return f"<mtpstream stream of {len(self._prompt)} prompt tokens, {state}>"

    async def _checked_start(self) -> None:
        """:meth:`_start`, after the grammar's trial (:mod:`._grammar_check`)."""
        await _grammar_check.check_options(self._session._grammar_checker, self._opts)
        self._start()

    def _start(self) -> None:
        session = self._session
        engine = session._live
        o = self._opts
        rsock, wsock = socket.socketpair()
        rsock.setblocking(False)
        wfd = wsock.detach()
        try:
            self._job = engine.submit(
                _runtime.get(),
                _native_options(
                    self._prompt, o, stats=True, step_budget=session._options.grammar_step_budget
                ),
                wfd,
                self._wait,
                _QUEUE_CAPACITY,
            )
        except _native.NativeError as exc:
            rsock.close()  # the native side closed the write end
            self._finished = True
            raise _with_llama_errors(from_native(exc)) from None
        except BaseException:
            rsock.close()  # e.g. a conversion error before native code took the write end
            os.close(wfd)
            self._finished = True
            raise
        self._sock = rsock
        self._started_at = time.monotonic()
        session._calls += 1
        session._open = [r for r in session._open if (st := r()) is not None and not st._finished]
        session._open.append(weakref.ref(self))

    async def __anext__(self) -> Event:
        if self._reader is not None:
            # never touch the socket the other task waits on
            raise SessionBusyError(
                "this stream is already being read by another task; read a stream from one task only"
            )
        if self._finished and not self._buffer:
            raise StopAsyncIteration
        self._reader = reader = object()
        self._last_read = time.monotonic()
        try:
            if self._job is None:
                await self._checked_start()
            try:
                while not self._buffer:
                    self._buffer.extend(self._job.drain())
                    if self._buffer:
                        break
                    if self._sock is None:  # closed by aclose() from another task
                        raise StopAsyncIteration
                    await self._wait_wakeup()
            except StopAsyncIteration:
                self._abandon()
                raise
            except BaseException:
                self._abandon()
                raise
            self._got_event = True
            return self._convert(self._buffer.popleft())
        finally:
            if self._reader is reader:
                self._reader = None
                self._last_read = time.monotonic()

    def _blocking_stream(self) -> _EventStream | None:
        """An earlier stream of this session that is open but has not been read for a
        while (this call may be waiting for it); None if every earlier one is being read."""
        idle_since = time.monotonic() - _IDLE_READER_S
        for ref in self._session._open:
            other = ref()
            if other is self:
                return None
            if (
                other is not None
                and not other._finished
                and other._reader is None
                and other._last_read < idle_since
            ):
                return other
        return None

    async def _wait_wakeup(self) -> None:
        sock = self._sock
        assert sock is not None
        timeout = self._opts.timeout
        if self._got_event:
            if timeout is None:
                await anyio.wait_readable(sock)
            else:
                with anyio.move_on_after(timeout) as scope:
                    await anyio.wait_readable(sock)
                if scope.cancelled_caught:
                    raise TimeoutError(f"no event from the generation within {timeout} s")
        else:
            await self._wait_first(sock, timeout)
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while sock.recv(4096):
                pass

    async def _wait_first(self, sock: socket.socket, timeout: float | None) -> None:
        """Wait for the first event, checking on a stream this call may be queued behind."""
        warned = False
        while True:
            waited = time.monotonic() - self._started_at
            step = _QUEUED_CHECK_S if timeout is None else max(0.0, min(_QUEUED_CHECK_S, timeout - waited))
            with anyio.move_on_after(step):
                await anyio.wait_readable(sock)
                return
            waited = time.monotonic() - self._started_at
            blocker = self._blocking_stream()
            if timeout is not None and waited >= timeout:
                if blocker is not None:
                    raise SessionBusyError(
                        f"no event within {timeout} s: this call is queued behind {blocker!r} on the "
                        "same session, which is still open but not being read. Read it to the end or "
                        "close it (await stream.aclose(), or open it with 'async with')"
                    )
                raise TimeoutError(f"no event from the generation within {timeout} s")
            if blocker is not None and not warned and waited >= _QUEUED_WARN_S:
                warned = True
                warnings.warn(
                    f"a call on {self._session!r} has waited {waited:.0f} s behind {blocker!r}, "
                    "which is still open but not being read; close it (await stream.aclose(), or "
                    "'async with') or read it to the end",
                    RuntimeWarning,
                    stacklevel=2,
                )

    def _convert(self, ev: Any) -> Event:
        kind = ev.kind
        if kind == _KIND.token:
            return TokenEvent(ev.token, ev.text.decode("utf-8"))
        if kind == _KIND.stats:
            return StatsEvent(self._session.stats())
        self._close_socket()
        self._finished = True
        _logging.flush()
        if kind == _KIND.cancelled:
            if self._closing:  # aclose() from another task
                raise StopAsyncIteration
            # only reachable if someone else cancelled this job (e.g. session.close())
            raise SessionClosedError("the generation was cancelled because the session was closed")
        if kind == _KIND.error:
            raise GenerationError(ev.error or "generation failed")
        usage = _usage(ev.usage)
        stats = self._session.stats() if not self._session.closed else MTPStats()
        if kind == _KIND.eog:
            return EogEvent(stats, usage, ev.token, ev.text.decode("utf-8"))
        return DoneEvent(stats, usage, ev.finish_reason, ev.text.decode("utf-8"))

    def _abandon(self) -> None:
        if self._job is not None and not self._finished:
            self._job.cancel()
        self._finished = True
        self._buffer.clear()
        self._close_socket()

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def aclose(self) -> None:
        """Stop the generation and wait until the worker has acknowledged it.

        Idempotent, and safe from any task: a task reading the stream meanwhile ends
        its iteration normally (``StopAsyncIteration``).
        """
        self._closing = True
        job = self._job
        if job is None or self._finished:
            if self._reader is None:
                self._abandon()
            return
        job.cancel()
        if self._reader is not None:
            # another task waits on the socket: let it see the cancellation itself
            with anyio.CancelScope(shield=True):
                while not job.finished:
                    await anyio.sleep(0.005)
            return
        with anyio.CancelScope(shield=True):
            while not job.finished:
                job.drain()
                if self._sock is None:
                    break
                with anyio.move_on_after(0.05):
                    await anyio.wait_readable(self._sock)
                with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
                    while self._sock.recv(4096):
                        pass
        self._abandon()

    def __del__(self) -> None:
        job = self._job
        if job is not None and not self._finished:
            job.cancel()
        sock = self._sock
        if sock is not None:
            sock.close()


class _TextStream:
    """The async iterator behind :meth:`MTP.stream`: the non-empty texts of an event stream."""

    def __init__(self, events: AsyncIterator[Event]) -> None:
        self._events = events

    def __aiter__(self) -> _TextStream:
        return self

    async def __anext__(self) -> str:
        while True:
            ev = await self._events.__anext__()
            if isinstance(ev, (TokenEvent, DoneEvent, EogEvent)) and ev.text:
                return ev.text

    async def aclose(self) -> None:
        """Stop the generation and wait until the worker has acknowledged it (idempotent)."""
        await self._events.aclose()  # type: ignore[attr-defined]

    async def __aenter__(self) -> _TextStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _ChunkStream:
    """OpenAI-style chunks of an event stream: a piece per non-empty token text and a
    last chunk with the finish reason and usage (subclasses shape the chunks)."""

    _prefix = "cmpl"

    def __init__(self, events: _EventStream, model: str) -> None:
        self._events = events
        self._model = model
        self._id = new_id(self._prefix)
        self._created = now()
        self._done = False

    def __aiter__(self) -> _ChunkStream:
        return self

    def _piece(self, text: str) -> Any:
        raise NotImplementedError

    def _last(self, text: str, reason: Any, usage: Usage) -> Any:
        raise NotImplementedError

    async def __anext__(self) -> Any:
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
                reason = "length" if isinstance(ev, DoneEvent) and ev.finish_reason == "length" else "stop"
                return self._last(ev.text, reason, ev.usage)

    async def aclose(self) -> None:
        """Stop the generation and wait until the worker has acknowledged it (idempotent)."""
        self._done = True
        await self._events.aclose()

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _ChatStream(_ChunkStream):
    """The async iterator behind :meth:`MTP.stream_chat`."""

    _prefix = "chatcmpl"

    def __init__(self, events: _EventStream, model: str) -> None:
        super().__init__(events, model)
        self._started = False

    def _chunk(
        self, delta: ChatCompletionDelta, reason: Any = None, usage: Any = None
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

    def _piece(self, text: str) -> ChatCompletionChunk:
        return self._chunk(ChatCompletionDelta(content=text))

    def _last(self, text: str, reason: Any, usage: Usage) -> ChatCompletionChunk:
        return self._chunk(ChatCompletionDelta(content=text or None), reason, usage)

    async def __anext__(self) -> ChatCompletionChunk:
        if not self._started and not self._done:
            # submit first, so that a refused call (busy, context overflow) raises here
            if self._events._job is None and not self._events._finished:
                await self._events._checked_start()
            self._started = True
            return self._chunk(ChatCompletionDelta(role="assistant", content=""))
        chunk: ChatCompletionChunk = await super().__anext__()
        return chunk


class _PreparingChatStream:
    """The async iterator behind :meth:`MTP.stream_chat`: renders and tokenizes the
    messages in a worker thread at the first ``__anext__``, then reads the
    :class:`_ChatStream` of that prompt."""

    def __init__(self, prepare: Callable[[], _ChatStream]) -> None:
        self._prepare: Callable[[], _ChatStream] | None = prepare
        self._inner: _ChatStream | None = None
        self._closed = False

    def __aiter__(self) -> _PreparingChatStream:
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

    async def __aenter__(self) -> _PreparingChatStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _CompletionStream(_ChunkStream):
    """Text-completion chunks of one call (the server's ``/v1/completions``)."""

    def _chunk(self, text: str, reason: Any = None, usage: Any = None) -> Completion:
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

    def _last(self, text: str, reason: Any, usage: Usage) -> Completion:
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


def _generation_options(options: Mapping[str, Any]) -> GenerationOptions:
    """Validated call options, ``response_format`` turned into a grammar."""
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
            opts._grammar_field = "response_format"
            return opts
    return validate(GenerationOptions, options)


def _no_running_loop(method: str) -> None:
    try:
        import sniffio

        sniffio.current_async_library()
    except Exception:
        return
    raise RuntimeError(
        f"{method}_sync() was called inside a running event loop; use 'await mtp.{method}(...)'"
    )


def _with_llama_errors(err: MTPError) -> MTPError:
    """``err`` with llama.cpp's own error lines (e.g. a grammar parse error) appended."""
    lines = _logging.flush()
    if not lines:
        return err
    message = _logging.with_errors(str(err), lines)
    if isinstance(err, InvalidOptionError):
        return InvalidOptionError(message, field=err.field)
    return type(err)(message)


def _native_options(
    prompt: list[int], o: GenerationOptions, *, stats: bool, step_budget: float | None = None
) -> Any:
    """The native engine's options for one call (bound struct, fields by name)."""
    n = _native.GenerationOptions()
    n.prompt = prompt
    n.max_tokens = o.max_tokens
    n.stop = list(o.stop)
    n.emit_stats_every = o.emit_stats_every if stats else 0
    n.cache_prompt = o.cache_prompt
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
    s.grammar = o.grammar or ""
    s.grammar_step_budget_us = max(1, round(step_budget * 1e6)) if step_budget else 0
    n.sampling = s
    return n


def _usage(u: Any) -> Usage:
    return Usage(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        drafts_generated=u.drafts_generated,
        drafts_accepted=u.drafts_accepted,
        cached_tokens=u.cached_tokens,
    )


def _context_options(opts: SessionOptions) -> Any:
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
    c.rollback = _native.Rollback.replay if opts.rollback == "replay" else _native.Rollback.snapshots
    return c


def _check_batch(opts: SessionOptions, n_draft: int) -> None:
    """The batch limits llama.cpp would abort on, named after the option to change."""
    per_round = opts.n_seq * (n_draft + 1)  # every sequence's draft step in one MTP batch
    n_batch = opts.n_batch or min(opts.n_ctx * opts.n_seq, max(512, per_round))
    n_ubatch = opts.n_ubatch or n_batch
    batch_field = "n_batch" if opts.n_batch else "n_ctx"
    if n_ubatch > n_batch:
        raise InvalidOptionError(
            f"n_ubatch ({n_ubatch}) must not exceed n_batch ({n_batch})",
            field="n_ubatch" if opts.n_ubatch else batch_field,
        )
    if n_batch < n_draft + 1:
        raise InvalidOptionError(
            f"n_batch ({n_batch}) must be at least n_draft + 1 ({n_draft + 1})"
            + (
                ""
                if opts.n_batch
                else f" (n_batch defaults to min(n_ctx * n_seq, 512) with n_ctx={opts.n_ctx})"
            ),
            field=batch_field,
        )
    if n_draft > 0 and opts.n_seq > 1 and n_batch < per_round:
        raise InvalidOptionError(
            f"n_batch ({n_batch}) must be at least n_seq * (n_draft + 1) ({per_round}) so that every "
            "sequence's draft step fits one batch",
            field="n_batch" if opts.n_batch else batch_field,
        )
    if n_draft > 0 and n_ubatch < n_draft + 2:
        raise InvalidOptionError(
            f"n_ubatch ({n_ubatch}) must be at least n_draft + 2 ({n_draft + 2}) for recurrent-state "
            "rollback; raise n_ubatch/n_ctx or lower n_draft",
            field="n_ubatch" if opts.n_ubatch else batch_field,
        )


def _check_models(model: Model, draft_model: Model | None, n_draft: int) -> None:
    if not isinstance(model, Model):
        raise InvalidOptionError(
            f"model must be an mtpstream.Model, not {type(model).__name__}", field="model"
        )
    if model.closed:
        raise SessionClosedError("the model is closed")
    if model.is_sidecar:
        raise InvalidOptionError(
            f"'{model.path.name}' is an MTP-only sidecar (it has no trunk layers); load the full "
            "model as the target and pass this file as draft_model=",
            field="model",
        )
    if n_draft == 0:
        return
    if draft_model is not None:
        if not isinstance(draft_model, Model):
            raise InvalidOptionError("draft_model must be an mtpstream.Model", field="draft_model")
        if draft_model.closed:
            raise SessionClosedError("the draft model is closed")
        if not draft_model.has_mtp:
            raise NoMTPHeadError(
                f"draft_model '{draft_model.path.name}' has no loaded MTP head"
                + (" (it was loaded with load_mtp=False)" if not draft_model.load_mtp else "")
            )
        if draft_model.n_vocab != model.n_vocab:
            raise InvalidOptionError(
                f"draft_model vocabulary ({draft_model.n_vocab}) differs from the target's ({model.n_vocab})",
                field="draft_model",
            )
        if draft_model.n_embd != model.n_embd:
            raise InvalidOptionError(
                f"draft_model hidden width ({draft_model.n_embd}) differs from the target's ({model.n_embd})",
                field="draft_model",
            )
        return
    if not model.has_mtp:
        if model.n_layer_nextn > 0 and not model.load_mtp:
            raise NoMTPHeadError(
                f"'{model.path.name}' was loaded with load_mtp=False, so its MTP head was skipped; "
                "reload it with load_mtp=True, or use n_draft=0 for plain decoding"
            )
        raise NoMTPHeadError(
            f"'{model.path.name}' has no MTP head; use n_draft=0 for plain decoding, a GGUF that "
            "preserves the MTP (NextN) layers, or pass an MTP sidecar GGUF as draft_model="
        )


def init(
    model: Model,
    n_draft: int | str = 3,
    n_ctx: int = 2048,
    n_seq: int = 1,
    *,
    draft_model: Model | None = None,
    allow_request_templates: bool = False,
    **context_options: Any,
) -> MTP:
    """Create an MTP session on ``model``.

    ``n_draft >= 1`` drafts that many tokens per iteration with the model's MTP
    head (or ``draft_model``, an MTP sidecar GGUF); ``n_draft=0`` is plain
    decoding through the same engine; ``n_draft="auto"`` picks the length of each
    draft (0..6) from the measured acceptance and costs.

    ``n_seq`` (1..64) calls run at once, batched: every draft step of all of them in
    one MTP decode and all their verify batches in one target decode; further calls
    queue in FIFO order. ``n_ctx`` is per sequence (prompt + generated tokens of one
    call), so the KV cache and recurrent state grow with ``n_seq``
    (:attr:`MTP.state_bytes`).

    Context options: ``n_threads, n_threads_batch, n_batch, n_ubatch, flash_attn,
    type_k, type_v, offload_kqv``.

    ``rollback`` is how a recurrent or hybrid target (Qwen3.5/3.6-style Gated DeltaNet)
    drops rejected drafts, whose state cannot be cut back: ``"replay"`` (the default)
    shares each sequence's state with a spare sequence id before a verify and, after a
    rejection, restores it and decodes the accepted tokens again in front of the next
    verify (``stats().replayed_tokens``), in place of as many drafts; ``"snapshots"``
    has llama.cpp keep the state after each of a verify's last ``n_draft + 1`` tokens,
    which every verify pays for (~1.1-1.2x per verify on the bench model) and which takes
    ``n_draft + 1`` recurrent states per sequence instead of two. Output is the same;
    attention-only targets ignore it.

    ``prompt_cache=True`` (the default) keeps each finished call's state, so a call
    whose prompt extends it (the next chat turn) reads only the new tokens, and keeps
    checkpoints near earlier prompts' ends (within ``prompt_cache_checkpoint_bytes``,
    default 256 MiB, for all sequences together) so that a prompt diverging inside
    the cached tokens restarts from the last one before the divergence.

    ``allow_request_templates=True`` lets calls pass a ``chat_template`` other than
    the model's own (:attr:`MTP.allow_request_templates`). A template is a Jinja
    program: every template renders in a sandbox with time and size limits, but only
    allow templates from clients you would let run code for up to a few seconds.

    Raises:
        InvalidOptionError: a bad option (``.field`` names it).
        NoMTPHeadError: drafting was asked for on a model without an MTP head.
        SessionClosedError: the model (or draft model) was closed.
        MTPError: llama.cpp could not create a context (e.g. out of memory).
    """
    if not isinstance(allow_request_templates, bool):
        raise InvalidOptionError(
            f"allow_request_templates must be True or False (got {allow_request_templates!r})",
            field="allow_request_templates",
        )
    opts = validate(SessionOptions, {"n_draft": n_draft, "n_ctx": n_ctx, "n_seq": n_seq, **context_options})
    auto = opts.n_draft == "auto"
    n_max = AUTO_MAX_DRAFT if auto else opts.n_draft
    assert isinstance(n_max, int)
    _check_models(model, draft_model, n_max)
    _check_batch(opts, n_max)
    draft_native = draft_model._handle if (draft_model is not None and n_max > 0) else None
    _logging.sync_level()
    try:
        engine = _native.Engine.create(model._handle, draft_native, n_max, auto, _context_options(opts))
    except _native.NativeError as exc:
        err = from_native(exc)
        raise type(err)(_logging.with_errors(str(err), _logging.flush())) from None
    _logging.flush()
    mtp = MTP(model, draft_model if n_max > 0 else None, opts, engine)
    mtp.allow_request_templates = allow_request_templates
    return mtp
