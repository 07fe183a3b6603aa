"""On oracle models the engine accepts exactly what the successor maps predict."""

from __future__ import annotations

import pytest

import mtpstream
from mtpstream.testing import analytic_acceptance, expected_acceptance, load_spec

from conftest import EXACT, Models, collect


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["qwen35-oracle", "qwen35moe-oracle", "qwen35-oracle-0"])
@pytest.mark.parametrize("n_draft", [1, 2, 3, 4, 6])
async def test_accepted_drafts_match_simulation(models: Models, name: str, n_draft: int) -> None:
    model = models[name]
    spec = load_spec(models.paths[name])
    prompt = [*model.tokenize("we walked along"), spec.chain_start]
    expected = expected_acceptance(spec, prompt, n_draft=n_draft, n_tokens=160)
    with mtpstream.init(model, n_draft=n_draft, n_ctx=1024, **EXACT) as mtp:
        ids, done = await collect(mtp, prompt, max_tokens=160)
        stats = mtp.stats()
    assert not expected.stopped_at_eos
    assert ids == list(expected.tokens)
    assert done.usage.drafts_generated == expected.drafts_generated
    assert done.usage.drafts_accepted == expected.drafts_accepted
    assert stats.iters == expected.iters


@pytest.mark.asyncio
async def test_long_run_rate_close_to_analytic(models: Models) -> None:
    model = models["qwen35-oracle"]
    spec = load_spec(models.paths["qwen35-oracle"])
    n_draft = 3
    # the analytic rate is for n_draft drafts every iteration: snapshots (replay
    # drafts fewer after a rejection; its count is checked against the simulation)
    with mtpstream.init(model, n_draft=n_draft, n_ctx=4096, rollback="snapshots", **EXACT) as mtp:
        _, done = await collect(mtp, [spec.chain_start], max_tokens=3000)
    rate = done.usage.acceptance_rate
    assert abs(rate - analytic_acceptance(spec.mtp_error_rate, n_draft)) <= 0.03
    with mtpstream.init(model, n_draft=n_draft, n_ctx=4096, **EXACT) as mtp:
        _, done = await collect(mtp, [spec.chain_start], max_tokens=3000)
    exp = expected_acceptance(spec, [spec.chain_start], n_draft=n_draft, n_tokens=3000)
    assert (done.usage.drafts_accepted, done.usage.drafts_generated) == (
        exp.drafts_accepted,
        exp.drafts_generated,
    )


@pytest.mark.asyncio
async def test_eog_token_ends_with_eog_event(models: Models) -> None:
    model = models["qwen35-oracle"]
    spec = load_spec(models.paths["qwen35-oracle"])
    # the word right before the stop word: its chain reaches " end" and then EOS
    prompt = [spec.stop_token_id]
    for n_draft in (0, 3):
        with mtpstream.init(model, n_draft=n_draft, n_ctx=256) as mtp:
            events = [ev async for ev in mtp.stream_events(prompt, max_tokens=50)]
        last = events[-1]
        assert isinstance(last, mtpstream.EogEvent)
        assert last.token_id == spec.eos_token_id and model.is_eog(last.token_id)
        assert not any(
            isinstance(e, mtpstream.TokenEvent) and e.token_id == spec.eos_token_id for e in events
        )
        assert last.usage.completion_tokens == 0
