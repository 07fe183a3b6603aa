"""The OpenAI dialect, shared by :meth:`MTP.chat`, :meth:`MTP.stream_chat` and the
server: the request models and the one mapping of a call's options (OpenAI's names,
``response_format``) onto :class:`GenerationOptions` (the streams of OpenAI-shaped
chunks over an :class:`EventStream` are in ``_chunk_streams``).

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

Chat calls also take ``tools``, ``tool_choice``, ``parallel_tool_calls``
(:mod:`._tool_options`, parsed by :mod:`mtpstream.tool_calls`), ``chat_template_kwargs``,
``reasoning_effort`` and ``reasoning_format`` (:mod:`._reasoning`); :class:`ChatRequest`
keeps them apart from the generation options.

Our own names are accepted too. The default is greedy (``temperature=0``), as
everywhere in mtpstream, not OpenAI's 1.0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from ._chat_output import ToolGrammar
from ._openai_params import Api, include_usage, openai_only
from ._reasoning import reasoning_format, template_kwargs
from ._tool_options import ToolOptions, tool_options
from .chat import check_messages, grammar_for_response_format
from .errors import InvalidOptionError
from .options import GenerationOptions, validate

__all__ = [
    "ChatBody",
    "ChatRequest",
    "CompletionBody",
    "RequestBody",
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


def tool_grammar_options(options: GenerationOptions, plan: ToolGrammar) -> GenerationOptions:
    """``options`` with the grammar of the call's tool calls (refusals name ``tools``).
    A lazy grammar (``tool_choice="auto"``) gives way to a grammar the call brings
    (``grammar`` or ``response_format``), which holds from the first token."""
    if plan.triggers and options.grammar is not None:
        return options
    values = options.model_dump()
    values["grammar"], values["grammar_triggers"] = plan.grammar, plan.triggers
    return validate(GenerationOptions, values).grammar_from("tools")


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
        usage = include_usage(options.pop("stream_options", None), stream=True)
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
            include_usage=usage,
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
