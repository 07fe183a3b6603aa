"""Log-probabilities (``logprobs=n``) are the target's own distribution at every
emitted position, whatever drafted the token: equal to plain single-token decoding's
(llama-cpp-python) at every position, for n_draft 0 and 3 and several sequences."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

import mtpstream

from conftest import EXACT, Models, reference_llama

TOL = 1e-4
TOP = 5
N_TOKENS = 24


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    row = np.asarray(logits, dtype=np.float64)
    top = row.max()
    return row - (top + math.log(float(np.exp(row - top).sum())))


def plain_logprobs(path: Path, prompt: list[int], ids: list[int]) -> list[np.ndarray]:
    """The target's log-softmax before each of ``ids``, decoding one token at a time."""
    llm = reference_llama(path, n_ctx=len(prompt) + len(ids) + 8)
    try:
        llm.eval(prompt)
        rows = []
        for tok in ids:
            rows.append(_log_softmax(llm.scores[llm.n_tokens - 1]))
            llm.eval([tok])
        return rows
    finally:
        llm.close()


async def _events(mtp: mtpstream.MTP, prompt: list[int], **opts: Any) -> list[mtpstream.TokenEvent]:
    return [ev async for ev in mtp.stream_events(prompt, **opts) if isinstance(ev, mtpstream.TokenEvent)]


def assert_logprobs_match(
    path: Path, prompt: list[int], events: list[mtpstream.TokenEvent], tol: float = TOL
) -> float:
    """Every event's logprob and top list against plain decoding; the largest error."""
    ids = [ev.token_id for ev in events]
    worst = 0.0
    for i, (ev, ref) in enumerate(zip(events, plain_logprobs(path, prompt, ids), strict=True)):
        assert ev.logprob is not None and ev.logprob.token_id == ev.token_id
        worst = max(worst, abs(ev.logprob.logprob - ref[ev.token_id]))
        assert len(ev.top_logprobs) == TOP
        ref_top = np.sort(ref)[::-1][:TOP]
        for got, want in zip(ev.top_logprobs, ref_top, strict=True):
            worst = max(worst, abs(got.logprob - want), abs(got.logprob - ref[got.token_id]))
        assert worst < tol, f"token {i}: logprobs differ from plain decoding by {worst:.2e}"
    return worst


# The oracle model's logits match single-token decoding to ~1e-6 whatever the
# batching. On the random-weight model the recurrent layers' float rounding depends
# on how the history was batched (README, "Exactness"): verify batches, and batches
# shared with other sequences, move the
# state, and with it the later rows' log-probabilities, by up to ~1e-2 from
# single-token decoding's (same tokens, same order); the MTP head's distribution, or
# a row off by one position, is off by whole units.
def _tol(name: str, n_draft: int, n_seq: int = 1) -> float:
    return TOL if (n_draft == 0 and n_seq == 1) or name.endswith("oracle") else 2e-2


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["qwen35-oracle", "qwen35-random"])
@pytest.mark.parametrize("n_draft", [0, 3])
async def test_logprobs_are_plain_decodings(models: Models, name: str, n_draft: int) -> None:
    model = models[name]
    prompt = model.tokenize("the old man and the sea went")
    with mtpstream.init(model, n_draft=n_draft, n_ctx=256, **EXACT) as mtp:
        events = await _events(mtp, prompt, max_tokens=N_TOKENS, logprobs=TOP)
        assert len(events) == N_TOKENS
        if n_draft and name.endswith("oracle"):
            assert mtp.stats().drafts_accepted > 0  # accepted drafts and bonus tokens both checked
    assert_logprobs_match(models.paths[name], prompt, events, _tol(name, n_draft))


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["qwen35-oracle", "qwen35-random"])
@pytest.mark.parametrize("n_draft", [0, 3])
async def test_logprobs_with_several_sequences(models: Models, name: str, n_draft: int) -> None:
    model = models[name]
    prompts = [model.tokenize(t) for t in ("the old man and the sea went", "we walked along the river", "a")]
    got: list[list[mtpstream.TokenEvent]] = [[] for _ in prompts]
    with mtpstream.init(model, n_draft=n_draft, n_ctx=256, n_seq=3, **EXACT) as mtp:

        async def one(i: int) -> None:
            got[i] = await _events(mtp, prompts[i], max_tokens=N_TOKENS, logprobs=TOP)

        async with anyio.create_task_group() as tg:
            for i in range(len(prompts)):
                tg.start_soon(one, i)
    for prompt, events in zip(prompts, got, strict=True):
        assert len(events) == N_TOKENS
        assert_logprobs_match(models.paths[name], prompt, events, _tol(name, n_draft, n_seq=3))


@pytest.mark.asyncio
@pytest.mark.parametrize(("name", "n_draft"), [("qwen35-random", 0), ("qwen35-oracle", 3)])
async def test_completion_logprobs_match_llama_cpp_pythons(models: Models, name: str, n_draft: int) -> None:
    """The legacy completions shape against llama-cpp-python's own implementation of
    it (``Llama.create_completion(logprobs=n)``, plain decoding): same tokens, same
    log-probabilities, the same alternatives."""
    from mtpstream._chunk_streams import CompletionStream

    prompt = "we walked along the river"
    llm = reference_llama(models.paths[name])
    try:
        ref = llm.create_completion(prompt, max_tokens=12, temperature=0.0, logprobs=3)
    finally:
        llm.close()
    ref_lp = ref["choices"][0]["logprobs"]  # type: ignore[index]
    with mtpstream.init(models[name], n_draft=n_draft, n_ctx=256, **EXACT) as mtp:
        ours = await CompletionStream(mtp.stream_events(prompt, max_tokens=12, logprobs=3), "m").collect()
    lp = ours.choices[0].logprobs
    assert lp is not None
    assert ours.choices[0].text == ref["choices"][0]["text"]  # type: ignore[index]
    assert lp.tokens == ref_lp["tokens"]
    assert lp.token_logprobs == pytest.approx(ref_lp["token_logprobs"], abs=TOL)
    for got, want in zip(lp.top_logprobs, ref_lp["top_logprobs"], strict=True):
        # the same values; tokens may differ only among exact ties (the oracle's logits
        # have many), which each side breaks its own way
        assert sorted(got.values()) == pytest.approx(sorted(want.values()), abs=TOL)
        for t in set(got) & set(want):
            assert got[t] == pytest.approx(want[t], abs=TOL)
        least = min(want.values())
        assert {t for t in got if got[t] > least + TOL} == {t for t in want if want[t] > least + TOL}


@pytest.mark.asyncio
async def test_logprobs_under_rejection_verification(models: Models) -> None:
    """Tokens that rejection sampling keeps, resamples or draws as the bonus carry the
    target's log-probabilities at their own rows, as plain decoding of the same tokens
    gives them."""
    name = "qwen35-oracle"
    model = models[name]
    prompt = model.tokenize("the old man and the sea went")
    opts = {"max_tokens": N_TOKENS, "logprobs": TOP, "temp": 0.9, "seed": 5, "verify": "rejection"}
    with mtpstream.init(model, n_draft=3, n_ctx=256, **EXACT) as mtp:
        events = await _events(mtp, prompt, **opts)
        assert mtp.stats().rejection_iters > 0
    assert len(events) == N_TOKENS
    assert_logprobs_match(models.paths[name], prompt, events, _tol(name, 3))
