"""OpenAI's parameters in the library (``chat``/``stream_chat``/``stream_events``):
logprobs with stop strings, ``stream_options``, ``logit_bias`` and the checks on
every one of them (the server's side is in test_server_params.py)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest

import mtpstream

from conftest import EXACT

MESSAGES = [{"role": "user", "content": "we walked along the river"}]


@pytest.fixture(scope="module")
def mtp(model_paths: Any) -> Iterator[mtpstream.MTP]:
    with (
        mtpstream.load_model(model_paths["qwen35-random"]) as model,
        mtpstream.init(model, n_ctx=512, **EXACT) as session,
    ):
        yield session


async def _tokens(mtp: mtpstream.MTP, prompt: str, **opts: Any) -> list[mtpstream.TokenEvent]:
    return [ev async for ev in mtp.stream_events(prompt, **opts) if isinstance(ev, mtpstream.TokenEvent)]


@pytest.mark.asyncio
async def test_no_logprobs_unless_asked(mtp: mtpstream.MTP) -> None:
    for ev in await _tokens(mtp, "we walked", max_tokens=4):
        assert ev.logprob is None and ev.top_logprobs == ()
    events = await _tokens(mtp, "we walked", max_tokens=4, logprobs=0)
    assert all(ev.logprob is not None and ev.top_logprobs == () for ev in events)
    r = await mtp.chat(MESSAGES, max_tokens=4)
    assert r.choices[0].logprobs is None


@pytest.mark.asyncio
async def test_logprobs_are_a_distribution(mtp: mtpstream.MTP) -> None:
    events = await _tokens(mtp, "we walked", max_tokens=6, logprobs=20, temp=1.5, seed=3)
    for ev in events:
        assert ev.logprob is not None and ev.logprob.piece == mtp.model.token_to_piece(ev.token_id)
        top = [t.logprob for t in ev.top_logprobs]
        assert len(top) == 20 and top == sorted(top, reverse=True)
        assert sum(math.exp(v) for v in top) <= 1.0 + 1e-6
        # sampled at a temperature, the token need not be the best; its logprob is the raw one
        assert ev.logprob.logprob <= top[0] + 1e-6
        ids = [t.token_id for t in ev.top_logprobs]
        if ev.token_id in ids:
            assert ev.logprob.logprob == pytest.approx(top[ids.index(ev.token_id)], abs=1e-7)


@pytest.mark.asyncio
async def test_logit_bias_changes_sampling_not_logprobs(mtp: mtpstream.MTP) -> None:
    [free] = await _tokens(mtp, "we walked", max_tokens=1, logprobs=2)
    assert free.logprob is not None
    banned = await _tokens(mtp, "we walked", max_tokens=1, logprobs=2, logit_bias={free.token_id: -100})
    assert banned[0].token_id == free.top_logprobs[1].token_id
    # the reported distribution is the model's own, before the bias
    assert [t.logprob for t in banned[0].top_logprobs] == [t.logprob for t in free.top_logprobs]
    forced = await _tokens(mtp, "we walked", max_tokens=3, logit_bias=[(7, 100.0)])
    assert [ev.token_id for ev in forced] == [7, 7, 7]


@pytest.mark.asyncio
async def test_chat_logprobs_stop_at_the_stop_string(mtp: mtpstream.MTP) -> None:
    full = await mtp.chat(MESSAGES, max_tokens=24, logprobs=True, top_logprobs=2)
    content = full.choices[0].message.content
    assert full.choices[0].logprobs is not None and full.choices[0].logprobs.content is not None
    assert "".join(t.token for t in full.choices[0].logprobs.content) == content
    tokens = [t.token for t in full.choices[0].logprobs.content]
    # a stop string of two whole tokens (the first that occurs nowhere earlier)
    k = next(
        k
        for k in range(len(tokens) // 2, len(tokens) - 1)
        if tokens[k].strip() and content.index(tokens[k] + tokens[k + 1]) == len("".join(tokens[:k]))
    )
    stop = tokens[k] + tokens[k + 1]
    cut = await mtp.chat(MESSAGES, max_tokens=24, logprobs=True, stop=[stop])
    text = cut.choices[0].message.content
    assert cut.choices[0].finish_reason == "stop" and text == "".join(tokens[:k])
    assert cut.choices[0].logprobs is not None and cut.choices[0].logprobs.content is not None
    # the stop string's tokens are not listed
    assert [t.token for t in cut.choices[0].logprobs.content] == tokens[:k]
    # one that starts inside a token: that token is listed (its text starts in the content)
    stop = tokens[k][1:] + tokens[k + 1]
    if len(tokens[k]) > 1 and content.index(stop) == len("".join(tokens[:k])) + 1:
        cut = await mtp.chat(MESSAGES, max_tokens=24, logprobs=True, stop=[stop])
        assert cut.choices[0].message.content == "".join(tokens[:k]) + tokens[k][0]
        assert cut.choices[0].logprobs is not None and cut.choices[0].logprobs.content is not None
        assert [t.token for t in cut.choices[0].logprobs.content] == tokens[: k + 1]


@pytest.mark.asyncio
async def test_stream_options_in_the_library(mtp: mtpstream.MTP) -> None:
    async def chunks(**opts: Any) -> list[mtpstream.ChatCompletionChunk]:
        async with mtp.stream_chat(MESSAGES, max_tokens=4, **opts) as s:
            return [c async for c in s]

    default = await chunks()
    assert default[-1].usage is not None and default[-1].choices[0].finish_reason == "length"
    openai_way = await chunks(stream_options={"include_usage": True})
    assert openai_way[-1].choices == [] and openai_way[-1].usage is not None
    assert all(c.usage is None for c in openai_way[:-1])
    assert openai_way[-2].choices[0].finish_reason == "length" and openai_way[-2].mtp is not None
    off = await chunks(stream_options={})
    assert all(c.usage is None for c in off) and len(off) == len(default)
    with pytest.raises(mtpstream.InvalidOptionError) as info:
        await mtp.chat(MESSAGES, max_tokens=2, stream_options={"include_usage": True})
    assert info.value.field == "stream_options"


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"logprobs": 21}, "logprobs"),
        ({"logprobs": True}, "logprobs"),
        ({"logprobs": -1}, "logprobs"),
        ({"logit_bias": {1: math.nan}}, "logit_bias"),
        ({"logit_bias": {1: 100.5}}, "logit_bias"),
        ({"logit_bias": {-1: 1}}, "logit_bias"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"logit_bias": {1: True}}, "logit_bias"),
        ({"logit_bias": [1, 2]}, "logit_bias"),
        ({"logit_bias": "1:2"}, "logit_bias"),
        ({"logit_bias": {10**6: 1}}, "logit_bias"),  # out of the vocabulary: checked natively
    ],
)
@pytest.mark.asyncio
async def test_bad_values_name_their_option(mtp: mtpstream.MTP, options: dict[str, Any], field: str) -> None:
    with pytest.raises(mtpstream.InvalidOptionError) as info:
        await mtp.generate("we walked", max_tokens=2, **options)
    assert info.value.field == field and field in str(info.value)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": 2}, "logprobs"),  # chat's logprobs is a flag
        ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs=True
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"modalities": ["audio"]}, "modalities"),
        ({"metadata": {"a": 1}}, "metadata"),
        ({"store": "yes"}, "store"),
        ({"user": 5}, "user"),
        ({"audio": {"voice": "x"}}, "audio"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"stream_options": {"include_usage": 1}}, "stream_options"),
        ({"stream_options": {"bogus": True}}, "stream_options"),
    ],
)
def test_bad_chat_parameters_name_themselves(mtp: mtpstream.MTP, options: dict[str, Any], field: str) -> None:
    with pytest.raises(mtpstream.InvalidOptionError) as info:
        mtp.stream_chat(MESSAGES, **options)
    assert info.value.field == field and field in str(info.value)


@pytest.mark.asyncio
async def test_no_effect_parameters_change_nothing(mtp: mtpstream.MTP) -> None:
    base = await mtp.chat(MESSAGES, max_tokens=5)
    same = await mtp.chat(
        MESSAGES,
        max_tokens=5,
        user="u",
        store=True,
        metadata={"k": "v"},
        service_tier="default",
        prompt_cache_key="c",
        safety_identifier="s",
        modalities=["text"],
    )
    assert same.choices[0].message == base.choices[0].message
