"""OpenAI's parameters against a real ``mtpstream serve`` on 127.0.0.1, driven with
the official ``openai`` client: logprobs (chat and completions, whole and streamed),
``stream_options.include_usage``, ``finish_reason: null``, ``GET /v1/models/{id}``,
``logit_bias``, the parameters accepted with no effect and the refused ones."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import openai
import pytest

import mtpstream
from test_server import KEY, MESSAGES, Server

N_CTX = 512
PROMPT = "we walked along"


@pytest.fixture(scope="module")
def path(model_paths: dict[str, Path]) -> Path:
    return model_paths["qwen35-random"]  # spread distributions: logprobs worth comparing


@pytest.fixture(scope="module")
def server(path: Path) -> Iterator[Server]:
    s = Server(path, "--api-key", KEY, "--model-alias", "tiny", "--n-ctx", str(N_CTX))
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return server.client()


def in_process(path: Path, fn: Any) -> Any:
    with mtpstream.load_model(path) as model, mtpstream.init(model, n_ctx=N_CTX) as mtp:
        return anyio.run(fn, mtp)


def sse(server: Server, route: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The data events of a streamed request, raw (what the client library hides)."""
    r = httpx.post(server.url + route, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.status_code == 200, r.text
    data = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def _bad_request(fn: Any, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        fn()
    assert info.value.status_code == 400
    assert f"'{param}" in info.value.message, info.value.message


# ------------------------------------------------------------------ logprobs
def test_chat_logprobs_whole_and_streamed_are_the_targets(client: openai.OpenAI, path: Path) -> None:
    kw: dict[str, Any] = {
        "model": "tiny",
        "messages": MESSAGES,
        "max_tokens": 16,
        "logprobs": True,
        "top_logprobs": 3,
    }
    whole = client.chat.completions.create(**kw)
    choice = whole.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.logprobs.content
    assert "".join(t.token for t in content) == choice.message.content
    assert whole.usage is not None and len(content) == whole.usage.completion_tokens
    for t in content:
        assert t.bytes == list(t.token.encode()) and t.logprob <= 0
        assert len(t.top_logprobs) == 3
        values = [a.logprob for a in t.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert t.logprob == pytest.approx(values[0], abs=1e-6)  # greedy: the most likely token
    streamed = [
        e
        for c in client.chat.completions.create(**kw, stream=True)
        if c.choices and c.choices[0].logprobs and (e := c.choices[0].logprobs.content)
    ]
    flat = [t for part in streamed for t in part]
    assert [(t.token, t.logprob) for t in flat] == [(t.token, t.logprob) for t in content]
    assert [[a.logprob for a in t.top_logprobs] for t in flat] == [
        [a.logprob for a in t.top_logprobs] for t in content
    ]

    async def library(mtp: mtpstream.MTP) -> list[mtpstream.TokenEvent]:
        prompt = mtp.tokenize_chat(MESSAGES)
        evs = mtp.stream_events(prompt, max_tokens=16, logprobs=3)
        return [ev async for ev in evs if isinstance(ev, mtpstream.TokenEvent)]

    events = in_process(path, library)
    assert [ev.logprob.logprob for ev in events if ev.logprob] == pytest.approx(
        [t.logprob for t in content], abs=1e-5
    )


def test_chat_logprobs_off_by_default(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4)  # type: ignore[arg-type]
    assert r.choices[0].logprobs is None
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, logprobs=True)  # type: ignore[arg-type]
    assert r.choices[0].logprobs is not None and r.choices[0].logprobs.content
    assert all(t.top_logprobs == [] for t in r.choices[0].logprobs.content)


def test_completions_logprobs_legacy_shape(client: openai.OpenAI) -> None:
    whole = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, logprobs=2)
    lp = whole.choices[0].logprobs
    assert (
        lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs and lp.text_offset is not None
    )
    assert "".join(lp.tokens) == whole.choices[0].text
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 12
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    assert all(0 < len(top) <= 2 for top in lp.top_logprobs)
    pieces = list(
        client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, logprobs=2, stream=True)
    )
    tokens = [
        t for p in pieces if p.choices and p.choices[0].logprobs for t in p.choices[0].logprobs.tokens or []
    ]
    values = [
        v
        for p in pieces
        if p.choices and p.choices[0].logprobs
        for v in p.choices[0].logprobs.token_logprobs or []
    ]
    assert tokens == lp.tokens and values == lp.token_logprobs


def test_logprob_refusals(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create
    _bad_request(lambda: chat(model="tiny", messages=MESSAGES, top_logprobs=2), "top_logprobs")  # type: ignore[arg-type]
    _bad_request(
        lambda: chat(model="tiny", messages=MESSAGES, logprobs=True, top_logprobs=21), "top_logprobs"
    )  # type: ignore[arg-type]
    _bad_request(lambda: chat(model="tiny", messages=MESSAGES, extra_body={"logprobs": 3}), "logprobs")  # type: ignore[arg-type]
    text = client.completions.create
    _bad_request(lambda: text(model="tiny", prompt=PROMPT, logprobs=2, echo=True), "echo")
    _bad_request(lambda: text(model="tiny", prompt=PROMPT, logprobs=-1), "logprobs")


def test_echo_opens_the_text_with_the_prompt(client: openai.OpenAI) -> None:
    plain = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6)
    echoed = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, echo=True)
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text
    pieces = list(
        client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, echo=True, stream=True)
    )
    assert pieces[0].choices[0].text.startswith(PROMPT)
    assert "".join(p.choices[0].text for p in pieces if p.choices) == echoed.choices[0].text


# ------------------------------------------------------------------ streams
def test_include_usage_and_finish_reason_null(server: Server) -> None:
    chat: dict[str, Any] = {"model": "tiny", "messages": MESSAGES, "max_tokens": 6, "stream": True}
    for route, body in (("/v1/chat/completions", chat), ("/v1/completions", {**chat, "prompt": PROMPT})):
        if route == "/v1/completions":
            body.pop("messages")
        plain = sse(server, route, body)
        assert all("usage" not in c for c in plain)
        assert all("finish_reason" in c["choices"][0] for c in plain)
        assert [c["choices"][0]["finish_reason"] for c in plain] == [None] * (len(plain) - 1) + ["length"]
        usage = sse(server, route, {**body, "stream_options": {"include_usage": True}})
        assert usage[-1]["choices"] == [] and usage[-1]["usage"]["completion_tokens"] == 6
        assert all("usage" not in c for c in usage[:-1])
        assert usage[-2]["choices"][0]["finish_reason"] == "length"
        off = sse(server, route, {**body, "stream_options": {"include_usage": False}})
        assert all("usage" not in c for c in off) and len(off) == len(plain)


def test_include_usage_with_the_client(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5
    assert [c.usage for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    _bad_request(
        lambda: client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        ),
        "stream_options",
    )


# ------------------------------------------------------------------ models, 404
def test_models_by_id_and_404s(server: Server, client: openai.OpenAI) -> None:
    card = client.models.retrieve("tiny")
    assert card.id == "tiny" and card.object == "model"
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-4o")
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_found" and body["param"] == "model"
    r = httpx.get(server.url + "/v1/nothing/here", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 404 and "detail" not in r.json()
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


# ------------------------------------------------------------------ logit_bias
def test_logit_bias_steers_the_greedy_token(client: openai.OpenAI, path: Path) -> None:
    async def first_tokens(mtp: mtpstream.MTP) -> tuple[int, int]:
        evs = [ev async for ev in mtp.stream_events(PROMPT, max_tokens=1, logprobs=2)]
        tok = evs[0]
        assert isinstance(tok, mtpstream.TokenEvent)
        return tok.token_id, tok.top_logprobs[1].token_id

    with mtpstream.load_model(path) as model:
        greedy, runner_up = anyio.run(_first_two, model, first_tokens)
        runner_text = model.token_to_piece(runner_up).decode("utf-8", "replace")
        other = model.tokenize(" river")[-1]
        other_text = model.token_to_piece(other).decode("utf-8", "replace")

    def first(bias: dict[str, int]) -> str:
        r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=1, logit_bias=bias, logprobs=0)
        lp = r.choices[0].logprobs
        assert lp is not None and lp.tokens
        return lp.tokens[0]

    assert first({str(greedy): -100}) == runner_text
    assert first({str(other): 100}) == other_text
    assert first({}) != runner_text
    text = client.completions.create
    _bad_request(lambda: text(model="tiny", prompt=PROMPT, logit_bias={"99999999": 1}), "logit_bias")
    _bad_request(lambda: text(model="tiny", prompt=PROMPT, logit_bias={"5": 101}), "logit_bias")
    _bad_request(lambda: text(model="tiny", prompt=PROMPT, logit_bias={"x": 1}), "logit_bias")


async def _first_two(model: mtpstream.Model, fn: Any) -> Any:
    with mtpstream.init(model, n_ctx=N_CTX) as mtp:
        return await fn(mtp)


# ------------------------------------------------------------------ the rest
def test_parameters_with_no_effect_are_accepted(client: openai.OpenAI) -> None:
    base = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=6)  # type: ignore[arg-type]
    r = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=6,
        user="u-1",
        store=False,
        metadata={"team": "a"},
        service_tier="auto",
        prompt_cache_key="k",
        modalities=["text"],
        extra_body={"safety_identifier": "s"},
    )
    assert r.choices[0].message.content == base.choices[0].message.content
    t = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=3, user="u", best_of=1, suffix=None)
    assert t.usage is not None and t.usage.completion_tokens == 3


def test_refused_parameters_are_named(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create
    _bad_request(lambda: chat(model="tiny", messages=MESSAGES, n=2), "n")  # type: ignore[arg-type]
    _bad_request(lambda: chat(model="tiny", messages=MESSAGES, modalities=["text", "audio"]), "modalities")  # type: ignore[arg-type]
    _bad_request(lambda: chat(model="tiny", messages=MESSAGES, extra_body={"audio": {"voice": "x"}}), "audio")  # type: ignore[arg-type]
    _bad_request(lambda: chat(model="tiny", messages=MESSAGES, metadata={"a": 1}), "metadata")  # type: ignore[arg-type,dict-item]
    _bad_request(lambda: chat(model="tiny", messages=MESSAGES, extra_body={"bogus": 1}), "bogus")  # type: ignore[arg-type]
    text = client.completions.create
    _bad_request(lambda: text(model="tiny", prompt=PROMPT, best_of=2), "best_of")
    _bad_request(lambda: text(model="tiny", prompt=PROMPT, suffix="end"), "suffix")
