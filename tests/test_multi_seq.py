"""Many streams on one session (``n_seq``): every stream's output and acceptance equal
running it alone, for any mix of prompts, lengths, start times, options and
cancellations; one stream's failure ends only that stream; queueing, busy and
validation follow the number of sequences."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import mtpstream
from mtpstream.testing import expected_acceptance

from conftest import EXACT, OracleModels, collect, prompts_for, together

ARCHS = ("qwen35", "qwen35moe")


@pytest.fixture(scope="module")
def seqm() -> Any:
    m = OracleModels()
    yield m
    m.close()


async def alone(
    model: mtpstream.Model, prompt: list[int], n_draft: Any, rollback: str = "snapshots", **opts: Any
) -> tuple[list[int], Any]:
    with mtpstream.init(model, n_draft=n_draft, n_ctx=512, rollback=rollback, **EXACT) as mtp:
        return await collect(mtp, prompt, **opts)


@pytest.mark.asyncio
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("head", ["hidden", "kv", "token"])
@pytest.mark.parametrize("n_draft", [1, 3])
async def test_each_stream_equals_running_it_alone(
    seqm: OracleModels, arch: str, head: str, n_draft: int
) -> None:
    model, spec = seqm.get(arch, head), seqm.spec(arch, head)
    prompts = prompts_for(model, spec)
    lengths = [90, 60, 120, 45]
    with mtpstream.init(model, n_draft=n_draft, n_ctx=512, n_seq=4, **EXACT) as mtp:
        got = await together(mtp, [(p, {"max_tokens": n}) for p, n in zip(prompts, lengths, strict=True)])
        rollback = mtp.rollback  # rollback="auto": this machine's choice
    assert rollback in ("replay", "snapshots")
    for prompt, n, (ids, done) in zip(prompts, lengths, got, strict=True):
        exp = expected_acceptance(spec, prompt, n_draft=n_draft, n_tokens=n, rollback=rollback)
        assert ids == [t for t in exp.tokens if t != spec.eos_token_id]
        assert (done.usage.drafts_accepted, done.usage.drafts_generated) == (
            exp.drafts_accepted,
            exp.drafts_generated,
        )


@pytest.mark.asyncio
@pytest.mark.parametrize("arch", ARCHS)
async def test_staggered_starts_and_more_calls_than_sequences(seqm: OracleModels, arch: str) -> None:
    model, spec = seqm.get(arch), seqm.spec(arch)
    prompts = prompts_for(model, spec) * 2
    lengths = [70, 30, 100, 20, 55, 80, 15, 64]
    calls = [(p, {"max_tokens": n}) for p, n in zip(prompts, lengths, strict=True)]
    with mtpstream.init(model, n_draft=3, n_ctx=512, n_seq=3, **EXACT) as mtp:
        got = await together(mtp, calls, delays=[0.0, 0.01, 0.03, 0.0, 0.05, 0.02, 0.08, 0.0])
        st = mtp.stats()
        assert (st.active_sequences, st.queued) == (0, 0)
        assert st.n_seq == 3
    for (prompt, opts), (ids, _done) in zip(calls, got, strict=True):
        exp = expected_acceptance(spec, prompt, n_draft=3, n_tokens=opts["max_tokens"])
        assert ids == [t for t in exp.tokens if t != spec.eos_token_id]


@pytest.mark.asyncio
async def test_mixed_options_per_stream(seqm: OracleModels) -> None:
    """Each sequence keeps its own sampler chain, seed, grammar, stop strings and
    max_tokens: every stream equals the same call alone."""
    model, spec = seqm.get("qwen35"), seqm.spec("qwen35")
    chain_text = model.detokenize([spec.chain_start, *spec.chain(spec.chain_start, 30)])
    stop_word = chain_text.split()[6]
    grammar = 'root ::= [a-z ]+ "."'
    calls: list[tuple[list[int], dict[str, Any]]] = [
        ([spec.chain_start], {"max_tokens": 80}),
        ([spec.chain_start], {"max_tokens": 60, "temp": 0.9, "seed": 11, "top_k": 40}),
        ([spec.chain_start], {"max_tokens": 50, "stop": [stop_word]}),
        (model.tokenize("we walked along"), {"max_tokens": 40, "grammar": grammar}),
        ([spec.chain_start], {"max_tokens": 70, "penalty_repeat": 1.3}),
    ]
    with mtpstream.init(model, n_draft=3, n_ctx=512, n_seq=5, **EXACT) as mtp:
        got = await together(mtp, calls)
        rollback = mtp.rollback or "snapshots"  # rollback="auto": this machine's choice
    for (prompt, opts), (ids, done) in zip(calls, got, strict=True):
        ref_ids, ref_done = await alone(model, prompt, 3, rollback=rollback, **opts)
        assert ids == ref_ids, opts
        assert type(done) is type(ref_done)
        assert done.text == ref_done.text
        assert done.usage == ref_done.usage


@pytest.mark.asyncio
@pytest.mark.parametrize("arch", ARCHS)
async def test_auto_draft_per_sequence(seqm: OracleModels, arch: str) -> None:
    model, spec = seqm.get(arch), seqm.spec(arch)
    prompts = prompts_for(model, spec)
    with mtpstream.init(model, n_draft="auto", n_ctx=512, n_seq=4, **EXACT) as mtp:
        got = await together(mtp, [(p, {"max_tokens": 100}) for p in prompts])
    for prompt, (ids, _done) in zip(prompts, got, strict=True):
        # greedy output is exact whatever lengths "auto" picks
        exp = expected_acceptance(spec, prompt, n_draft=1, n_tokens=100)
        assert ids == [t for t in exp.tokens if t != spec.eos_token_id]


@pytest.mark.asyncio
async def test_a_cancelled_neighbour_changes_nothing(seqm: OracleModels) -> None:
    model, spec = seqm.get("qwen35"), seqm.spec("qwen35")
    prompts = prompts_for(model, spec)
    results: dict[int, Any] = {}

    async def full(i: int) -> None:
        results[i] = await collect(mtp, prompts[i], max_tokens=120)

    async def broken(n_break: int) -> None:
        n = 0
        async for ev in mtp.stream_events(prompts[1], max_tokens=500):
            if isinstance(ev, mtpstream.TokenEvent):
                n += 1
                if n == n_break:
                    break

    with mtpstream.init(model, n_draft=3, n_ctx=512, n_seq=3, **EXACT) as mtp:
        async with anyio.create_task_group() as tg:
            tg.start_soon(full, 0)
            tg.start_soon(broken, 7)
            tg.start_soon(full, 2)
            with anyio.move_on_after(0.05):  # cancelled by a scope while queued or running
                await collect(mtp, prompts[3], max_tokens=400)
        # the cancelled sequences' slots are free again
        assert mtp.stats().active_sequences == 0
        again = await collect(mtp, prompts[1], max_tokens=30)
    for i in (0, 2):
        exp = expected_acceptance(spec, prompts[i], n_draft=3, n_tokens=120)
        assert results[i][0] == [t for t in exp.tokens if t != spec.eos_token_id]
    exp = expected_acceptance(spec, prompts[1], n_draft=3, n_tokens=30)
    assert again[0] == [t for t in exp.tokens if t != spec.eos_token_id]


@pytest.mark.asyncio
async def test_one_streams_failure_ends_only_that_stream(seqm: OracleModels) -> None:
    """A grammar dead end and a full context end their own stream; the neighbours
    run on, exact."""
    model, spec = seqm.get("qwen35"), seqm.spec("qwen35")
    prompt = [spec.chain_start]
    # one letter, then only NUL, which no token of the vocabulary spells: a dead end
    dead_end = 'root ::= "a" [\\x00]'
    outcomes: dict[str, Any] = {}

    async def run(name: str, p: list[int], opts: dict[str, Any]) -> None:
        try:
            outcomes[name] = await collect(mtp, p, **opts)
        except mtpstream.MTPError as exc:
            outcomes[name] = exc

    long_prompt = [spec.chain_start, *spec.chain(spec.chain_start, 100)]
    with mtpstream.init(model, n_draft=3, n_ctx=128, n_seq=4, **EXACT) as mtp:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "a", prompt, {"max_tokens": 100})
            tg.start_soon(run, "grammar", prompt, {"max_tokens": 100, "grammar": dead_end})
            tg.start_soon(run, "full", long_prompt, {"max_tokens": 100})
            tg.start_soon(run, "b", model.tokenize("we walked along"), {"max_tokens": 90})
        assert isinstance(outcomes["grammar"], mtpstream.GenerationError)
        ids_full, done_full = outcomes["full"]
        assert done_full.finish_reason == "length"
        with mtpstream.init(model, n_draft=3, n_ctx=128, **EXACT) as one:
            ref_ids, ref_done = await collect(one, long_prompt, max_tokens=100)
        assert (ids_full, ref_done.finish_reason) == (ref_ids, "length")
        assert len(ids_full) < 100
        for name, p, n in (("a", prompt, 100), ("b", model.tokenize("we walked along"), 90)):
            exp = expected_acceptance(spec, p, n_draft=3, n_tokens=n)
            assert outcomes[name][0] == [t for t in exp.tokens if t != spec.eos_token_id], name
        # the session is still usable with all its sequences
        again = await together(mtp, [(prompt, {"max_tokens": 20})] * 4)
    exp = expected_acceptance(spec, prompt, n_draft=3, n_tokens=20)
    assert all(ids == [t for t in exp.tokens if t != spec.eos_token_id] for ids, _ in again)


@pytest.mark.asyncio
async def test_close_with_streams_in_flight_ends_them_all(seqm: OracleModels) -> None:
    model, spec = seqm.get("qwen35"), seqm.spec("qwen35")
    errors: list[BaseException] = []
    started = anyio.Event()

    async def reader() -> None:
        try:
            async for ev in mtp.stream_events([spec.chain_start], max_tokens=100_000):
                if isinstance(ev, mtpstream.TokenEvent):
                    started.set()
        except mtpstream.SessionClosedError as exc:
            errors.append(exc)

    mtp = mtpstream.init(model, n_draft=3, n_ctx=100_000, n_seq=3, **EXACT)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for _ in range(5):  # three running, two queued
                tg.start_soon(reader)
            await started.wait()
            await anyio.sleep(0.05)
            mtp.close()
    assert len(errors) == 5
    with pytest.raises(mtpstream.SessionClosedError):
        await collect(mtp, [spec.chain_start], max_tokens=3)


@pytest.mark.asyncio
async def test_wait_false_is_busy_only_when_every_sequence_is(seqm: OracleModels) -> None:
    model, spec = seqm.get("qwen35"), seqm.spec("qwen35")
    with mtpstream.init(model, n_draft=3, n_ctx=4096, n_seq=2, **EXACT) as mtp:
        first = mtp.stream_events([spec.chain_start], max_tokens=3000)
        second = mtp.stream_events([spec.chain_start], max_tokens=3000, wait=False)
        async with first, second:
            await first.__anext__()
            await second.__anext__()  # a second sequence was free
            st = mtp.stats()
            assert (st.active_sequences, st.queued) == (2, 0)
            with pytest.raises(mtpstream.SessionBusyError, match="all 2 sequences"):
                await mtp.stream_events([spec.chain_start], max_tokens=3, wait=False).__anext__()
        ids, _ = await collect(mtp, [spec.chain_start], max_tokens=5, wait=False)
        assert len(ids) == 5


@pytest.mark.asyncio
async def test_queued_calls_are_reported_and_run_in_fifo_order(seqm: OracleModels) -> None:
    model, spec = seqm.get("qwen35"), seqm.spec("qwen35")
    order: list[int] = []
    seen_queued: list[int] = []

    async def call(i: int) -> None:
        await collect(mtp, [spec.chain_start], max_tokens=40)
        order.append(i)

    with mtpstream.init(model, n_draft=3, n_ctx=512, n_seq=2, **EXACT) as mtp:
        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(call, i)
                await anyio.sleep(0.002)
            for _ in range(20):
                st = mtp.stats()
                assert st.active_sequences <= 2
                seen_queued.append(st.queued)
                await anyio.sleep(0.002)
    assert max(seen_queued) >= 1
    # equal work, so calls finish in pairs in the order they started
    assert sorted(order[:2]) == [0, 1] and sorted(order[2:4]) == [2, 3]


@pytest.mark.parametrize("bad", [0, 65, -1, "2", True, 2.0, None])
def test_n_seq_is_validated(seqm: OracleModels, bad: object) -> None:
    with pytest.raises(mtpstream.InvalidOptionError) as info:
        mtpstream.init(seqm.get("qwen35"), n_seq=bad)  # type: ignore[arg-type]
    assert info.value.field == "n_seq"


def test_state_memory_grows_with_n_seq(seqm: OracleModels) -> None:
    model = seqm.get("qwen35")
    sizes = []
    for n_seq in (1, 2, 4):
        with mtpstream.init(model, n_draft=3, n_ctx=256, n_seq=n_seq) as mtp:
            assert mtp.n_seq == n_seq
            assert mtp.stats().state_bytes == mtp.state_bytes > 0
            sizes.append(mtp.state_bytes)
    assert sizes[0] < sizes[1] < sizes[2]
    # the per-sequence context is n_ctx: a prompt longer than it is refused
    with (
        mtpstream.init(model, n_draft=3, n_ctx=64, n_seq=4) as mtp,
        pytest.raises(mtpstream.ContextOverflowError),
    ):
        anyio.run(collect, mtp, list(range(3, 70)))


@pytest.mark.asyncio
async def test_acceptance_rate_never_exceeds_one_while_polled(seqm: OracleModels) -> None:
    model, spec = seqm.get("qwen35", "token"), seqm.spec("qwen35", "token")
    rates: list[float] = []
    with mtpstream.init(model, n_draft=4, n_ctx=512, n_seq=4, **EXACT) as mtp:
        done = False

        async def poll() -> None:
            while not done:
                st = mtp.stats()
                rates.append(st.acceptance_rate)
                assert st.drafts_accepted <= st.drafts_generated
                await anyio.sleep(0)

        async with anyio.create_task_group() as tg:
            tg.start_soon(poll)
            await together(mtp, [([spec.chain_start], {"max_tokens": 150})] * 4)
            done = True
    assert rates and max(rates) <= 1.0
