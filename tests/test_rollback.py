"""``init(rollback="replay")``: verifies without llama.cpp's recurrent-state snapshots.
Before a verify each sequence's state is shared with a spare sequence id; a rejection
restores it and the accepted tokens are decoded again in front of the next verify.
Output equals plain decoding's for one stream and many, with ``"auto"``, across the
prompt cache and cancellation; the replay path is seen to run (``replayed_tokens``).

The oracle models' target predicts from the current token alone, so they prove the
token flow but not the restored recurrent state; the random-weight models' every logit
depends on that state, so they are checked too, against plain decoding through
llama-cpp-python (a batch may break a near-tie the other way: README, "Exactness")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

import mtpstream
from mtpstream.testing import expected_acceptance

from conftest import (
    EXACT,
    Models,
    OracleModels,
    assert_plain_greedy_modulo_near_ties,
    collect,
    prompts_for,
    together,
)

ARCHS = ("qwen35", "qwen35moe")
REPLAY = {"rollback": "replay", **EXACT}


@pytest.fixture(scope="module")
def rm() -> Any:
    m = OracleModels()
    yield m
    m.close()


def greedy(spec: Any, prompt: list[int], n: int) -> list[int]:
    """Plain greedy decoding's tokens (the oracle's chain; any n_draft gives the same)."""
    exp = expected_acceptance(spec, prompt, n_draft=1, n_tokens=n)
    return [t for t in exp.tokens if t != spec.eos_token_id]


@pytest.mark.asyncio
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("head", ["hidden", "kv2"])
@pytest.mark.parametrize("n_draft", [1, 3, 6])
async def test_replay_output_equals_plain_decoding(
    rm: OracleModels, arch: str, head: str, n_draft: int
) -> None:
    model, spec = rm.get(arch, head), rm.spec(arch, head)
    prompt = model.tokenize("the old man and the sea went")
    with mtpstream.init(model, n_draft=n_draft, n_ctx=512, **REPLAY) as mtp:
        exp = expected_acceptance(spec, prompt, n_draft=n_draft, n_tokens=150, rollback="replay")
        for _ in range(2):  # the second call starts from the first one's cached state
            ids, done = await collect(mtp, prompt, max_tokens=150)
            assert ids == greedy(spec, prompt, 150)
            # after a rejection the next iteration drafts as many fewer as it replays
            assert (done.usage.drafts_accepted, done.usage.drafts_generated) == (
                exp.drafts_accepted,
                exp.drafts_generated,
            )
        st = mtp.stats()
    # drafts were rejected (error rate 0.25), so accepted tokens were decoded again
    assert st.replayed_tokens > 0
    assert st.rollback_fallbacks == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["qwen35-random", "qwen35moe-random"])
@pytest.mark.parametrize("n_draft", [1, 3])
async def test_replay_restores_the_recurrent_state(
    models: Models, model_paths: dict[str, Path], name: str, n_draft: int
) -> None:
    """Random weights: nearly every draft is rejected, so nearly every verify starts
    from a restored state with replayed tokens, and every logit depends on it."""
    model = models[name]
    prompt = model.tokenize("the old man and the sea went")
    with mtpstream.init(model, n_draft=n_draft, n_ctx=512, **REPLAY) as mtp:
        ids, _ = await collect(mtp, prompt, max_tokens=160)
        # the next call extends this one's state (replayed tokens flushed at its end)
        prompt2 = [*prompt, *ids, *model.tokenize(" and then", add_special=False)]
        ids2, done2 = await collect(mtp, prompt2, max_tokens=60)
        assert mtp.stats().replayed_tokens > 100
    assert done2.usage.cached_tokens == len(prompt) + len(ids) - 1
    assert_plain_greedy_modulo_near_ties(model_paths[name], prompt, ids)
    assert_plain_greedy_modulo_near_ties(model_paths[name], prompt2, ids2)


@pytest.mark.asyncio
@pytest.mark.parametrize("stop", ["disease", "autumn", "courage", "drawer"])
async def test_a_call_stopped_mid_replay_leaves_a_state_to_extend(
    models: Models, model_paths: dict[str, Path], stop: str
) -> None:
    """A stop string can end a call right after a rejection, with accepted tokens not
    yet back in the target's memory: the next call that extends it must find them."""
    model = models["qwen35-random"]
    prompt = model.tokenize("the old man and the sea went")
    with mtpstream.init(model, n_draft=3, n_ctx=512, **REPLAY) as mtp:
        ids, done = await collect(mtp, prompt, max_tokens=100, stop=[stop])
        assert done.finish_reason == "stop"
        prompt2 = [*prompt, *ids, *model.tokenize(" and then", add_special=False)]
        ids2, done2 = await collect(mtp, prompt2, max_tokens=40)
    assert done2.usage.cached_tokens > len(prompt)
    assert_plain_greedy_modulo_near_ties(model_paths["qwen35-random"], prompt2, ids2)


@pytest.mark.asyncio
async def test_snapshots_replay_nothing_and_a_perfect_head_needs_no_replay(rm: OracleModels) -> None:
    prompt = [rm.spec("qwen35").chain_start]
    with mtpstream.init(rm.get("qwen35"), n_draft=3, n_ctx=512, rollback="snapshots", **EXACT) as snap:
        await collect(snap, prompt, max_tokens=100)
        assert snap.stats().replayed_tokens == 0
    with mtpstream.init(rm.get("qwen35", rate=0.0), n_draft=3, n_ctx=512, **REPLAY) as perfect:
        _, done = await collect(perfect, prompt, max_tokens=100)
        assert perfect.stats().replayed_tokens == 0
        assert done.usage.drafts_accepted == done.usage.drafts_generated > 0


@pytest.mark.asyncio
@pytest.mark.parametrize("arch", ARCHS)
async def test_many_streams_each_equal_running_alone(rm: OracleModels, arch: str) -> None:
    model, spec = rm.get(arch), rm.spec(arch)
    calls = list(zip(prompts_for(model, spec) * 2, [90, 60, 120, 45, 30, 75, 20, 100], strict=True))
    delays = [0.0, 0.02, 0.04] * 3
    with mtpstream.init(model, n_draft=3, n_ctx=512, n_seq=3, **REPLAY) as mtp:
        got = await together(mtp, [(p, {"max_tokens": n}) for p, n in calls], delays=delays[: len(calls)])
        st = mtp.stats()
    for (prompt, n), (ids, done) in zip(calls, got, strict=True):
        assert ids == greedy(spec, prompt, n)
        exp = expected_acceptance(spec, prompt, n_draft=3, n_tokens=n, rollback="replay")
        assert (done.usage.drafts_accepted, done.usage.drafts_generated) == (
            exp.drafts_accepted,
            exp.drafts_generated,
        )
    assert st.replayed_tokens > 0
    assert (st.active_sequences, st.queued) == (0, 0)


@pytest.mark.asyncio
@pytest.mark.parametrize("n_seq", [1, 4])
async def test_auto_draft_needs_no_second_context(rm: OracleModels, n_seq: int) -> None:
    model, spec = rm.get("qwen35"), rm.spec("qwen35")
    prompts = prompts_for(model, spec)[:n_seq]
    with mtpstream.init(model, n_draft="auto", n_ctx=1024, n_seq=n_seq, **REPLAY) as mtp:
        got = await together(mtp, [(p, {"max_tokens": 300}) for p in prompts])
        st = mtp.stats()
    for prompt, (ids, _done) in zip(prompts, got, strict=True):
        assert ids == greedy(spec, prompt, 300)
    # the target context keeps no snapshots, so "auto" never moves the sequence
    assert st.context_switches == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("head", ["hidden", "kv2"])
async def test_a_conversation_on_the_prompt_cache_equals_a_cold_session(rm: OracleModels, head: str) -> None:
    """Calls end with tokens still to replay (any rejection in the last round); what
    the next call extends must hold them."""
    model = rm.get("qwen35", head)
    prompt = model.tokenize("we walked along the river")
    with (
        mtpstream.init(model, n_draft=3, n_ctx=2048, **REPLAY) as warm,
        mtpstream.init(model, n_draft=3, n_ctx=2048, prompt_cache=False, **REPLAY) as cold,
    ):
        for i, n in enumerate([23, 17, 40, 9, 31, 12, 26, 19]):
            got, done = await collect(warm, prompt, max_tokens=n)
            want, _ = await collect(cold, prompt, max_tokens=n)
            assert got == want, i
            assert (done.usage.cached_tokens > 0) == (i > 0)
            prompt = [*prompt, *got, *model.tokenize(f" and then {i}", add_special=False)]


@pytest.mark.asyncio
async def test_a_cancelled_stream_leaves_the_session_exact(rm: OracleModels) -> None:
    model, spec = rm.get("qwen35"), rm.spec("qwen35")
    prompt = [spec.chain_start]
    with mtpstream.init(model, n_draft=3, n_ctx=512, **REPLAY) as mtp:
        for n_break in (5, 11, 18):
            n = 0
            async for ev in mtp.stream_events(prompt, max_tokens=400):
                if isinstance(ev, mtpstream.TokenEvent):
                    n += 1
                    if n == n_break:
                        break
            ids, _ = await collect(mtp, prompt, max_tokens=80)
            assert ids == greedy(spec, prompt, 80)


@pytest.mark.asyncio
async def test_cancelled_at_any_moment_the_next_call_sees_a_clean_state(
    models: Models, model_paths: dict[str, Path]
) -> None:
    """Random weights (the target state shows): calls cancelled by a scope at
    arbitrary moments (possibly inside a verify, between the backup and the restore)
    and by breaking out of the stream leave nothing behind for the next call."""
    model = models["qwen35-random"]
    prompt = model.tokenize("the old man and the sea went")
    with mtpstream.init(model, n_draft=3, n_ctx=512, **REPLAY) as mtp:
        for wait in (0.001, 0.003, 0.007, 0.015):
            with anyio.move_on_after(wait):
                await collect(mtp, prompt, max_tokens=200)
            async for ev in mtp.stream_events(prompt, max_tokens=200):
                if isinstance(ev, mtpstream.TokenEvent) and ev.token_id % 3 == 0:
                    break
            ids, _ = await collect(mtp, prompt, max_tokens=60)
            assert_plain_greedy_modulo_near_ties(model_paths["qwen35-random"], prompt, ids)


@pytest.mark.asyncio
async def test_seeded_sampling_equals_plain_decoding(rm: OracleModels) -> None:
    model = rm.get("qwen35")
    prompt = model.tokenize("once upon a time")
    for seed in (0, 1):
        opts: dict[str, Any] = {"max_tokens": 100, "temp": 0.8, "seed": seed, "top_k": 40}
        with mtpstream.init(model, n_draft=0, n_ctx=512, **EXACT) as plain:
            base, _ = await collect(plain, prompt, **opts)
        with mtpstream.init(model, n_draft=3, n_ctx=512, **REPLAY) as mtp:
            ids, _ = await collect(mtp, prompt, **opts)
        assert ids == base, seed


@pytest.mark.parametrize("n_seq", [1, 4])
def test_replay_keeps_less_state_than_snapshots(rm: OracleModels, n_seq: int) -> None:
    """Snapshots keep n_draft + 1 recurrent states per sequence; replay keeps two."""
    model = rm.get("qwen35")
    with (
        mtpstream.init(model, n_draft=3, n_ctx=512, n_seq=n_seq, rollback="snapshots") as snap,
        mtpstream.init(model, n_draft=3, n_ctx=512, n_seq=n_seq, rollback="replay") as replay,
    ):
        assert replay.state_bytes < snap.state_bytes


@pytest.mark.parametrize("bad", ["bogus", 1, None, "Replay"])
def test_rollback_is_validated(rm: OracleModels, bad: object) -> None:
    with pytest.raises(mtpstream.InvalidOptionError) as info:
        mtpstream.init(rm.get("qwen35"), n_draft=3, rollback=bad)
    assert info.value.field == "rollback"


def test_auto_takes_snapshots_with_one_sequence(rm: OracleModels) -> None:
    """The default: with one sequence snapshots are never far behind (measured) and
    nothing is timed."""
    with mtpstream.init(rm.get("qwen35"), n_draft=3, n_ctx=256) as mtp:
        assert (mtp.rollback, mtp.rollback_verify_cost_ratio) == ("snapshots", 0.0)
    with mtpstream.init(rm.get("qwen35"), n_draft=0, n_ctx=256) as plain:
        assert plain.rollback is None  # no drafts: nothing to roll back
    for explicit in ("replay", "snapshots"):
        with mtpstream.init(rm.get("qwen35"), n_draft=3, n_ctx=256, n_seq=2, rollback=explicit) as mtp:
            assert (mtp.rollback, mtp.rollback_verify_cost_ratio) == (explicit, 0.0)


@pytest.mark.asyncio
@pytest.mark.parametrize("arch", ARCHS)
async def test_auto_with_several_sequences_measures_and_stays_exact(rm: OracleModels, arch: str) -> None:
    """With several sequences init times both verifies and picks by the ratio; whichever
    it picks (it depends on the machine), every stream equals plain decoding and its
    acceptance is the simulation's for that rollback."""
    model, spec = rm.get(arch), rm.spec(arch)
    prompts = prompts_for(model, spec)
    with mtpstream.init(model, n_draft=3, n_ctx=512, n_seq=4, **EXACT) as mtp:
        ratio, chosen = mtp.rollback_verify_cost_ratio, mtp.rollback
        assert ratio > 0.0
        assert chosen == ("replay" if ratio < 0.95 else "snapshots")
        got = await together(mtp, [(p, {"max_tokens": 80}) for p in prompts])
    for prompt, (ids, done) in zip(prompts, got, strict=True):
        exp = expected_acceptance(spec, prompt, n_draft=3, n_tokens=80, rollback=chosen)
        assert ids == [t for t in exp.tokens if t != spec.eos_token_id]
        usage = done.usage
        assert (usage.drafts_accepted, usage.drafts_generated) == (exp.drafts_accepted, exp.drafts_generated)
