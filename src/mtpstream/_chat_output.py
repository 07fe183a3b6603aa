"""What a chat call makes of the model's text: reasoning, content and tool calls
(:class:`ChatOutput`), and the grammar of a forced tool call, both decided by the
template and the rendered prompt (:func:`chat_plan`)."""

from __future__ import annotations

from typing import Literal

from ._grammar_limits import check_grammar
from ._reasoning import ReasoningSplitter, prompt_reasoning
from ._tool_options import ToolOptions
from .errors import InvalidOptionError
from .tool_calls import ParsedCall, ToolCallSplitter, detect_format, forced_call_grammar

__all__ = ["ChatOutput", "Part", "chat_plan"]

Part = tuple[Literal["content", "reasoning"], str] | ParsedCall
"""A piece of the reply: text of the content or the reasoning, or a whole tool call."""


class ChatOutput:
    """Splits the streamed text: the reasoning first (between the think markers), then
    tool calls out of the content. ``feed`` and ``finish`` return the parts in order."""

    def __init__(self, reasoning: ReasoningSplitter | None, calls: ToolCallSplitter | None) -> None:
        self._reasoning = reasoning
        self._calls = calls

    @property
    def n_calls(self) -> int:
        return 0 if self._calls is None else self._calls.calls

    def feed(self, text: str) -> list[Part]:
        pieces = self._reasoning.feed(text) if self._reasoning is not None else [("content", text)]
        return self._route(pieces)

    def finish(self) -> list[Part]:
        out = self._route(self._reasoning.finish()) if self._reasoning is not None else []
        if self._calls is not None:
            out += [("content", p) if isinstance(p, str) else p for p in self._calls.finish()]
        return out

    def _route(self, pieces: list[tuple[str, str]]) -> list[Part]:
        out: list[Part] = []
        for kind, text in pieces:
            if kind == "reasoning":
                out.append(("reasoning", text))
            elif self._calls is None:
                out.append(("content", text))
            else:
                out += [("content", p) if isinstance(p, str) else p for p in self._calls.feed(text)]
        return out


def chat_plan(
    template: str | None, prompt: str, tools: ToolOptions | None, reasoning_format: str
) -> tuple[ChatOutput, str | None]:
    """The output splitter of a call and the grammar of its forced tool call (None
    unless ``tool_choice`` is ``required`` or a function).

    Raises:
        InvalidOptionError: tools on a template whose tool-call format mtpstream does not
            know, or tool schemas the grammar cannot be built from (``field="tools"``).
    """
    start = prompt_reasoning(template, prompt)
    reasoning = ReasoningSplitter(start) if reasoning_format == "parsed" and start is not None else None
    if tools is None or tools.mode == "none":
        return ChatOutput(reasoning, None), None
    fmt = detect_format(template)
    if fmt is None:
        raise InvalidOptionError(
            "invalid option 'tools': the chat template writes tool calls in no format mtpstream "
            "parses (Qwen3.5/Qwen3-Coder XML, Hermes/Qwen JSON, GLM-4.5+, DeepSeek V3.1+)",
            field="tools",
        )
    calls = ToolCallSplitter(fmt, tools.schemas)
    forced = tools.forced
    if not forced:
        return ChatOutput(reasoning, calls), None
    try:
        grammar = forced_call_grammar(fmt, forced, parallel=tools.parallel, reasoning=start)
    except InvalidOptionError:
        raise
    except Exception as exc:
        raise InvalidOptionError(
            f"invalid option 'tools': a parameters schema cannot be turned into a grammar "
            f"({type(exc).__name__}: {exc})",
            field="tools",
        ) from None
    check_grammar(grammar, "tools")
    return ChatOutput(reasoning, calls), grammar
