"""Tool calls through llama.cpp's real chat templates: an assistant turn with one and
two calls rendered by each family's template parses back to the same calls (a parser
that does not match what the template teaches the model fails here), agent turns
render everywhere, forced-call grammars build and stream splitting holds back markup."""

from __future__ import annotations

import json
from typing import Any

import pytest

import real_vocab
from mtpstream._agent_messages import agent_messages
from mtpstream._chat_output import chat_plan
from mtpstream._reasoning import prompt_reasoning, template_kwargs
from mtpstream._templates import render_template
from mtpstream._tool_options import tool_options
from mtpstream.errors import InvalidOptionError
from mtpstream.tool_calls import DEEPSEEK, GLM, HERMES, QWEN_XML, ParsedCall, detect_format

FAMILIES = {
    "Qwen3.5-4B": QWEN_XML,
    "Qwen3-Coder": QWEN_XML,
    "Qwen-Qwen3-0.6B": HERMES,
    "GLM-4.6": GLM,
    "GLM-4.7-Flash": GLM,
    "deepseek-ai-DeepSeek-V3.1": DEEPSEEK,
}
PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "metric": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "code": {"type": "string"},
    },
    "required": ["city"],
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": PARAMS}},
    {"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}}},
]
CALLS = [
    ParsedCall("get_weather", {"city": "Paris", "days": 3, "metric": True, "tags": ["a b", "c"]}),
    ParsedCall("get_weather", {"city": "New\nYork 12", "days": 1, "code": "if a < b:\n    x = '</p>'"}),
    ParsedCall("noop", {}),
]
END_OF_TURN = ("<|im_end|>", "<|observation|>", "<|user|>", "<\uff5cend\u2581of\u2581sentence\uff5c>")


def _template(name: str) -> str:
    real_vocab.require()
    return (real_vocab.TEMPLATES / f"{name}.jinja").read_text()


def _render(template: str, messages: list[dict[str, Any]], generation_prompt: bool) -> str:
    variables = {
        "messages": agent_messages(messages),
        "tools": TOOLS,
        "bos_token": "",
        "eos_token": "",
        "add_generation_prompt": generation_prompt,
        "enable_thinking": False,  # the generation prompt then ends as the history's turns begin
    }
    return render_template(template, variables, input_chars=10_000)


def _openai_call(i: int, call: ParsedCall, as_text: bool) -> dict[str, Any]:
    args: Any = json.dumps(call.arguments) if as_text else call.arguments
    return {"id": f"call_{i}", "type": "function", "function": {"name": call.name, "arguments": args}}


def _assistant_turn(template: str, calls: list[ParsedCall], as_text: bool) -> tuple[str, str]:
    """The prompt up to the generation prompt and what the template writes for the
    assistant turn after it (as the model, trained on it, would generate it)."""
    user = [{"role": "user", "content": "What is the weather?"}]
    prompt = _render(template, user, True)
    turn = {
        "role": "assistant",
        "content": None,
        "tool_calls": [_openai_call(i, c, as_text) for i, c in enumerate(calls)],
    }
    full = _render(template, [*user, turn], False)
    n = 0
    while n < min(len(prompt), len(full)) and prompt[n] == full[n]:
        n += 1
    reply = full[n:]
    for end in END_OF_TURN:
        reply = reply.split(end)[0]
    return full[:n], reply


def _parse(template: str, prompt: str, reply: str, chunk: int) -> tuple[str, str, list[ParsedCall]]:
    options = tool_options(TOOLS, "auto", None)
    output, plan = chat_plan(template, prompt, options, "parsed")
    fmt = detect_format(template)
    assert plan is not None and fmt is not None and plan.triggers == (fmt.section_start,)
    parts = []
    for i in range(0, len(reply), chunk):
        parts += output.feed(reply[i : i + chunk])
    parts += output.finish()
    content = "".join(p[1] for p in parts if isinstance(p, tuple) and p[0] == "content")
    reasoning = "".join(p[1] for p in parts if isinstance(p, tuple) and p[0] == "reasoning")
    return content, reasoning, [p for p in parts if isinstance(p, ParsedCall)]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_detects_the_family(name: str) -> None:
    assert detect_format(_template(name)) is FAMILIES[name]


@pytest.mark.parametrize("as_text", [True, False], ids=["arguments-json-text", "arguments-object"])
@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("chunk", [1, 7, 10_000])
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_rendered_calls_parse_back(name: str, chunk: int, n: int, as_text: bool) -> None:
    template = _template(name)
    prompt, reply = _assistant_turn(template, CALLS[:n], as_text)
    assert reply.strip(), "the template wrote no assistant turn"
    content, reasoning, calls = _parse(template, prompt, reply, chunk)
    assert calls == CALLS[:n], reply
    assert content == "" and reasoning == "", reply


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_two_turn_agent_loop_renders(name: str) -> None:
    template = _template(name)
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [_openai_call(0, CALLS[0], True)]},
        {"role": "tool", "tool_call_id": "call_0", "content": "sunny, 21 C"},
    ]
    text = _render(template, messages, True)
    assert "sunny, 21 C" in text and "Be brief." in text and "Paris" in text


def test_content_before_a_call_and_markup_never_in_content() -> None:
    template = _template("Qwen3-Coder")
    reply = "Let me check.\n<tool_call>\n<function=noop>\n</function>\n</tool_call>"
    content, _, calls = _parse(template, "", reply, 3)
    assert content == "Let me check." and calls == [ParsedCall("noop", {})]


def test_unparseable_markup_stays_content() -> None:
    template = _template("Qwen-Qwen3-0.6B")
    reply = "<tool_call>\n{not json}\n</tool_call>"
    content, _, calls = _parse(template, "", reply, 4)
    assert calls == [] and content == reply


@pytest.mark.parametrize(
    "name", ["Qwen3.5-4B", "Qwen-Qwen3-0.6B", "GLM-4.7-Flash", "deepseek-ai-DeepSeek-V3.1"]
)
@pytest.mark.parametrize("thinking", [True, False])
def test_reasoning_split(name: str, thinking: bool) -> None:
    template = _template(name)
    variables = {
        "messages": [{"role": "user", "content": "hi"}],
        "bos_token": "",
        "eos_token": "",
        "enable_thinking": thinking,
    }
    prompt = render_template(template, variables, input_chars=10)
    start = prompt_reasoning(template, prompt)
    model_text = "Hello there." if start is None else "\nI should greet.\n</think>\n\nHello there."
    if start == "optional":
        model_text = "<think>\nI should greet.\n</think>\n\nHello there."
    output, _ = chat_plan(template, prompt, None, "parsed")
    parts = [p for i in range(len(model_text)) for p in output.feed(model_text[i])] + output.finish()
    joined = {k: "".join(t for kind, t in parts if kind == k) for k in ("content", "reasoning")}  # type: ignore[misc]
    assert joined["content"] == "Hello there."
    assert joined["reasoning"] == ("" if start is None else "I should greet.")


def test_qwen35_thinking_switch() -> None:
    template = _template("Qwen3.5-4B")
    base = {"messages": [{"role": "user", "content": "hi"}], "bos_token": "", "eos_token": ""}
    on = render_template(template, base, input_chars=10)
    off = render_template(template, {**base, **template_kwargs(None, "none")}, input_chars=10)
    assert prompt_reasoning(template, on) == "open" and prompt_reasoning(template, off) is None
    # an explicit enable_thinking wins over reasoning_effort
    assert template_kwargs({"enable_thinking": True}, "none")["enable_thinking"] is True
    with pytest.raises(InvalidOptionError) as e:
        template_kwargs(None, "extreme")
    assert e.value.field == "reasoning_effort"


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_grammar_builds_within_limits(name: str, choice: Any) -> None:
    template = _template(name)
    options = tool_options(TOOLS, choice, False)
    _, plan = chat_plan(template, "<|im_start|>assistant\n", options, "parsed")
    assert plan is not None and "get_weather" in plan.grammar and plan.triggers == ()


def test_tool_option_errors() -> None:
    with pytest.raises(InvalidOptionError, match="not in tools") as e:
        tool_options(TOOLS, {"type": "function", "function": {"name": "nope"}}, None)
    assert e.value.field == "tool_choice"
    with pytest.raises(InvalidOptionError, match="two tools"):
        tool_options([TOOLS[0], TOOLS[0]], None, None)
    with pytest.raises(InvalidOptionError, match="needs tools"):
        tool_options(None, "required", None)
    with pytest.raises(InvalidOptionError, match="parallel_tool_calls"):
        tool_options(TOOLS, None, "yes")
    with pytest.raises(InvalidOptionError, match=r"function\.name"):
        tool_options([{"type": "function", "function": {"name": "a b"}}], None, None)
    with pytest.raises(InvalidOptionError, match="arguments is not JSON"):
        agent_messages([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}])


def test_no_format_is_a_clear_error() -> None:
    with pytest.raises(InvalidOptionError, match="no format") as e:
        chat_plan("{{ messages }}", "", tool_options(TOOLS, None, None), "parsed")
    assert e.value.field == "tools"
