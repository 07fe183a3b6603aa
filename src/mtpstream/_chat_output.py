"""What a chat call makes of the model's text: reasoning, content and tool calls
(:class:`ChatOutput`), and the grammar of its tool calls (:class:`ToolGrammar`), both
decided by the template and the rendered prompt (:func:`chat_plan`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from ._grammar_limits import check_grammar
from ._reasoning import ReasoningSplitter, prompt_reasoning
from ._tool_options import ToolOptions
from .errors import InvalidOptionError
from .tool_calls import ParsedCall, ToolCallFormat, ToolCallSplitter, detect_format, forced_call_grammar

__all__ = ["ChatOutput", "Part", "ToolGrammar", "chat_plan"]

_log = logging.getLogger("mtpstream.chat")

Part = tuple[Literal["content", "reasoning"], str] | ParsedCall
"""A piece of the reply: text of the content or the reasoning, or a whole tool call."""


@dataclass(frozen=True)
class ToolGrammar:
    """The grammar of a call's tool calls: from the first token for a forced call
    (``tool_choice`` ``"required"`` or a function), or lazy for ``"auto"``: the model
    writes freely until it opens the tool-call markup (one of ``triggers``), and the
    grammar holds from there, so the calls it writes always parse."""

    grammar: str
    triggers: tuple[str, ...] = ()


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
) -> tuple[ChatOutput, ToolGrammar | None]:
    """The output splitter of a call and the grammar of its tool calls (None without
    tools or with ``tool_choice="none"``).

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
    output = ChatOutput(reasoning, ToolCallSplitter(fmt, tools.schemas))
    forced = tools.forced
    if forced:
        plan = ToolGrammar(_grammar(fmt, forced, tools.parallel, start))
        check_grammar(plan.grammar, "tools")
        return output, plan
    # "auto": the calls' grammar, from the markup that opens them; a schema it cannot
    # be built from (or over the grammar limits) leaves the calls unconstrained
    try:
        plan = ToolGrammar(
            _grammar(fmt, list(tools.schemas.items()), tools.parallel, None), (fmt.section_start,)
        )
        check_grammar(plan.grammar, "tools")
    except InvalidOptionError as exc:
        _log.info("tool calls unconstrained (tool_choice auto): %s", exc)
        return output, None
    return output, plan


def _grammar(
    fmt: ToolCallFormat, tools: list[tuple[str, dict[str, Any]]], parallel: bool, reasoning: str | None
) -> str:
    try:
        return forced_call_grammar(fmt, tools, parallel=parallel, reasoning=reasoning)
    except InvalidOptionError:
        raise
    except Exception as exc:
        raise InvalidOptionError(
            f"invalid option 'tools': a parameters schema cannot be turned into a grammar "
            f"({type(exc).__name__}: {exc})",
            field="tools",
        ) from None
