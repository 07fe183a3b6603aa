"""Sessions: reuse, cancellation, stats while streaming, FIFO, busy, concurrency, trio."""

from __future__ import annotations

import gc
import threading
import time

import anyio
import pytest

import mtpstream

from conftest import EXACT, Models, collect

PROMPT = "the river runs"


@pytest.mark.asyncio
async def test_same_call_twice_gives_same_output_and_stats(oracle: mtpstream.Model) -> None:
    with mtpstream.init(oracle, n_draft=3, n_ctx=512, **EXACT) as mtp:
        s0 = mtp.stats()
        a, done_a = await collect(mtp, PROMPT, max_tokens=96)
        s1 = mtp.stats()
        b, done_b = await collect(mtp, PROMPT, max_tokens=96)
        s2 = mtp.stats()
    assert a == b
    assert done_a.usage == done_b.usage
    for field in ("iters", "drafts_generated", "drafts_accepted", "tokens_emitted"):
        assert getattr(s1, field) - getattr(s0, field) == getattr(s2, field) - getattr(s1, field), field


@pytest.mark.asyncio
async def test_generate_and_stream_agree(oracle: mtpstream.Model) -> None:
    with mtpstream.init(oracle, n_draft=2, n_ctx=512) as mtp:
        text = await mtp.generate(PROMPT, max_tokens=40)
        pieces = [p async for p in mtp.stream(PROMPT, max_tokens=40)]
    assert text and "".join(pieces) == text
    assert all(pieces)


async def _reference(model: mtpstream.Model, prompt: str, n: int) -> list[int]:
    with mtpstream.init(model, n_draft=3, n_ctx=512, **EXACT) as fresh:
        ids, _ = await collect(fresh, prompt, max_tokens=n)
    return ids


@pytest.mark.asyncio
async def test_break_at_every_index_then_next_call_is_clean(oracle: mtpstream.Model) -> None:
    ref = await _reference(oracle, PROMPT, 48)
    with mtpstream.init(oracle, n_draft=3, n_ctx=512, **EXACT) as mtp:
        for stop_at in range(11):
            seen = 0
            async for ev in mtp.stream_events(PROMPT, max_tokens=400):
                if isinstance(ev, mtpstream.TokenEvent):
                    if seen == stop_at:
                        break
                    seen += 1
            ids, _ = await collect(mtp, PROMPT, max_tokens=48)
            assert ids == ref, f"after break at {stop_at}"


@pytest.mark.asyncio
async def test_cancel_scope_and_timeout_then_next_call_is_clean(oracle: mtpstream.Model) -> None:
    ref = await _reference(oracle, PROMPT, 48)
    with mtpstream.init(oracle, n_draft=3, n_ctx=512, **EXACT) as mtp:
        for stop_at in range(11):
            with anyio.CancelScope() as scope:
                seen = 0
                async for ev in mtp.stream_events(PROMPT, max_tokens=400):
                    if isinstance(ev, mtpstream.TokenEvent):
                        if seen == stop_at:
                            scope.cancel()
                        seen += 1
            assert scope.cancelled_caught
            ids, _ = await collect(mtp, PROMPT, max_tokens=48)
            assert ids == ref, f"after cancel at {stop_at}"
        # a timeout far below one decode step fires before any event arrives
        with pytest.raises(TimeoutError):
            await collect(mtp, PROMPT, max_tokens=400, timeout=0.001)
        ids, _ = await collect(mtp, PROMPT, max_tokens=48)
        assert ids == ref


@pytest.mark.asyncio
async def test_abandoned_stream_stops_the_native_loop(oracle: mtpstream.Model) -> None:
    with mtpstream.init(oracle, n_draft=3, n_ctx=4096) as mtp:
        agen = mtp.stream_events(PROMPT, max_tokens=3000)
        async for ev in agen:
            if isinstance(ev, mtpstream.TokenEvent):
                break
        await agen.aclose()  # type: ignore[attr-defined]
        after = mtp.stats().tokens_emitted
        await anyio.sleep(0.2)
        assert mtp.stats().tokens_emitted == after
        assert after < 3000


@pytest.mark.asyncio
async def test_stats_polled_while_streaming(oracle: mtpstream.Model) -> None:
    thread_samples: list[mtpstream.MTPStats] = []
    task_samples: list[mtpstream.MTPStats] = []
    latencies: list[float] = []
    stop = threading.Event()

    def poll_from_thread() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            thread_samples.append(mtp.stats())
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.0005)

    # the collector's pauses (a full pass over a long test session's objects took
    # 0.24 s once) are not what this measures: stats() taking no lock the worker holds
    gc.collect()
    gc.disable()
    with mtpstream.init(oracle, n_draft=3, n_ctx=2048) as mtp:
        th = threading.Thread(target=poll_from_thread)
        th.start()
        try:
            async with anyio.create_task_group() as tg:

                async def poll_from_task() -> None:
                    while not stop.is_set():
                        task_samples.append(mtp.stats())
                        await anyio.sleep(0.0005)

                tg.start_soon(poll_from_task)
                await collect(mtp, PROMPT, max_tokens=1500)
                stop.set()
        finally:
            stop.set()
            th.join()
            gc.enable()
    for samples in (thread_samples, task_samples):
        assert len(samples) > 10
        for field in ("iters", "drafts_generated", "drafts_accepted", "tokens_emitted"):
            values = [getattr(s, field) for s in samples]
            assert values == sorted(values), field
    # a lock-free read: the typical call is far below 1 ms; the worst case includes
    # waiting for the GIL (switch interval 5 ms) on a loaded 2-core machine
    latencies.sort()
    assert latencies[len(latencies) // 2] < 0.001
    assert latencies[-1] < 0.1


@pytest.mark.asyncio
async def test_concurrent_calls_run_in_fifo_order(oracle: mtpstream.Model) -> None:
    order: list[int] = []
    with mtpstream.init(oracle, n_draft=2, n_ctx=512) as mtp:

        async def call(i: int) -> None:
            async for ev in mtp.stream_events(PROMPT, max_tokens=30):
                if isinstance(ev, mtpstream.TokenEvent):
                    order.append(i)

        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(call, i)
                await anyio.sleep(0.01)
    assert order == sorted(order)
    assert len(order) == 90


@pytest.mark.asyncio
async def test_wait_false_raises_session_busy(oracle: mtpstream.Model) -> None:
    with mtpstream.init(oracle, n_draft=2, n_ctx=4096) as mtp:
        first = mtp.stream_events(PROMPT, max_tokens=2000)
        await first.__anext__()
        with pytest.raises(mtpstream.SessionBusyError):
            await mtp.stream_events(PROMPT, max_tokens=5, wait=False).__anext__()
        await first.aclose()  # type: ignore[attr-defined]
        ids, done = await collect(mtp, PROMPT, max_tokens=5, wait=False)
        assert len(ids) == 5 and isinstance(done, mtpstream.DoneEvent)


@pytest.mark.asyncio
async def test_two_sessions_on_one_model_in_parallel(models: Models) -> None:
    model = models["qwen35-oracle"]
    ref = await _reference(model, PROMPT, 64)
    results: dict[int, list[int]] = {}
    with (
        mtpstream.init(model, n_draft=3, n_ctx=512, **EXACT) as a,
        mtpstream.init(model, n_draft=3, n_ctx=512, **EXACT) as b,
    ):

        async def run(i: int, s: mtpstream.MTP) -> None:
            results[i], _ = await collect(s, PROMPT, max_tokens=64)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, 0, a)
            tg.start_soon(run, 1, b)
    assert results[0] == ref and results[1] == ref


@pytest.mark.asyncio
async def test_close_cancels_and_rejects_further_calls(oracle: mtpstream.Model) -> None:
    mtp = mtpstream.init(oracle, n_draft=3, n_ctx=4096)
    stream = mtp.stream_events(PROMPT, max_tokens=3000)
    await stream.__anext__()
    mtp.close()
    with pytest.raises(mtpstream.SessionClosedError):
        async for _ in stream:
            pass
    with pytest.raises(mtpstream.SessionClosedError):
        await mtp.generate(PROMPT, max_tokens=4)
    with pytest.raises(mtpstream.SessionClosedError):
        mtp.stats()
    mtp.close()  # idempotent


@pytest.mark.asyncio
async def test_stats_events_and_terminal_event(oracle: mtpstream.Model) -> None:
    with mtpstream.init(oracle, n_draft=3, n_ctx=512) as mtp:
        events = [ev async for ev in mtp.stream_events(PROMPT, max_tokens=40, emit_stats_every=8)]
    kinds = [type(ev).__name__ for ev in events]
    assert kinds.count("StatsEvent") == 5
    assert kinds.count("TokenEvent") == 40
    assert kinds[-1] == "DoneEvent" and kinds.count("DoneEvent") == 1
    done = events[-1]
    assert isinstance(done, mtpstream.DoneEvent) and done.finish_reason == "length"
    assert done.stats.tokens_emitted == 40


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_trio_stream_cancel_and_reuse(oracle: mtpstream.Model, anyio_backend: str) -> None:
    ref = await _reference(oracle, PROMPT, 32)
    with mtpstream.init(oracle, n_draft=3, n_ctx=512, **EXACT) as mtp:
        with anyio.move_on_after(0.0005):
            async for _ in mtp.stream_events(PROMPT, max_tokens=3000):
                pass
        ids, _ = await collect(mtp, PROMPT, max_tokens=32)
        assert ids == ref
        text = await mtp.generate(PROMPT, max_tokens=32)
        assert text == oracle.detokenize(ref)


@pytest.mark.asyncio
async def test_break_out_of_text_stream_cancels_at_once(oracle: mtpstream.Model) -> None:
    with mtpstream.init(oracle, n_draft=3, n_ctx=4096) as mtp:
        async for _piece in mtp.stream(PROMPT, max_tokens=3000):
            break
        ids, _ = await collect(mtp, PROMPT, max_tokens=8)
        assert len(ids) == 8
        # the abandoned call stopped long before its 3000 tokens
        assert mtp.stats().tokens_emitted < 1000
