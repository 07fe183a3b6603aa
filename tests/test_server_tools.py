"""Agents against a real ``mtpstream serve`` on 127.0.0.1, with the clients people use:
the ``openai`` package (tools, streamed tool-call deltas, a two-turn tool loop,
reasoning with thinking on and off), langchain-openai ``bind_tools``, a pydantic-ai
agent with one tool, and an openai-agents function tool on its chat-completions model.

The model is the tiny random-weight synthetic one carrying llama.cpp's Qwen3.5 chat
template; forced calls (``tool_choice="required"`` or named) make its tool calls
deterministic, whatever the weights."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

import anyio
import pytest
from pydantic import BaseModel

import real_vocab
from test_server import Server

KEY = "sk-tools"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 10}},
            "required": ["city"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    path = real_vocab.qwen35_tiny_with_template(tmp_path_factory.mktemp("tools"))
    s = Server(path, *real_vocab.thinking_off_server_args(KEY))
    yield s
    assert s.stop() == 0


TIMEOUT = 600  # the first forced call starts the grammar checker; the machine is shared


def _client(server: Server) -> Any:
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=TIMEOUT)


def _async_client(server: Server) -> Any:
    import openai

    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=TIMEOUT)


def test_openai_forced_call_and_two_turn_loop(server: Server) -> None:
    client = _client(server)
    first = client.chat.completions.create(
        model="tiny", messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=200, temperature=0
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    args = json.loads(call.function.arguments)
    assert isinstance(args["city"], str) and len(args["city"]) <= 10
    # the second turn: the assistant's call (arguments as OpenAI sends them, a JSON
    # string) and the tool's result render through the template
    history = [*ASK, choice.message.model_dump(exclude_none=True)]
    history.append({"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"})
    second = client.chat.completions.create(model="tiny", messages=history, tools=[WEATHER], max_tokens=8)
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert second.usage.prompt_tokens > first.usage.prompt_tokens


def test_openai_streamed_tool_call_deltas(server: Server) -> None:
    stream = _client(server).chat.completions.create(
        model="tiny",
        messages=ASK,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=200,
        stream=True,
    )
    chunks = list(stream)
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].index == 0 and deltas[0].id and deltas[0].function.name == "get_weather"
    assert all(d.index == 0 and d.id is None for d in deltas[1:])
    json.loads("".join(d.function.arguments or "" for d in deltas))
    assert not "".join(c.choices[0].delta.content or "" for c in chunks)  # no markup in content
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("thinking", [True, False])
def test_openai_reasoning_on_and_off(server: Server, thinking: bool) -> None:
    client = _client(server)
    extra: dict[str, Any] = {"chat_template_kwargs": {"enable_thinking": thinking}}
    r = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=6, extra_body=extra)
    message = r.choices[0].message.model_dump()
    if thinking:  # the template opened <think>: what the model writes is reasoning
        assert message.get("reasoning_content") and not message.get("content")
    else:
        assert not message.get("reasoning_content") and message["content"]
    assert "<think>" not in (message.get("content") or "") and "</think>" not in (
        message.get("content") or ""
    )
    off = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=6, reasoning_effort="none")
    assert not off.choices[0].message.model_dump().get("reasoning_content")


def test_openai_bad_tool_options_are_400s(server: Server) -> None:
    import openai

    client = _client(server)
    bad = [
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools"),
        ({"extra_body": {"chat_template_kwargs": {"messages": []}}}, "chat_template_kwargs"),
        ({"extra_body": {"reasoning_format": "weird"}}, "reasoning_format"),
    ]
    for kwargs, field in bad:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="tiny", messages=ASK, max_tokens=4, **kwargs)
        assert e.value.body["param"] == field, e.value.body  # type: ignore[index]


def test_langchain_bind_tools(server: Server) -> None:
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: Literal["Paris", "Rome"]) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    llm = ChatOpenAI(
        base_url=server.url + "/v1", api_key=KEY, model="tiny", max_tokens=200, temperature=0, timeout=TIMEOUT
    )
    msg = llm.bind_tools([get_weather], tool_choice="get_weather").invoke("Weather in Paris?")
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "get_weather"
    assert msg.tool_calls[0]["args"]["city"] in ("Paris", "Rome")


class Weather(BaseModel):
    city: Literal["Paris", "Rome"]
    sunny: bool


def test_pydantic_ai_agent_with_one_tool(server: Server) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.exceptions import UsageLimitExceeded
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider
    from pydantic_ai.usage import UsageLimits

    model = OpenAIChatModel("tiny", provider=OpenAIProvider(openai_client=_async_client(server)))
    calls: list[str] = []
    # a structured output: pydantic-ai then sends tool_choice="required", so every
    # reply is a call, of the tool or of its final_result output tool
    agent = Agent(model, output_type=Weather, model_settings={"max_tokens": 200, "temperature": 0})

    @agent.tool_plain
    def get_weather(city: Literal["Paris", "Rome"]) -> str:
        """The weather in a city."""
        calls.append(city)
        return "sunny"

    try:
        result = agent.run_sync("Weather in Paris?", usage_limits=UsageLimits(request_limit=4))
    except UsageLimitExceeded:  # the random model kept calling the tool
        assert calls
    else:
        assert isinstance(result.output, Weather)


def test_openai_agents_function_tool(server: Server) -> None:
    from agents import (
        Agent,
        ModelSettings,
        OpenAIChatCompletionsModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)
    calls: list[str] = []

    @function_tool
    def get_weather(city: Literal["Paris", "Rome"]) -> str:
        """The weather in a city."""
        calls.append(city)
        return "sunny"

    agent = Agent(
        name="weather",
        instructions="Answer with the weather.",
        model=OpenAIChatCompletionsModel(model="tiny", openai_client=_async_client(server)),
        model_settings=ModelSettings(tool_choice="get_weather", max_tokens=200, temperature=0),
        tools=[get_weather],
        reset_tool_choice=True,  # after the call, tool_choice is auto: the model answers
    )

    async def run() -> Any:
        return await Runner.run(agent, "Weather in Paris?", max_turns=3)

    result = anyio.run(run)
    assert calls == ["Paris"] or calls == ["Rome"]
    assert isinstance(result.final_output, str)
