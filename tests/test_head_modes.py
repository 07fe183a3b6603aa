"""Acceptance on oracle heads that read what real MTP heads read: the hidden row
they are fed ("hidden") and their own KV entry at the previous position ("kv") or two
back ("kv2").

A head that reads only the token cannot see a wrong hidden row or a stale MTP
KV; these can. The fault-injection tests put known engine bugs back and watch
the acceptance drop, so the equality tests are known to be able to fail.
"""

from __future__ import annotations

from typing import Any

import pytest

import mtpstream
from mtpstream.testing import expected_acceptance, inject_fault

from conftest import EXACT, OracleModels, collect

HEADS = ("hidden", "kv", "kv2")
ARCHS = ("qwen35", "qwen35moe")


@pytest.fixture(scope="module")
def heads() -> Any:
    h = OracleModels()
    yield h
    h.close()


def chain_prompt(spec: Any, n: int) -> list[int]:
    return [spec.chain_start, *spec.chain(spec.chain_start, n - 1)]


async def run_and_compare(mtp: mtpstream.MTP, spec: Any, prompt: list[int], n_draft: int, n: int) -> Any:
    expected = expected_acceptance(spec, prompt, n_draft=n_draft, n_tokens=n)
    ids, done = await collect(mtp, prompt, max_tokens=n)
    assert ids == [t for t in expected.tokens if t != spec.eos_token_id]
    assert (done.usage.drafts_accepted, done.usage.drafts_generated) == (
        expected.drafts_accepted,
        expected.drafts_generated,
    )
    return done


@pytest.mark.asyncio
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("n_draft", [1, 2, 3, 4, 5, 6])
async def test_acceptance_equals_expectation(heads: OracleModels, arch: str, head: str, n_draft: int) -> None:
    model, spec = heads.get(arch, head), heads.spec(arch, head)
    with mtpstream.init(model, n_draft=n_draft, n_ctx=1024, **EXACT) as mtp:
        # a prompt off the chain (the first drafts of a "kv" head read "along"), then a chain prompt
        await run_and_compare(mtp, spec, [*model.tokenize("we walked along"), spec.chain_start], n_draft, 150)
        await run_and_compare(mtp, spec, chain_prompt(spec, 7), n_draft, 150)


@pytest.mark.asyncio
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("n_draft", [7, 8])
async def test_long_drafts(heads: OracleModels, head: str, n_draft: int) -> None:
    model, spec = heads.get("qwen35", head), heads.spec("qwen35", head)
    with mtpstream.init(model, n_draft=n_draft, n_ctx=1024, **EXACT) as mtp:
        await run_and_compare(mtp, spec, chain_prompt(spec, 5), n_draft, 200)


@pytest.mark.asyncio
@pytest.mark.parametrize("head", HEADS)
async def test_prompt_over_several_ubatches(heads: OracleModels, head: str) -> None:
    model, spec = heads.get("qwen35", head), heads.spec("qwen35", head)
    prompt = chain_prompt(spec, 150)
    with mtpstream.init(model, n_draft=3, n_ctx=1024, n_batch=64, n_ubatch=16, **EXACT) as mtp:
        await run_and_compare(mtp, spec, prompt, 3, 120)


@pytest.mark.asyncio
@pytest.mark.parametrize("head", HEADS)
async def test_full_rejection_then_full_acceptance(heads: OracleModels, head: str) -> None:
    """A head that is always wrong, then one that is always right, on the same engine shape."""
    for rate in (1.0, 0.0):
        model, spec = heads.get("qwen35", head, rate), heads.spec("qwen35", head, rate)
        with mtpstream.init(model, n_draft=3, n_ctx=1024, **EXACT) as mtp:
            done = await run_and_compare(mtp, spec, chain_prompt(spec, 4), 3, 100)
        assert done.usage.drafts_accepted == (0 if rate == 1.0 else done.usage.drafts_generated)


@pytest.mark.asyncio
@pytest.mark.parametrize("head", HEADS)
async def test_across_calls_on_one_session(heads: OracleModels, head: str) -> None:
    model, spec = heads.get("qwen35moe", head), heads.spec("qwen35moe", head)
    with mtpstream.init(model, n_draft=4, n_ctx=1024, **EXACT) as mtp:
        for n in (3, 40, 3, 11):
            await run_and_compare(mtp, spec, chain_prompt(spec, n), 4, 90)


@pytest.mark.asyncio
@pytest.mark.parametrize("head", HEADS)
async def test_sidecar_draft_model(heads: OracleModels, head: str) -> None:
    model, spec = heads.get("qwen35", head), heads.spec("qwen35", head)
    sidecar = heads.get("qwen35", head, kind="sidecar")
    with mtpstream.init(model, n_draft=3, n_ctx=1024, draft_model=sidecar, **EXACT) as mtp:
        await run_and_compare(mtp, spec, chain_prompt(spec, 6), 3, 150)


@pytest.mark.asyncio
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("head", HEADS)
async def test_auto_draft_accepts_everything_on_a_perfect_head(
    heads: OracleModels, arch: str, head: str
) -> None:
    """ "auto" picks each draft length itself, so the exact count is not known in
    advance; on a head that is never wrong every draft must be accepted."""
    model, spec = heads.get(arch, head, 0.0), heads.spec(arch, head, 0.0)
    with mtpstream.init(model, n_draft="auto", n_ctx=1024, **EXACT) as mtp:
        prompt = chain_prompt(spec, 6)
        ids, done = await collect(mtp, prompt, max_tokens=300)
    assert ids == spec.chain(prompt[-1], 300)[: len(ids)] and len(ids) == 300
    assert done.usage.drafts_generated > 0
    assert done.usage.drafts_accepted == done.usage.drafts_generated


# ------------------------------------------------------------------ fault injection


async def _accepted(
    model: mtpstream.Model, prompt: list[int], fault: str, n_draft: Any = 3
) -> tuple[list[int], int, int]:
    with mtpstream.init(model, n_draft=n_draft, n_ctx=1024, **EXACT) as mtp:
        inject_fault(mtp, fault)  # type: ignore[arg-type]
        ids, done = await collect(mtp, prompt, max_tokens=150)
    return ids, done.usage.drafts_accepted, done.usage.drafts_generated


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("fault", "head", "n_draft", "seen"),
    [
        # the old engine's bug: rows from llama.cpp's masked mode
        ("masked_draft_rows", "token", 3, False),  # a token-only head cannot see it
        ("masked_draft_rows", "hidden", 2, True),  # step 2 drafts from the wrong row
        ("masked_draft_rows", "kv", 2, False),  # the kv head reads that row only at step 3
        ("masked_draft_rows", "kv", 3, True),
        # a stale MTP KV: the accepted tokens never reach the MTP context
        ("skip_draft_catch_up", "token", 3, False),
        ("skip_draft_catch_up", "hidden", 3, False),
        ("skip_draft_catch_up", "kv", 3, True),
        ("skip_draft_catch_up", "kv", "auto", True),
    ],
)
async def test_injected_fault_shows_as_lost_acceptance(
    heads: OracleModels, fault: str, head: str, n_draft: Any, seen: bool
) -> None:
    model, spec = heads.get("qwen35", head, 0.0), heads.spec("qwen35", head, 0.0)
    prompt = chain_prompt(spec, 6)
    ok_ids, ok_acc, ok_gen = await _accepted(model, prompt, "none", n_draft)
    ids, acc, gen = await _accepted(model, prompt, fault, n_draft)
    assert ids == ok_ids  # verification keeps the output exact whatever the drafts
    assert ok_acc == ok_gen  # a perfect head with the real engine
    if seen:
        assert acc / gen < 0.8 * ok_acc / ok_gen
    else:
        assert acc == gen


def test_inject_fault_refuses_a_bad_fault_and_a_closed_session(heads: OracleModels) -> None:
    """The documented errors of ``inject_fault`` (it reaches the engine through
    ``session.native_engine``, which refuses a closed session)."""
    mtp = mtpstream.init(heads.get("qwen35", "token", 0.0), n_draft=1, n_ctx=256)
    with pytest.raises(ValueError, match="fault must be one of"):
        inject_fault(mtp, "wrong_rows")  # type: ignore[arg-type]
    inject_fault(mtp, "skip_draft_catch_up")
    mtp.close()
    with pytest.raises(mtpstream.SessionClosedError):
        inject_fault(mtp, "none")
