"""Tool calls in the formats chat templates teach their models, parsed from the
generated text (whole or streaming) and, for forced calls, constrained by a grammar.

One small parser per template family (:data:`FORMATS`), chosen by
:func:`detect_format` from the template's own text:

* ``qwen-xml``: Qwen3.5/3.6 and Qwen3-Coder (``<tool_call><function=…><parameter=…>``);
* ``hermes``: Hermes, Qwen2.5, Qwen3 (JSON inside ``<tool_call>``);
* ``glm``: GLM-4.5 and later (``<arg_key>``/``<arg_value>``);
* ``deepseek``: DeepSeek V3.1 and later (``<|tool_call_begin|>`` in fullwidth bars).
"""

from __future__ import annotations

from ._base import ParsedCall, ToolCallFormat, ToolParseError
from ._deepseek import DEEPSEEK
from ._glm import GLM
from ._grammar import forced_call_grammar
from ._hermes import HERMES
from ._qwen_xml import QWEN_XML
from ._stream import ToolCallSplitter

__all__ = [
    "DEEPSEEK",
    "FORMATS",
    "GLM",
    "HERMES",
    "QWEN_XML",
    "ParsedCall",
    "ToolCallFormat",
    "ToolCallSplitter",
    "ToolParseError",
    "detect_format",
    "forced_call_grammar",
    "parse_tool_calls",
]

FORMATS = {f.name: f for f in (QWEN_XML, HERMES, GLM, DEEPSEEK)}


def detect_format(template: str | None) -> ToolCallFormat | None:
    """The tool-call format ``template`` (a chat template's source) writes, or None."""
    if not template:
        return None
    if DEEPSEEK.call_start in template:
        return DEEPSEEK
    if "<arg_key>" in template:
        return GLM
    if "<function=" in template and "<parameter=" in template:
        return QWEN_XML
    if "<tool_call>" in template:
        return HERMES
    return None


def parse_tool_calls(
    text: str, fmt: ToolCallFormat, tools: dict[str, dict[str, object]] | None = None
) -> tuple[str, list[ParsedCall]]:
    """The content and the calls in a whole generated ``text`` (``tools``: each tool's
    parameters schema by name, to keep string parameters as text)."""
    splitter = ToolCallSplitter(fmt, tools or {})
    parts = splitter.feed(text) + splitter.finish()
    return (
        "".join(p for p in parts if isinstance(p, str)),
        [p for p in parts if isinstance(p, ParsedCall)],
    )
