"""MTP sessions: :func:`init` and the :class:`MTP` streaming API."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import IO, Any, Literal

import anyio

from . import _bridge, _grammar_check
from ._chat_output import chat_plan
from ._chunk_streams import ChatStream, PreparingChatStream, collect_chat
from ._model_checks import check_models
from ._openai import ChatRequest, generation_options, tool_grammar_options, wait_flag
from ._openai_params import include_usage
from ._stream import EventStream, OpenCalls, TextStream
from .chat import chat_prompt, check_messages, generation_start, render_messages
from .completions import ChatCompletion
from .errors import InvalidOptionError, SessionClosedError
from .events import DoneEvent, EogEvent, TokenEvent
from .model import Model
from .options import GenerationOptions, SessionOptions, check_text, validate
from .stats import MTPStats, SequenceInfo

__all__ = ["MTP", "init"]

# the longest draft n_draft="auto" may choose
AUTO_MAX_DRAFT = 6


class MTP:
    """A speculative-decoding session over one model. Create it with :func:`init`.

    Calls on one session run one at a time, in the order they start iterating;
    several sessions (on one model or several) run concurrently. Use it as a
    (async) context manager or call :meth:`close`.
    """

    def __init__(
        self, model: Model, draft_model: Model | None, options: SessionOptions, engine: _bridge.NativeEngine
    ) -> None:
        self._model = model
        self._model_native = model.native  # keeps the weights alive after model.close()
        self._n_vocab = model.n_vocab
        self._draft_model = draft_model
        self._options = options
        self._engine: _bridge.NativeEngine | None = engine
        self._allow_request_templates = False
        # how many calls started, and the streams that started and have not finished
        self._calls = OpenCalls()
        # the grammars' trial process (started on the first grammar), or None
        self._grammars = _grammar_check.for_session(model.path, options)

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
    def rollback(self) -> Literal["snapshots", "replay"] | None:
        """The rollback in effect for a recurrent or hybrid target (with ``rollback="auto"``,
        the one :func:`init` chose); None when there is nothing to roll back (an
        attention-only target, or ``n_draft=0``)."""
        name = self._live.rollback
        if name == "replay":
            return "replay"
        return "snapshots" if name == "snapshots" else None

    @property
    def rollback_verify_cost_ratio(self) -> float:
        """What ``rollback="auto"`` measured to choose, with several sequences (0.0 when
        it measured nothing): the time of a replay verify (no snapshots, its graph
        rebuilt) over that of a snapshot verify (its graph reused), each of ``n_seq``
        sequences of ``n_draft + 1`` tokens on a scratch context of the target. Replay
        is chosen below 0.95."""
        return float(self._live.verify_cost_ratio)

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
    def context_options(self) -> dict[str, Any]:
        """The contexts' ``n_threads``, ``n_threads_batch``, ``n_batch``, ``n_ubatch``,
        ``flash_attn`` ("on"/"off"/"auto"), ``type_k``, ``type_v``, defaults resolved."""
        return _bridge.context_info(self._live, self._options)

    def sequences(self) -> tuple[SequenceInfo, ...]:
        """Each of the ``n_seq`` sequences as of the engine's last step: busy or idle,
        its tokens, what the prompt cache keeps of it (:class:`SequenceInfo`)."""
        return _bridge.sequences(self._live)

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
    def _live(self) -> _bridge.NativeEngine:
        engine = self._engine
        if engine is None:
            raise SessionClosedError("the session is closed")
        return engine

    # ------------------------------------------------------------------ generation
    def stream_events(self, prompt: str | Sequence[int], *, wait: bool = True, **options: Any) -> EventStream:
        """Generate from ``prompt``, yielding :class:`TokenEvent`, :class:`StatsEvent` and
        exactly one terminal :class:`DoneEvent` or :class:`EogEvent`.

        ``prompt`` is text (tokenized with special tokens parsed) or token ids. Options:
        ``max_tokens, temp, top_k, top_p, min_p, seed, penalty_last_n, penalty_repeat,
        penalty_freq, penalty_present, logit_bias, logprobs, grammar, response_format,
        stop, emit_stats_every, timeout, verify``. ``logit_bias`` maps token ids to a bias
        in [-100, 100] added to the target's logits; ``logprobs=n`` (0-20) puts on every
        :class:`TokenEvent` its token's log-probability under the target and the n most
        likely tokens (:class:`TokenLogprob`), computed only when asked.
        ``verify="rejection"`` verifies sampled drafts by rejection sampling at
        ``temp > 0`` (the output keeps plain sampling's distribution); the default
        ``"match"`` keeps a greedy draft when the target samples the same token.
        ``response_format`` is OpenAI's (``{"type": "json_object"}`` or
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
            GrammarCostError: (a GenerationError) a step of the call's grammar ran over
                ``grammar_step_budget`` or never finished (the grammar host was stopped).
            SessionClosedError: the session was closed.
            TimeoutError: no event within ``timeout`` seconds.
        """
        wait_flag(wait)
        opts = generation_options(options)
        return self._events(self._prompt_tokens(prompt), opts, wait)

    def _events(self, tokens: list[int], opts: GenerationOptions, wait: bool) -> EventStream:
        return EventStream(
            self,
            lambda: self._live,
            self._calls,
            tokens,
            opts,
            wait,
            self._grammars,
            self._options.grammar_step_budget,
        )

    def stream(self, prompt: str | Sequence[int], **options: Any) -> TextStream:
        """Generate from ``prompt``, yielding non-empty pieces of text.

        Same options as :meth:`stream_events`; leaving the loop early cancels the
        generation at once (the iterator is a plain object, not an async
        generator, so nothing waits for garbage collection).
        """
        return TextStream(self.stream_events(prompt, **options))

    async def generate(self, prompt: str | Sequence[int], **options: Any) -> str:
        """Generate from ``prompt`` and return the whole text."""
        parts: list[str] = []
        events = self.stream_events(prompt, **options)
        async with contextlib.aclosing(events):
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
            tokens = _bridge.tokenize(self._model_native, prompt, not self._starts_with_bos(prompt))
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
    def render_chat(
        self, messages: Sequence[Mapping[str, Any]], chat_template: str | None = None, **options: Any
    ) -> str:
        """The prompt text :meth:`chat` generates from: ``messages`` rendered by the
        model's ``tokenizer.chat_template`` (or ``chat_template``, when
        :attr:`allow_request_templates`) with the generation prompt and the ``options``
        that reach the template (``tools``, ``tool_choice``, ``chat_template_kwargs``,
        ``reasoning_effort``, as :meth:`chat` takes them). Blocking (the template renders
        within time and size limits); :meth:`chat` renders in a worker thread.

        Raises:
            InvalidOptionError: no template or a template that is not allowed
                (``field="chat_template"``), malformed messages or options, or a
                template that fails to render or goes over a limit.
        """
        template, request = self._chat_template(chat_template), ChatRequest.of(messages, options)
        bos, eos = self._bos_eos_text()
        return render_messages(request.messages, template, bos, eos, request.template_vars())

    def tokenize_chat(
        self, messages: Sequence[Mapping[str, Any]], chat_template: str | None = None, **options: Any
    ) -> list[int]:
        """The prompt token ids :meth:`chat` generates from: :meth:`render_chat`'s text
        tokenized so that text inside a message never becomes a special token (a
        message's ``<|im_start|>`` stays plain text) while the template's own
        special-token text does. ``options``: :meth:`chat`'s, checked as it checks them;
        those that reach the template (``tools``, ``tool_choice``,
        ``chat_template_kwargs``, ``reasoning_effort``) change the prompt as in
        :meth:`chat`. Blocking, like :meth:`render_chat`.

        Raises:
            InvalidOptionError: as :meth:`render_chat`; special-token text in a message
                that the template moves or cuts (``field="messages"``); a bad option.
        """
        template = self._chat_template(chat_template)
        if not options:
            return self._chat_tokens(check_messages(messages), template)
        request = ChatRequest.of(messages, options)
        return self._chat_prompt(request.messages, template, request.template_vars())[1]

    def _bos_eos_text(self) -> tuple[str, str]:
        model = self._model
        bos = model.token_text(model.bos) if model.bos is not None else ""
        eos = model.token_text(model.eos) if model.eos is not None else ""
        return bos, eos

    def _chat_template(self, chat_template: object) -> str | None:
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
        return self._chat_prompt(messages, template)[1]

    def _chat_prompt(
        self, messages: list[dict[str, Any]], template: str | None, extra: Mapping[str, Any] | None = None
    ) -> tuple[str, list[int]]:
        native = self._model_native
        bos, eos = self._bos_eos_text()
        text, tokens = chat_prompt(messages, template, bos, eos, native.tokenize, native.token_text, extra)
        try:
            check_text(text, "prompt")
        except ValueError as exc:
            raise InvalidOptionError(str(exc), field="prompt") from None
        if not tokens:
            raise InvalidOptionError("prompt is empty", field="prompt")
        return text, tokens

    async def chat(
        self, messages: Sequence[Mapping[str, Any]], *, chat_template: str | None = None, **options: Any
    ) -> ChatCompletion:
        """Answer a conversation: the assistant's next message as an OpenAI-shaped
        :class:`ChatCompletion` (identical to :meth:`generate` on
        :meth:`render_chat`'s prompt; the end-of-turn token ends it).

        ``model`` (OpenAI's request field) only sets the ``model`` the result carries
        (default :attr:`model_name`). Options take OpenAI's names (``temperature, top_p, max_tokens`` or
        ``max_completion_tokens, stop, seed, frequency_penalty, presence_penalty,
        response_format, logit_bias, logprobs`` (true or false) ``, top_logprobs``;
        ``n`` must be 1) and llama-cpp-python's extras (``top_k, min_p,
        repeat_penalty, grammar``), besides mtpstream's own (see
        :mod:`mtpstream._openai`). ``user, store, metadata, service_tier,
        prompt_cache_key, safety_identifier`` and ``modalities=["text"]`` are accepted
        and change nothing locally; ``stream_options`` is refused (nothing streams).
        With ``logprobs=True`` the choice's ``logprobs.content`` has one entry per
        token of the content: its log-probability under the target model (the
        log-softmax of its raw logits, whatever drafted the token) and
        ``top_logprobs`` alternatives. Agents: ``tools``, ``tool_choice``,
        ``parallel_tool_calls`` (the reply's ``message.tool_calls``), and for reasoning
        ``chat_template_kwargs``, ``reasoning_effort``, ``reasoning_format``
        (``message.reasoning_content``); see the README's "Tools and reasoning".

        Raises:
            InvalidOptionError: bad messages, template or option (``.field`` names it),
                tools on a template whose tool-call format is not known (``tools``).
            ContextOverflowError, GenerationError, SessionBusyError, SessionClosedError,
            TimeoutError: as :meth:`stream_events`.
        """
        include_usage(options.get("stream_options"), stream=False)  # refused: nothing streams
        return await collect_chat(self.stream_chat(messages, chat_template=chat_template, **options))

    def stream_chat(
        self, messages: Sequence[Mapping[str, Any]], *, chat_template: str | None = None, **options: Any
    ) -> PreparingChatStream:
        """:meth:`chat` as a stream of :class:`ChatCompletionChunk`: the first delta
        carries ``role="assistant"``, exactly one chunk (the last) the
        ``finish_reason``, ``usage`` and ``mtp``; with ``stream_options`` (OpenAI's
        way) the finish chunk carries no ``usage``, and ``{"include_usage": true}``
        adds a last chunk with ``choices=[]`` and the ``usage``. Also an async context manager;
        leaving early cancels the generation at once. Messages and options are
        checked here; the template renders (and the prompt is tokenized) in a worker
        thread when iteration starts, so errors of those come from the first
        ``__anext__``.

        Raises: as :meth:`chat`.
        """
        template = self._chat_template(chat_template)
        request = ChatRequest.of(messages, options)
        name = request.model or self.model_name

        def prepare() -> ChatStream:
            text, tokens = self._chat_prompt(request.messages, template, request.template_vars())
            output, plan = chat_plan(template, text, request.tools, request.reasoning_format)
            options = request.options if plan is None else tool_grammar_options(request.options, plan)
            if options.cache_prompt:  # a checkpoint the next turn can restart from
                bos, eos = self._bos_eos_text()
                extra = request.template_vars()
                tokenize = self._model_native.tokenize
                options.keep_checkpoint_at(
                    generation_start(request.messages, template, bos, eos, tokenize, tokens, extra)
                )
            return ChatStream(self._events(tokens, options, request.wait), name, output)

        return PreparingChatStream(prepare, request.include_usage)

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
        return _bridge.stats(self._live, self._calls.started)

    def print_stats(self, file: IO[str] | None = None) -> None:
        """Print an upstream-style summary of :meth:`stats` (to stderr by default)."""
        self.stats().print(file)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Cancel any running or queued call, wait for the worker to let go, free the contexts."""
        engine = self._engine
        if engine is None:
            return
        _bridge.close_engine(engine)
        self._engine = None
        if self._grammars is not None:
            self._grammars.close()

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


def native_engine(mtp: MTP) -> _bridge.NativeEngine:
    """The live native engine behind ``mtp``, for mtpstream's own modules only (the
    test-only fault injection of :mod:`mtpstream.testing` sets its ``fault``); raises
    :class:`SessionClosedError` once the session is closed."""
    return mtp._live


def _no_running_loop(method: str) -> None:
    try:
        import sniffio

        sniffio.current_async_library()
    except Exception:
        return
    raise RuntimeError(
        f"{method}_sync() was called inside a running event loop; use 'await mtp.{method}(...)'"
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
    drops rejected drafts, whose state cannot be cut back. ``"auto"`` (the default)
    picks one of the two below per session (:attr:`MTP.rollback`): snapshots with one
    sequence; with several, :func:`init` times both kinds of verify on two small
    scratch contexts (a few decodes) and takes replay only when its verify is clearly
    cheaper (:attr:`MTP.rollback_verify_cost_ratio`): on a model whose decodes cost
    their arithmetic the snapshot writes grow with the sequences, while on one whose
    decodes cost their per-iteration overheads a replayed verify, whose batch shape
    changes, makes llama.cpp rebuild its graph every time.

    ``"replay"`` shares each sequence's state with a spare sequence id before a verify
    and, after a rejection, restores it and decodes the accepted tokens again in front
    of the next verify (``stats().replayed_tokens``), in place of as many drafts; ``"snapshots"``
    has llama.cpp keep the state after each of a verify's last ``n_draft + 1`` tokens,
    which every verify pays for (README, "Performance") and which takes
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
    check_models(model, draft_model, n_max)
    _bridge.check_batch(opts, n_max)
    draft_native = draft_model.native if (draft_model is not None and n_max > 0) else None
    grammar_host = _grammar_check.host_command(model.path, opts)
    engine = _bridge.create_engine(model.native, draft_native, n_max, auto, opts, grammar_host)
    mtp = MTP(model, draft_model if n_max > 0 else None, opts, engine)
    mtp.allow_request_templates = allow_request_templates
    return mtp
