"""Property-based fuzzing of the Responses request translation: whatever a client
sends to ``POST /v1/responses``, the answer is a chat request or an
:class:`InvalidOptionError` naming a field the client sent (as the Responses API spells
it) — never another exception (which the server would answer with a 500)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtpstream._openai import ChatBody, ChatRequest
from mtpstream._responses_request import ResponsesBody, chat_body, renamed
from mtpstream._server_http import HTTPError
from mtpstream.errors import InvalidOptionError

SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
    st.sampled_from(
        [
            "auto",
            "none",
            "required",
            "user",
            "assistant",
            "developer",
            "system",
            "function",
            "message",
            "function_call",
            "function_call_output",
            "reasoning",
            "item_reference",
            "input_text",
            "output_text",
            "input_image",
            "json_schema",
            "json_object",
            "text",
            "high",
            '{"a": 1}',
        ]
    ),
)
KEYS = [
    "type",
    "role",
    "content",
    "text",
    "call_id",
    "name",
    "arguments",
    "output",
    "format",
    "schema",
    "effort",
    "summary",
    "parameters",
    "verbosity",
]
JSON = st.recursive(
    SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "text",
    "reasoning",
    "max_output_tokens",
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "metadata",
    "user",
    "store",
    "include",
    "truncation",
    "stream",
    "stream_options",
    "top_logprobs",
    "previous_response_id",
    "background",
    "messages",
    "bogus",
]


def _named_by(field: str | None, body: dict[str, Any]) -> bool:
    """``field`` is one the body sent (or ``input``, which it must send)."""
    return field is not None and (field.split(".")[0] in body or field == "input")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=5))
def test_translation_gives_a_chat_request_or_a_named_error(body: dict[str, Any]) -> None:
    try:
        ResponsesBody.of(body)
        chat = chat_body(body)
    except HTTPError as exc:
        assert exc.param == "previous_response_id" and exc.status == 400
        return
    except InvalidOptionError as exc:
        assert _named_by(exc.field, body), (exc.field, str(exc), body)
        return
    parsed = ChatBody.of(chat)
    try:
        ChatRequest.of(parsed.messages, parsed.options)
    except InvalidOptionError as exc:
        err = renamed(exc)
        assert _named_by(err.field, body), (exc.field, err.field, str(exc), body)


ROLE = st.sampled_from(["user", "assistant", "developer", "system", "tool", 3])
TEXT = st.one_of(st.text(max_size=5), SCALAR)
PART = st.fixed_dictionaries(
    {"type": st.sampled_from(["input_text", "output_text", "refusal", "input_image", "x"]), "text": TEXT}
)
CONTENT = st.one_of(TEXT, st.lists(st.one_of(PART, SCALAR), max_size=3))
ITEM = st.one_of(
    st.fixed_dictionaries({"role": ROLE, "content": CONTENT}),
    st.fixed_dictionaries({"type": st.just("message"), "role": ROLE, "content": CONTENT}),
    st.fixed_dictionaries(
        {
            "type": st.just("function_call"),
            "call_id": TEXT,
            "name": st.one_of(st.just("get_weather"), TEXT),
            "arguments": st.one_of(st.just('{"city": "Paris"}'), TEXT),
        }
    ),
    st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": TEXT, "output": CONTENT}),
    st.fixed_dictionaries(
        {"type": st.just("reasoning"), "summary": st.just([]), "content": st.lists(PART, max_size=2)}
    ),
    JSON,
)
TOOLS = st.one_of(
    st.just([{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]), JSON
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.fixed_dictionaries(
        {"input": st.lists(ITEM, min_size=1, max_size=5)},
        optional={
            "tools": TOOLS,
            "tool_choice": st.one_of(st.just({"type": "function", "name": "get_weather"}), JSON),
            "instructions": TEXT,
            "text": st.one_of(st.just({"format": {"type": "json_object"}}), JSON),
            "reasoning": st.one_of(st.just({"effort": "none"}), JSON),
        },
    )
)
def test_item_lists_give_a_chat_request_or_a_named_error(body: dict[str, Any]) -> None:
    test_translation_gives_a_chat_request_or_a_named_error.hypothesis.inner_test(body)  # type: ignore[attr-defined]
