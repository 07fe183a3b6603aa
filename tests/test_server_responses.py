"""``POST /v1/responses`` (OpenAI's Responses API) on a real ``mtpstream serve`` on
127.0.0.1, driven with the ``openai`` package (``responses.create``, its stream helper,
``responses.parse``) and the openai-agents SDK on its default (Responses) model.

The model is the tiny random-weight synthetic one carrying llama.cpp's Qwen3.5 chat
template (as in ``test_server_tools``); at temperature 0 a
Responses call must give what the same conversation gives on ``/v1/chat/completions``:
the same prompt tokens (the translation renders the same prompt) and the same text."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx
import pytest
from pydantic import BaseModel

import real_vocab
from test_server import Server

KEY = "sk-responses"
TIMEOUT = 600  # the first forced call starts the grammar checker; the machine is shared
QUESTION = "What is the weather in Paris?"
ASK = [{"role": "user", "content": QUESTION}]
PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 10}},
    "required": ["city"],
}
CHAT_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The weather in a city.", "parameters": PARAMETERS},
}
TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": PARAMETERS,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    path = real_vocab.qwen35_tiny_with_template(tmp_path_factory.mktemp("responses"))
    s = Server(path, *real_vocab.thinking_off_server_args(KEY))
    yield s
    assert s.stop() == 0


def _client(server: Server) -> Any:
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=TIMEOUT)


def _async_client(server: Server) -> Any:
    import openai

    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=TIMEOUT)


def _post(server: Server, body: dict[str, Any], path: str = "/v1/responses") -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEY}"}
    return httpx.post(server.url + path, json=body, headers=headers, timeout=TIMEOUT)


def _events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """The (event name, data) pairs of a server-sent event stream."""
    out = []
    for block in response.text.split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        data = json.loads(lines["data"])
        assert data["type"] == lines["event"]
        _EVENT.validate_python(data)  # the SDK's own types, validated (it only constructs)
        out.append((lines["event"], data))
    return out


def _event_adapter() -> Any:
    from openai.types.responses import ResponseStreamEvent
    from pydantic import TypeAdapter

    return TypeAdapter(ResponseStreamEvent)


_EVENT = _event_adapter()


# ------------------------------------------------------------------ text
def test_plain_equals_chat_completions(server: Server) -> None:
    client = _client(server)
    r = client.responses.create(model="tiny", input=QUESTION, max_output_tokens=12, temperature=0)
    chat = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=12, temperature=0)
    assert r.object == "response" and r.id.startswith("resp_") and r.model == "tiny"
    assert r.output_text == chat.choices[0].message.content and r.output_text
    assert r.usage.input_tokens == chat.usage.prompt_tokens
    assert r.usage.output_tokens == chat.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.input_tokens + 12
    assert r.usage.input_tokens_details.cached_tokens == 0  # not reported without the flag
    assert r.store is False and r.temperature == 0
    # max_output_tokens cut it: incomplete, with the reason
    assert chat.choices[0].finish_reason == "length"
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    (item,) = r.output
    assert item.type == "message" and item.role == "assistant" and item.status == "incomplete"


def test_instructions_and_message_items_equal_chat(server: Server) -> None:
    client = _client(server)
    items = [
        {"role": "developer", "content": "Be brief."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": QUESTION}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Sunny.", "annotations": []}]},
        {"role": "user", "content": "And in Rome?"},
    ]
    r = client.responses.create(
        model="tiny", instructions="You are a weather bot.", input=items, max_output_tokens=8
    )
    messages = [
        {"role": "system", "content": "You are a weather bot.\n\nBe brief."},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "Sunny."},
        {"role": "user", "content": "And in Rome?"},
    ]
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8)
    assert r.instructions == "You are a weather bot."
    assert r.usage.input_tokens == chat.usage.prompt_tokens
    assert r.output_text == chat.choices[0].message.content


def test_streamed_deltas_join_to_the_text(server: Server) -> None:
    body = {"model": "tiny", "input": QUESTION, "max_output_tokens": 10, "stream": True}
    whole = _client(server).responses.create(model="tiny", input=QUESTION, max_output_tokens=10)
    with httpx.stream(
        "POST",
        server.url + "/v1/responses",
        json=body,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=TIMEOUT,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        response.read()
    events = _events(response)
    names = [name for name, _ in events]
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    assert names[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert names[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    text = "".join(d["delta"] for name, d in events if name == "response.output_text.delta")
    assert text == whole.output_text
    final = events[-1][1]["response"]
    assert final["status"] == "incomplete" and final["output"][0]["content"][0]["text"] == text
    assert final["usage"]["output_tokens"] == 10
    assert events[0][1]["response"]["status"] == "in_progress"


class City(BaseModel):
    city: Literal["Paris", "Rome"]


def test_json_schema_through_the_stream_helper_and_parse(server: Server) -> None:
    client = _client(server)
    with client.responses.stream(
        model="tiny", input=QUESTION, text_format=City, max_output_tokens=100
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.status == "completed"
    assert isinstance(final.output_parsed, City)
    parsed = client.responses.parse(model="tiny", input=QUESTION, text_format=City, max_output_tokens=100)
    assert parsed.output_parsed == final.output_parsed
    plain = client.responses.create(
        model="tiny", input=QUESTION, max_output_tokens=8, text={"format": {"type": "json_object"}}
    )
    assert plain.output_text.lstrip().startswith("{") and plain.text.format.type == "json_object"


# ------------------------------------------------------------------ tools
def test_function_call_and_second_turn_equal_chat(server: Server) -> None:
    client = _client(server)
    first = client.responses.create(
        model="tiny",
        input=QUESTION,
        tools=[TOOL],
        tool_choice="required",
        max_output_tokens=200,
        temperature=0,
    )
    assert first.status == "completed"
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
    args = json.loads(call.arguments)
    assert isinstance(args["city"], str) and len(args["city"]) <= 10
    # the agent loop's second turn: the call as the client got it, then its output
    turn = [{"role": "user", "content": QUESTION}, call.model_dump(exclude_none=True)]
    turn.append({"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"})
    second = client.responses.create(model="tiny", input=turn, tools=[TOOL], max_output_tokens=8)
    # the same conversation on chat completions renders the same prompt and answer
    assistant = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call.call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
        ],
    }
    history = [*ASK, assistant, {"role": "tool", "tool_call_id": call.call_id, "content": "sunny, 21 C"}]
    chat = client.chat.completions.create(model="tiny", messages=history, tools=[CHAT_TOOL], max_tokens=8)
    assert second.usage.input_tokens == chat.usage.prompt_tokens > first.usage.input_tokens
    assert second.output_text == (chat.choices[0].message.content or "")


def test_streamed_function_call(server: Server) -> None:
    body = {
        "model": "tiny",
        "input": QUESTION,
        "tools": [TOOL],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "max_output_tokens": 200,
        "stream": True,
    }
    events = _events(_post(server, body))
    names = [name for name, _ in events]
    assert "response.output_text.delta" not in names  # no markup as text
    added = next(d for name, d in events if name == "response.output_item.added")
    assert added["item"]["type"] == "function_call" and added["item"]["name"] == "get_weather"
    deltas = "".join(d["delta"] for name, d in events if name == "response.function_call_arguments.delta")
    done = next(d for name, d in events if name == "response.function_call_arguments.done")
    assert done["arguments"] == deltas and json.loads(deltas)["city"]
    item = next(d for name, d in events if name == "response.output_item.done")["item"]
    assert (
        item["status"] == "completed"
        and item["arguments"] == deltas
        and item["call_id"] == added["item"]["call_id"]
    )
    assert names[-1] == "response.completed"
    assert events[-1][1]["response"]["output"] == [item]


# ------------------------------------------------------------------ reasoning
def test_reasoning_items(server: Server) -> None:
    client = _client(server)
    on = {"chat_template_kwargs": {"enable_thinking": True}}
    r = client.responses.create(model="tiny", input=QUESTION, max_output_tokens=6, extra_body=on)
    (item,) = r.output  # the template opened <think>: all the model writes is reasoning
    assert item.type == "reasoning" and item.content[0].type == "reasoning_text" and item.content[0].text
    assert "<think>" not in item.content[0].text
    assert 0 < r.usage.output_tokens_details.reasoning_tokens <= 6
    events = _events(_post(server, {"input": QUESTION, "max_output_tokens": 6, "stream": True, **on}))
    text = "".join(d["delta"] for name, d in events if name == "response.reasoning_text.delta")
    assert text == item.content[0].text
    off = client.responses.create(
        model="tiny", input=QUESTION, max_output_tokens=6, reasoning={"effort": "none"}
    )
    assert [i.type for i in off.output] == ["message"] and off.reasoning.effort == "none"


def test_objects_validate_against_the_sdk_types(server: Server) -> None:
    from openai.types.responses import Response

    thinking = {"chat_template_kwargs": {"enable_thinking": True}}
    bodies = [
        {"input": QUESTION, "max_output_tokens": 4, "instructions": "Be brief.", "metadata": {"a": "b"}},
        {"input": QUESTION, "max_output_tokens": 4, **thinking},
        {"input": QUESTION, "tools": [TOOL], "tool_choice": "required", "max_output_tokens": 200},
        {"input": QUESTION, "text": {"format": {"type": "json_schema", "name": "c", "schema": PARAMETERS}}},
    ]
    kinds = []
    for body in bodies:
        response = Response.model_validate(_post(server, {"model": "tiny", **body}).json())
        kinds += [item.type for item in response.output]
        events = _events(_post(server, {"model": "tiny", **body, "stream": True}))
        final = Response.model_validate(events[-1][1]["response"])
        assert [item.type for item in final.output] == [item.type for item in response.output]
        assert final.usage == response.usage
    assert {"message", "reasoning", "function_call"} <= set(kinds)


def test_failure_events_validate_against_the_sdk_types() -> None:
    from openai.types.responses import ResponseErrorEvent, ResponseFailedEvent

    from mtpstream._responses_output import ResponseEvents, Shape
    from mtpstream.completions import ChatCompletionChunk

    events = ResponseEvents(Shape({"input": "x"}, "tiny", False), len)
    first = {"id": "c", "created": 0, "model": "tiny", "choices": [{"delta": {"role": "assistant"}}]}
    frames = events.frames(ChatCompletionChunk.model_validate(first))
    body = {
        "error": {"message": "the server is shutting down", "type": "server_error", "code": "shutting_down"}
    }
    frames += events.error(503, body)
    parsed = [json.loads(frame.split("data: ", 1)[1]) for frame in frames]
    error, failed = (
        ResponseErrorEvent.model_validate(parsed[-2]),
        ResponseFailedEvent.model_validate(parsed[-1]),
    )
    assert error.code == "shutting_down" and failed.response.status == "failed"
    assert failed.response.error is not None and failed.response.error.code == "server_error"
    assert [p["sequence_number"] for p in parsed] == [0, 1, 2, 3]


ENDLESS = "root ::= [a-z ] root"  # our grammar option: the generation runs until the limit


def test_a_client_that_disconnects_cancels_its_generation(server: Server) -> None:
    body = {"input": QUESTION, "max_output_tokens": 3000, "stream": True, "grammar": ENDLESS}
    before = server.metrics()["mtpstream_tokens_total"]
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", server.url + "/v1/responses", json=body, headers=headers, timeout=60) as r:
        assert r.status_code == 200
        for i, _line in enumerate(r.iter_lines()):
            if i > 20:
                break
    deadline = time.monotonic() + 30
    while server.metrics()["mtpstream_active_sequences"] > 0:
        assert time.monotonic() < deadline, "the generation went on after the client left"
        time.sleep(0.05)
    assert server.metrics()["mtpstream_tokens_total"] - before < 3000


def test_sigterm_ends_a_stream_with_error_and_response_failed(model_paths: dict[str, Path]) -> None:
    flags = ("--n-ctx", "30000", "--shutdown-grace", "0.5", "--api-key", KEY)
    s = Server(model_paths["qwen35-oracle"], *flags)
    body = {"input": "we walked", "max_output_tokens": 29_000, "stream": True, "grammar": ENDLESS}
    blocks: list[str] = []
    try:
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.stream("POST", s.url + "/v1/responses", json=body, headers=headers, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    blocks.append(line[6:])
                if len(blocks) == 8:
                    s.proc.send_signal(signal.SIGTERM)
    finally:
        code = s.stop()
    assert code == 0
    events = [json.loads(b) for b in blocks]
    for event in events:
        _EVENT.validate_python(event)
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"], events[-3:]
    assert events[-2]["code"] == "shutting_down"
    assert events[-1]["response"]["status"] == "failed"
    assert not any(e["type"] in ("response.completed", "response.incomplete") for e in events)


# ------------------------------------------------------------------ refusals
def test_stateless(server: Server) -> None:
    import openai

    client = _client(server)
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="tiny", input=QUESTION, previous_response_id="resp_123")
    assert e.value.body["param"] == "previous_response_id" and "stateless" in e.value.body["message"]
    with pytest.raises(openai.NotFoundError) as nf:
        client.responses.retrieve("resp_123")
    assert "stores no responses" in nf.value.body["message"]
    r = client.responses.create(model="tiny", input=QUESTION, max_output_tokens=2, store=True)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


BAD: list[tuple[dict[str, Any], str]] = [
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input"),
    ({"input": [{"role": "robot", "content": "hi"}]}, "input"),
    ({"input": 5}, "input"),
    ({"input": []}, "input"),
    ({"messages": ASK}, "messages"),
    ({"tools": [{"type": "web_search"}]}, "tools"),
    ({"tools": [{"type": "function", "name": "has space"}]}, "tools"),
    ({"tools": [TOOL], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
    ({"tool_choice": {"type": "file_search"}}, "tool_choice"),
    ({"text": {"format": {"type": "xml"}}}, "text.format"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format"),
    ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ({"max_output_tokens": -1}, "max_output_tokens"),
    ({"temperature": -1}, "temperature"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"background": True}, "background"),
    ({"instructions": ["not", "text"]}, "instructions"),
    ({"include": ["message.output_text.logprobs"]}, "include"),
    ({"stream": "yes"}, "stream"),
    ({"input": [{"role": "user", "content": None}]}, "input"),
    ({"input": ["just text"]}, "input"),
    ({"input": [*ASK, {"type": "function_call_output", "call_id": "c", "output": 5}]}, "input"),
    (
        {"input": [*ASK, {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{not json"}]},
        "input",
    ),
    ({"input": [{"type": "computer_call_output", "call_id": "c"}]}, "input"),
    ({"tools": [5]}, "tools"),
    ({"text": {"format": "json"}}, "text.format"),
    (
        {"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}, "x": 1}},
        "text",
    ),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"stream_options": {"include_obfuscation": False}}, "stream_options"),
    ({"max_tool_calls": 3}, "max_tool_calls"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"max_output_tokens": "many"}, "max_output_tokens"),
    ({"metadata": {"a": 1}}, "metadata"),
    ({"bogus": 1}, "bogus"),
]


@pytest.mark.parametrize(("extra", "param"), BAD, ids=[p + str(i) for i, (_, p) in enumerate(BAD)])
def test_bad_inputs_are_400s_naming_the_field(server: Server, extra: dict[str, Any], param: str) -> None:
    body = {"model": "tiny", "input": QUESTION, "max_output_tokens": 4, **extra}
    response = _post(server, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error


def test_counted_in_metrics(server: Server) -> None:
    assert _post(server, {"input": QUESTION, "max_output_tokens": 1}).status_code == 200
    text = httpx.get(server.url + "/metrics", timeout=10).text
    assert 'mtpstream_requests_total{endpoint="/v1/responses",status="200"}' in text


# ------------------------------------------------------------------ openai-agents
@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_streamed"])
def test_openai_agents_default_model_with_a_function_tool(server: Server, streamed: bool) -> None:
    from agents import Agent, ModelSettings, RunConfig, Runner, function_tool
    from agents.models.openai_provider import OpenAIProvider
    from agents.models.openai_responses import OpenAIResponsesModel

    calls: list[str] = []

    @function_tool
    def get_weather(city: Literal["Paris", "Rome"]) -> str:
        """The weather in a city."""
        calls.append(city)
        return "sunny"

    provider = OpenAIProvider(openai_client=_async_client(server))
    assert isinstance(provider.get_model("tiny"), OpenAIResponsesModel)  # the SDK's default
    agent = Agent(
        name="weather",
        instructions="Answer with the weather.",
        model="tiny",
        model_settings=ModelSettings(tool_choice="get_weather", max_tokens=200, temperature=0),
        tools=[get_weather],
        reset_tool_choice=True,  # after the call, tool_choice is auto: the model answers
        # a structured answer (text.format json_schema): the random model's second turn
        # then ends (``completed``) instead of running into max_output_tokens, which the
        # SDK raises on as an incomplete response
        output_type=City,
    )
    config = RunConfig(model_provider=provider, tracing_disabled=True)

    async def run() -> Any:
        if not streamed:
            return await Runner.run(agent, "Weather in Paris?", max_turns=3, run_config=config)
        result = Runner.run_streamed(agent, "Weather in Paris?", max_turns=3, run_config=config)
        kinds = {event.type async for event in result.stream_events()}
        assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
        return result

    result = anyio.run(run)
    assert calls == ["Paris"] or calls == ["Rome"]
    assert isinstance(result.final_output, City)
    kinds = [item.type for item in result.new_items]
    assert kinds == ["tool_call_item", "tool_call_output_item", "message_output_item"]
