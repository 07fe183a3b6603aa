"""Chat messages, OpenAI-shaped results (checked with the official ``openai`` types),
JSON output through response_format, OpenAI parameter names, and the sync helpers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import openai.types
import openai.types.chat
import pytest

import mtpstream
from gguf_edit import DELETE, copy_with

from conftest import EXACT

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "we walked along the river"},
]


@pytest.fixture
def mtp(oracle: mtpstream.Model) -> Any:
    with mtpstream.init(oracle, n_draft=3, n_ctx=1024, **EXACT) as s:
        yield s


@pytest.mark.asyncio
async def test_chat_equals_generate_on_the_rendered_prompt(mtp: mtpstream.MTP) -> None:
    prompt = mtp.render_chat(MESSAGES)
    assert prompt.endswith("<|im_start|>assistant\n")  # the generation prompt
    result = await mtp.chat(MESSAGES, max_tokens=40)
    assert result.choices[0].message.content == await mtp.generate(prompt, max_tokens=40)
    parsed = openai.types.chat.ChatCompletion.model_validate_json(result.model_dump_json())
    assert parsed.object == "chat.completion" and parsed.choices[0].message.role == "assistant"
    assert parsed.usage is not None
    assert parsed.usage.total_tokens == parsed.usage.prompt_tokens + parsed.usage.completion_tokens
    assert parsed.usage.prompt_tokens_details is not None
    assert parsed.usage.prompt_tokens_details.cached_tokens == 0
    assert result.mtp.drafts_generated >= result.mtp.drafts_accepted > 0
    assert result.model == mtp.model_name


@pytest.mark.asyncio
async def test_stream_chat_chunks(mtp: mtpstream.MTP) -> None:
    chunks = [c async for c in mtp.stream_chat(MESSAGES, max_tokens=30)]
    for c in chunks:
        openai.types.chat.ChatCompletionChunk.model_validate_json(c.model_dump_json())
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason is not None for c in chunks].count(True) == 1
    assert chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 30
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    whole = await mtp.chat(MESSAGES, max_tokens=30)
    assert text == whole.choices[0].message.content


@pytest.mark.asyncio
async def test_the_end_of_turn_token_ends_the_answer(mtp: mtpstream.MTP, oracle: mtpstream.Model) -> None:
    # a grammar that allows a few words, then only the end of the turn
    result = await mtp.chat(MESSAGES, grammar='root ::= [a-z]+ " " [a-z]+', max_tokens=50)
    assert result.choices[0].finish_reason == "stop"
    assert result.usage.completion_tokens < 50
    assert "<|im_end|>" not in result.choices[0].message.content


@pytest.mark.asyncio
async def test_json_schema_response_format(mtp: mtpstream.MTP) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["ok", "n"],
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    result = await mtp.chat(MESSAGES, response_format=fmt, max_tokens=60)
    data = json.loads(result.choices[0].message.content)
    assert set(data) == {"ok", "n"} and isinstance(data["ok"], bool) and 0 <= data["n"] <= 9
    # the same on the plain generation API
    text = await mtp.generate("we walked along", response_format=fmt, max_tokens=60)
    assert set(json.loads(text)) == {"ok", "n"}


@pytest.mark.asyncio
async def test_json_object_response_format_on_stream_events(mtp: mtpstream.MTP) -> None:
    schema_fmt = {
        "type": "json_object",
        "schema": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
    }
    pieces = []
    async for ev in mtp.stream_events("we walked along", response_format=schema_fmt, max_tokens=60):
        if isinstance(ev, (mtpstream.TokenEvent, mtpstream.DoneEvent, mtpstream.EogEvent)):
            pieces.append(ev.text)
    value = json.loads("".join(pieces))
    assert isinstance(value, list) and len(value) <= 3 and all(isinstance(v, bool) for v in value)
    # plain json_object: the output starts like a JSON value (the grammar only allows JSON)
    text = await mtp.generate("we walked along", response_format={"type": "json_object"}, max_tokens=12)
    assert text.lstrip()[:1] in ("{", "[", '"') or text.lstrip()[:1].isdigit() or text.lstrip()[:1] in "tfn-"


@pytest.mark.parametrize(
    ("fmt", "match"),
    [
        ({"type": "xml"}, "type must be"),
        ({"type": "json_schema"}, "needs"),
        (
            {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"$ref": "https://example.com/s"}},
            },
            "unsupported",
        ),
        ("json", "must be a dict"),
    ],
)
def test_bad_response_format(mtp: mtpstream.MTP, fmt: Any, match: str) -> None:
    with pytest.raises(mtpstream.InvalidOptionError, match=match) as info:
        anyio.run(lambda: mtp.chat(MESSAGES, response_format=fmt))
    assert info.value.field == "response_format"
    assert mtp.generate_sync("we walked", max_tokens=2)  # the session still works


@pytest.mark.asyncio
async def test_openai_parameter_names_map_to_ours(mtp: mtpstream.MTP) -> None:
    prompt = mtp.render_chat(MESSAGES)
    openai_style = await mtp.chat(
        MESSAGES,
        temperature=0.9,
        top_p=0.9,
        seed=7,
        max_completion_tokens=25,
        frequency_penalty=0.2,
        presence_penalty=0.1,
        repeat_penalty=1.1,
        top_k=40,
        min_p=0.01,
        stop=["zzzz"],
    )
    ours = await mtp.generate(
        prompt,
        temp=0.9,
        top_p=0.9,
        seed=7,
        max_tokens=25,
        penalty_freq=0.2,
        penalty_present=0.1,
        penalty_repeat=1.1,
        top_k=40,
        min_p=0.01,
        stop=["zzzz"],
    )
    assert openai_style.choices[0].message.content == ours
    with pytest.raises(mtpstream.InvalidOptionError) as info:
        await mtp.chat(MESSAGES, n=2)
    assert info.value.field == "n"
    with pytest.raises(mtpstream.InvalidOptionError, match="twice"):
        await mtp.chat(MESSAGES, max_tokens=3, max_completion_tokens=4)
    with pytest.raises(mtpstream.InvalidOptionError) as info:
        await mtp.chat(MESSAGES, temperature="hot")
    assert info.value.field == "temp"


@pytest.mark.asyncio
async def test_messages_and_templates(
    mtp: mtpstream.MTP, tmp_path: Path, model_paths: dict[str, Path]
) -> None:
    for bad in ([], "hello", [{"content": "no role"}], [{"role": "user", "content": 3}], [1]):
        with pytest.raises(mtpstream.InvalidOptionError) as info:
            await mtp.chat(bad)  # type: ignore[arg-type]
        assert info.value.field == "messages"
    custom = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant] "
    with pytest.raises(mtpstream.InvalidOptionError, match="allow_request_templates") as info:
        await mtp.chat(MESSAGES, chat_template=custom)  # off by default
    assert info.value.field == "chat_template"
    assert mtp.render_chat(MESSAGES, chat_template=mtp.model.chat_template)  # the model's own is fine
    mtp.allow_request_templates = True
    assert mtp.render_chat(MESSAGES, chat_template=custom).endswith("[assistant] ")
    ours = await mtp.chat(MESSAGES, chat_template=custom, max_tokens=8)
    assert ours.choices[0].message.content == await mtp.generate(
        mtp.render_chat(MESSAGES, custom), max_tokens=8
    )
    raising = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(mtpstream.InvalidOptionError, match="roles must alternate") as info:
        await mtp.chat(MESSAGES, chat_template=raising)
    assert info.value.field == "chat_template"
    # a model without a template
    path = copy_with(
        model_paths["qwen35-oracle"], tmp_path / "no-template.gguf", {"tokenizer.chat_template": DELETE}
    )
    with (
        mtpstream.load_model(path) as bare,
        mtpstream.init(bare, n_draft=3, n_ctx=256, allow_request_templates=True) as s,
    ):
        with pytest.raises(mtpstream.InvalidOptionError, match="no chat template") as info:
            await s.chat(MESSAGES)
        assert info.value.field == "chat_template"
        assert (await s.chat(MESSAGES, chat_template=custom, max_tokens=3)).usage.completion_tokens == 3


def test_sync_helpers(mtp: mtpstream.MTP) -> None:
    text = mtp.generate_sync("we walked along", max_tokens=10)
    assert text == anyio.run(lambda: mtp.generate("we walked along", max_tokens=10))
    result = mtp.chat_sync(MESSAGES, max_tokens=10)
    assert isinstance(result, mtpstream.ChatCompletion)

    async def inside() -> None:
        with pytest.raises(RuntimeError, match=r"await mtp\.generate"):
            mtp.generate_sync("x", max_tokens=2)
        with pytest.raises(RuntimeError, match=r"await mtp\.chat"):
            mtp.chat_sync(MESSAGES, max_tokens=2)

    anyio.run(inside)
    anyio.run(inside, backend="trio")
