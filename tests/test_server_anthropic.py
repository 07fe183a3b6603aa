"""Anthropic's Messages API (``POST /v1/messages``, ``/v1/messages/count_tokens``)
against a real ``mtpstream serve`` on 127.0.0.1, with the real ``anthropic`` package:
plain and streamed messages (the same text as Chat Completions at temperature 0),
``system``, ``stop_sequences``, ``max_tokens``, a tool_use / tool_result loop, thinking
blocks from the reasoning split, the key in ``x-api-key``, and Anthropic-shaped errors.

The model is the tiny random-weight synthetic one carrying llama.cpp's Qwen3.5 chat
template (as in tests/test_server_tools.py): forced tool choices make its calls
deterministic, and with thinking on it never closes its ``<think>``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import real_vocab
from mtpstream._server_anthropic import MessageEvents
from test_server import Server

anthropic = pytest.importorskip("anthropic")

KEY = "sk-anthropic"
TIMEOUT = 600  # the first forced call starts the grammar checker; the machine is shared
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 10}},
        "required": ["city"],
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return real_vocab.qwen35_tiny_with_template(tmp_path_factory.mktemp("anthropic"))


def _serve(model: Path, *extra: str) -> Server:
    off = json.dumps({"enable_thinking": False})  # thinking on per request (`thinking`)
    return Server(model, "--api-key", KEY, "--model-alias", "tiny", "--chat-template-kwargs", off, *extra)


@pytest.fixture(scope="module")
def server(model: Path) -> Iterator[Server]:
    s = _serve(model, "--n-ctx", "4096")
    yield s
    assert s.stop() == 0


def _client(server: Server, key: str = KEY) -> Any:
    return anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0, timeout=TIMEOUT)


def _chat_text(server: Server, **options: Any) -> Any:
    r = (
        server.client(KEY)
        .with_options(timeout=TIMEOUT)
        .chat.completions.create(model="tiny", messages=ASK, temperature=0, **options)
    )
    return r.choices[0]


def _raw(server: Server, path: str, body: Any, key: str = KEY) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers={"x-api-key": key}, timeout=TIMEOUT)


def test_create_is_the_chat_reply(server: Server) -> None:
    msg = _client(server).messages.create(
        model="tiny", max_tokens=8, messages=ASK, extra_body={"temperature": 0, "top_k": 1}
    )
    assert msg.type == "message" and msg.role == "assistant" and msg.id.startswith("msg_")
    assert msg.model == "tiny"
    (block,) = msg.content
    assert block.type == "text" and block.text == _chat_text(server, max_tokens=8).message.content
    assert msg.stop_reason == "max_tokens" and msg.stop_sequence is None
    assert msg.usage.output_tokens == 8 and msg.usage.input_tokens > 0


def test_stream_joins_to_the_same_text(server: Server) -> None:
    whole = _client(server).messages.create(model="tiny", max_tokens=8, messages=ASK)
    with _client(server).messages.stream(model="tiny", max_tokens=8, messages=ASK) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text
    assert [b.type for b in final.content] == ["text"] and final.content[0].text == text
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 8
    assert final.usage.input_tokens == whole.usage.input_tokens


def test_stream_event_order(server: Server) -> None:
    body = {"model": "tiny", "max_tokens": 4, "messages": ASK, "stream": True}
    with httpx.stream(
        "POST", server.url + "/v1/messages", json=body, headers={"x-api-key": KEY}, timeout=TIMEOUT
    ) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    data = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]
    assert [d["type"] for d in data] == names
    assert names[:2] == ["message_start", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[2:-3]) == {"content_block_delta"}
    assert data[-2]["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert data[-2]["usage"]["output_tokens"] == 4


def test_system_as_string_or_blocks(server: Server) -> None:
    client = _client(server)
    plain = client.messages.create(model="tiny", max_tokens=2, messages=ASK)
    system = "You answer in one word."
    as_text = client.messages.create(model="tiny", max_tokens=2, messages=ASK, system=system)
    blocks = [{"type": "text", "text": "You answer "}, {"type": "text", "text": "in one word."}]
    as_blocks = client.messages.create(model="tiny", max_tokens=2, messages=ASK, system=blocks)
    assert as_text.usage.input_tokens > plain.usage.input_tokens
    assert as_blocks.usage.input_tokens == as_text.usage.input_tokens
    assert as_blocks.content == as_text.content
    counted = client.messages.count_tokens(model="tiny", messages=ASK, system=system)
    assert counted.input_tokens == as_text.usage.input_tokens


def test_stop_sequences(server: Server) -> None:
    text = _chat_text(server, max_tokens=24).message.content
    words = [w for w in text.split() if len(w) >= 2]
    assert len(words) >= 2, text
    first, second = words[len(words) // 2], words[-1]
    before = text[: text.index(first)]
    client = _client(server)
    msg = client.messages.create(model="tiny", max_tokens=24, messages=ASK, stop_sequences=[first])
    assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == first
    assert "".join(b.text for b in msg.content) == before
    # the stop string that matched is named, not the first of the list
    msg = client.messages.create(
        model="tiny", max_tokens=24, messages=ASK, stop_sequences=["\x00never\x00", first]
    )
    assert msg.stop_sequence == first
    with client.messages.stream(model="tiny", max_tokens=24, messages=ASK, stop_sequences=[first]) as s:
        assert "".join(s.text_stream) == before
        final = s.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == first
    # Chat Completions names it too (vLLM's stop_reason)
    choice = _chat_text(server, max_tokens=24, stop=["\x00never\x00", second])
    assert choice.finish_reason == "stop" and choice.model_extra["stop_reason"] == second


def test_output_config_format(server: Server) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    config: Any = {"format": {"type": "json_schema", "schema": schema}, "effort": "low"}
    msg = _client(server).messages.create(model="tiny", max_tokens=64, messages=ASK, output_config=config)
    assert msg.stop_reason == "end_turn"
    assert isinstance(json.loads(msg.content[0].text)["ok"], bool)


def test_max_tokens(server: Server) -> None:
    msg = _client(server).messages.create(model="tiny", max_tokens=3, messages=ASK)
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 3


def test_tool_use_then_tool_result(server: Server) -> None:
    client = _client(server)
    first = client.messages.create(
        model="tiny", max_tokens=200, messages=ASK, tools=[WEATHER], tool_choice={"type": "any"}
    )
    assert first.stop_reason == "tool_use"
    (call,) = [b for b in first.content if b.type == "tool_use"]
    assert call.name == "get_weather" and call.id.startswith("toolu_")
    assert isinstance(call.input["city"], str) and len(call.input["city"]) <= 10
    history = [
        *ASK,
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21 C"},
                {"type": "text", "text": "Thanks."},
            ],
        },
    ]
    second = client.messages.create(model="tiny", max_tokens=4, messages=history, tools=[WEATHER])
    assert second.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert second.usage.input_tokens > first.usage.input_tokens
    counted = client.messages.count_tokens(model="tiny", messages=history, tools=[WEATHER])
    assert counted.input_tokens == second.usage.input_tokens
    # an error result renders too (is_error, content as text blocks)
    history[-1]["content"] = [
        {
            "type": "tool_result",
            "tool_use_id": call.id,
            "is_error": True,
            "content": [{"type": "text", "text": "down"}],
        }
    ]
    again = client.messages.create(model="tiny", max_tokens=2, messages=history, tools=[WEATHER])
    assert again.usage.input_tokens > first.usage.input_tokens


def test_streamed_tool_use(server: Server) -> None:
    choice = {"type": "tool", "name": "get_weather"}
    with _client(server).messages.stream(
        model="tiny", max_tokens=200, messages=ASK, tools=[WEATHER], tool_choice=choice
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert any(e.type == "content_block_delta" and e.delta.type == "input_json_delta" for e in events)
    (call,) = [b for b in final.content if b.type == "tool_use"]
    assert call.name == "get_weather" and isinstance(call.input["city"], str)
    assert final.stop_reason == "tool_use"


def test_thinking_blocks(server: Server) -> None:
    client = _client(server)
    on = {"type": "enabled", "budget_tokens": 1024}
    msg = client.messages.create(model="tiny", max_tokens=6, messages=ASK, thinking=on)
    assert [b.type for b in msg.content] == ["thinking"] and msg.content[0].thinking
    assert "<think>" not in msg.content[0].thinking
    with client.messages.stream(model="tiny", max_tokens=6, messages=ASK, thinking=on) as stream:
        deltas = [e.delta.thinking for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert "".join(deltas) == final.content[0].thinking == msg.content[0].thinking
    off = client.messages.create(model="tiny", max_tokens=6, messages=ASK, thinking={"type": "disabled"})
    assert [b.type for b in off.content] == ["text"]
    # a thinking block sent back in the history is accepted
    history = [*ASK, {"role": "assistant", "content": [b.model_dump() for b in msg.content]}, *ASK]
    assert client.messages.create(model="tiny", max_tokens=2, messages=history).usage.input_tokens > 0


def test_x_api_key(server: Server) -> None:
    with pytest.raises(anthropic.AuthenticationError) as info:
        _client(server, "sk-wrong").messages.create(model="tiny", max_tokens=2, messages=ASK)
    assert info.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid or missing API key"},
    }
    r = httpx.post(server.url + "/v1/messages", json={}, timeout=TIMEOUT)  # no key at all
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    # other routes keep OpenAI's error object
    r = httpx.get(server.url + "/v1/models", headers={"x-api-key": "sk-wrong"}, timeout=TIMEOUT)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert _raw(server, "/v1/messages/count_tokens", {"messages": ASK}).json() == {
        "input_tokens": _client(server)
        .messages.create(model="tiny", max_tokens=1, messages=ASK)
        .usage.input_tokens
    }


BAD: list[tuple[dict[str, Any], str]] = [
    ({"max_tokens": None}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages"),
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}
                    ],
                }
            ]
        },
        "image",
    ),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "document"),
    ({"system": [{"type": "image"}]}, "system"),
    ({"stop_sequences": "END"}, "stop_sequences"),
    ({"tools": [{"name": "f"}]}, "input_schema"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice"),
    ({"tool_choice": {"type": "sometimes"}}, "tool_choice"),
    ({"thinking": {"type": "enabled"}}, "budget_tokens"),
    ({"temperature": "hot"}, "temp"),
    ({"top_k": "many"}, "top_k"),
    ({"metadata": {"user_id": 5}}, "metadata"),
    ({"mcp_servers": []}, "mcp_servers"),
    ({"messages": [*ASK, {"role": "assistant", "content": "The weather is"}]}, "prefill"),
    ({"output_config": {"format": {"type": "json_schema"}}}, "output_config"),
    ({"output_config": {"effort": "extreme"}}, "output_config"),
    ({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "name": "f"}]}]}, "tool_use"),
]


@pytest.mark.parametrize(("change", "named"), BAD)
def test_bad_inputs_are_400s(server: Server, change: dict[str, Any], named: str) -> None:
    body = {"model": "tiny", "max_tokens": 4, "messages": ASK, **change}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(anthropic.BadRequestError) as info:
        _client(server).post("/v1/messages", body=body, cast_to=httpx.Response)
    error = info.value.body
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert named in error["error"]["message"]
    # the server keeps working
    assert _client(server).messages.create(model="tiny", max_tokens=1, messages=ASK).usage.output_tokens == 1


def test_errors_under_messages_are_anthropic_shaped(server: Server) -> None:
    r = _raw(server, "/v1/messages/batches", {})
    assert r.status_code == 404 and r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "not_found_error"
    r = httpx.get(server.url + "/v1/messages", headers={"x-api-key": KEY}, timeout=TIMEOUT)
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
    assert r.json()["type"] == "error" and r.headers["allow"] == "POST"
    r = httpx.post(
        server.url + "/v1/messages", content=b"{not json", headers={"x-api-key": KEY}, timeout=TIMEOUT
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(server.url + "/v1/nothing", headers={"x-api-key": KEY}, timeout=TIMEOUT)
    assert r.status_code == 404 and "code" in r.json()["error"]  # OpenAI's elsewhere


def test_stream_error_event() -> None:
    """A failure after the stream started ends it with Anthropic's ``error`` event."""
    events = MessageEvents("tiny", False)
    (frame,) = events.error(503, {"error": {"message": "the server is shutting down"}})
    name, data = frame.strip().split("\n")
    assert name == "event: error"
    assert json.loads(data.removeprefix("data: ")) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "the server is shutting down"},
    }


def test_queue_full_and_too_large_are_anthropic_errors(model: Path) -> None:
    s = _serve(model, "--n-ctx", "4096", "--n-seq", "1", "--max-queue", "0", "--max-body-bytes", "4000")
    try:
        client = _client(s)
        with client.messages.stream(model="tiny", max_tokens=3000, messages=ASK) as stream:
            next(iter(stream))  # the one sequence is taken while the stream is open
            with pytest.raises(anthropic.RateLimitError) as busy:
                client.messages.create(model="tiny", max_tokens=2, messages=ASK)
        assert busy.value.body["error"]["type"] == "rate_limit_error"
        big = [{"role": "user", "content": "x" * 5000}]
        with pytest.raises(anthropic.APIStatusError) as large:
            client.messages.create(model="tiny", max_tokens=2, messages=big)
        assert large.value.status_code == 413
        assert large.value.body["error"]["type"] == "request_too_large"
        assert client.messages.create(model="tiny", max_tokens=2, messages=ASK).usage.output_tokens == 2
    finally:
        assert s.stop() == 0
