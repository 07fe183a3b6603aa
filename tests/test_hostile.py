"""Hostile use: abandoned and shared streams, descriptor leaks, fork, interpreter exit,
grammars llama.cpp cannot survive, out-of-range options and clear messages.

Cases that could abort or hang the process run in a subprocess with a watchdog.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

import mtpstream
from mtpstream import _runtime as runtime_module
from mtpstream import _stream as stream_module
from mtpstream.testing import make_model

from conftest import EXACT, Models, collect, run_python

PROMPT = "we walked along the river"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ------------------------------------------------------------------ 1. unread streams


@pytest.mark.asyncio
async def test_a_kept_but_unread_stream_names_itself_to_the_waiting_call(
    oracle: mtpstream.Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream_module, "_QUEUED_WARN_S", 0.5)
    with mtpstream.init(oracle, n_draft=3, n_ctx=2048) as mtp:
        expected = await mtp.generate(PROMPT, max_tokens=10)
        it = mtp.stream(PROMPT, max_tokens=1500)
        async for _ in it:
            break  # `it` is kept: it still holds the session
        with (
            pytest.warns(RuntimeWarning, match="still open but not being read"),
            pytest.raises(mtpstream.SessionBusyError, match="queued behind") as info,
        ):
            await mtp.generate(PROMPT, max_tokens=10, timeout=1.5)
        assert "aclose" in str(info.value)
        await it.aclose()
        await it.aclose()  # idempotent
        assert await mtp.generate(PROMPT, max_tokens=10) == expected


@pytest.mark.asyncio
async def test_streams_are_async_context_managers(oracle: mtpstream.Model) -> None:
    with mtpstream.init(oracle, n_draft=3, n_ctx=2048) as mtp:
        expected = await mtp.generate(PROMPT, max_tokens=10)
        async with mtp.stream(PROMPT, max_tokens=1500) as s:
            async for _ in s:
                break
        async with mtp.stream_events(PROMPT, max_tokens=1500) as e:
            async for _ in e:
                break
        with anyio.fail_after(10):  # nothing holds the session any more
            assert await mtp.generate(PROMPT, max_tokens=10) == expected


# ------------------------------------------------------------------ 2. two readers


@pytest.mark.asyncio
async def test_a_second_reader_gets_an_error_and_the_first_finishes(oracle: mtpstream.Model) -> None:
    with mtpstream.init(oracle, n_draft=3, n_ctx=2048) as mtp:
        expected = await mtp.generate(PROMPT, max_tokens=200)
        stream = mtp.stream(PROMPT, max_tokens=200)
        pieces: list[str] = []
        second: list[BaseException] = []

        async def first() -> None:
            async for piece in stream:
                pieces.append(piece)

        async def intruder() -> None:
            await anyio.sleep(0)
            try:
                await stream.__anext__()
            except BaseException as exc:  # recorded and checked below
                second.append(exc)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(first)
                tg.start_soon(intruder)
        assert len(second) == 1 and isinstance(second[0], mtpstream.SessionBusyError)
        assert "another task" in str(second[0])
        assert "".join(pieces) == expected


@pytest.mark.asyncio
async def test_aclose_from_another_task_ends_the_reader_quietly(oracle: mtpstream.Model) -> None:
    with mtpstream.init(oracle, n_draft=3, n_ctx=4096) as mtp:
        expected = await mtp.generate(PROMPT, max_tokens=20)
        stream = mtp.stream_events(PROMPT, max_tokens=3000)
        seen: list[Any] = []

        async def reader() -> None:
            async for ev in stream:
                seen.append(ev)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                while not seen:
                    await anyio.sleep(0.001)
                await stream.aclose()  # type: ignore[attr-defined]
        assert 0 < len(seen) < 3000
        assert await mtp.generate(PROMPT, max_tokens=20) == expected


# ------------------------------------------------------------------ 3. descriptors


@pytest.mark.asyncio
async def test_rejected_options_leak_no_descriptor(oracle: mtpstream.Model) -> None:
    bad: list[tuple[dict[str, Any], str]] = [
        ({"max_tokens": 2**31}, "max_tokens"),
        ({"top_k": 2**31}, "top_k"),
        ({"penalty_last_n": 2**40}, "penalty_last_n"),
        ({"emit_stats_every": 2**31}, "emit_stats_every"),
        ({"stop": ["a\ud800"]}, "stop"),
        ({"grammar": 'root ::= "\ud800"'}, "grammar"),
        ({"wait": "no"}, "wait"),
    ]
    with mtpstream.init(oracle, n_draft=3, n_ctx=256) as mtp:
        before = open_fds()
        for _ in range(40):
            for opts, field in bad:
                with pytest.raises(mtpstream.InvalidOptionError) as info:
                    await mtp.generate(PROMPT, **opts)
                assert info.value.field == field
            with pytest.raises(mtpstream.InvalidOptionError) as info:
                await mtp.generate("a lone \udc00 surrogate")
            assert info.value.field == "prompt"
        assert open_fds() <= before + 2
        assert await mtp.generate(PROMPT, max_tokens=4)
    with pytest.raises(mtpstream.InvalidOptionError) as info:
        mtpstream.init(oracle, n_ctx=2**31)
    assert info.value.field == "n_ctx"


@pytest.mark.asyncio
async def test_a_failed_submit_leaks_no_descriptor(
    oracle: mtpstream.Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error after the wake-up socket exists but before native code owns it (here a
    conversion error at submit) closes both ends."""
    with mtpstream.init(oracle, n_draft=3, n_ctx=256) as mtp:
        monkeypatch.setattr(runtime_module, "get", lambda: object())
        before = open_fds()
        for _ in range(50):
            with pytest.raises(TypeError):
                await mtp.generate(PROMPT, max_tokens=2)
        assert open_fds() <= before + 2
        monkeypatch.undo()
        assert await mtp.generate(PROMPT, max_tokens=2)


# ------------------------------------------------------------------ 4. fork


def test_generation_works_in_a_forked_child(model_paths: dict[str, Path]) -> None:
    path = model_paths["qwen35-oracle"]
    proc = run_python(
        f"""
        import os, sys, anyio, mtpstream
        model = mtpstream.load_model({str(path)!r})
        async def gen(m):
            with mtpstream.init(m, n_draft=3, n_ctx=256) as mtp:
                return await mtp.generate("we walked along", max_tokens=12)
        parent = anyio.run(gen, model)
        pid = os.fork()
        if pid == 0:
            try:
                same = anyio.run(gen, model) == parent
                fresh = anyio.run(gen, mtpstream.load_model({str(path)!r})) == parent
                os._exit(0 if same and fresh else 3)
            except BaseException as exc:
                print("child failed:", repr(exc), file=sys.stderr)
                os._exit(4)
        import time
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                sys.exit(os.waitstatus_to_exitcode(status))
            time.sleep(0.05)
        os.kill(pid, 9)  # the child hangs: fail, and leave nothing behind
        os.waitpid(pid, 0)
        sys.exit(5)
        """,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------ 5. exit


# Delays at which the main thread exits. The generate and tokenize cases step finely
# through the first 0.12 s, where daemon threads leave native calls most often (a
# thread on its way back to the GIL when finalization began was killed inside C++
# frames, and std::terminate aborted the process in a few percent of exits).
_EXIT_DELAYS = (0.0, 0.03, 0.06, 0.1, 0.15, 0.2, 0.3, 0.5)
_EXIT_DELAYS_FINE = (*(i / 100 for i in range(13)), 0.15, 0.2, 0.3, 0.5)


def _exit_while_in_native_code(path: Path, phase: str, delay: float) -> None:
    """Four daemon threads loop over load_model / init / a generation (or tokenize, a
    short call that releases the GIL); the main thread exits after ``delay`` s. The
    run exits 0, with nothing aborting meanwhile."""
    proc = run_python(
        f"""
        import functools, threading, time, anyio, mtpstream
        model = mtpstream.load_model({str(path)!r})
        def work():
            while {phase!r} == "tokenize":
                model.tokenize("we walked along the shore " * 20)
            while True:
                m = mtpstream.load_model({str(path)!r}) if {phase!r} == "load" else model
                mtp = mtpstream.init(m, n_draft=3, n_ctx=512)
                if {phase!r} == "generate":
                    anyio.run(functools.partial(mtp.generate, "we walked along", max_tokens=300))
                mtp.close()
        for _ in range(4):
            threading.Thread(target=work, daemon=True).start()
        time.sleep({delay})
        """,
        timeout=60,
    )
    assert proc.returncode == 0, f"delay {delay}: exit {proc.returncode}\n{proc.stderr[-2000:]}"
    for sign in ("terminate called", "GGML_ASSERT", "ptrace", "Aborted", "FATAL", "leaked"):
        assert sign not in proc.stderr, f"delay {delay}: {sign!r} in\n{proc.stderr[-2000:]}"


@pytest.mark.parametrize("phase", ["load", "init", "generate", "tokenize"])
def test_interpreter_exit_while_daemon_threads_are_in_native_code(
    model_paths: dict[str, Path], phase: str
) -> None:
    delays = _EXIT_DELAYS_FINE if phase in ("generate", "tokenize") else _EXIT_DELAYS
    for delay in delays:
        _exit_while_in_native_code(model_paths["qwen35-oracle"], phase, delay)


@pytest.mark.slow
def test_interpreter_exit_during_generations_many_times(model_paths: dict[str, Path]) -> None:
    """The generate case 120 times over 0-0.12 s: the abort it guards against came in
    about 4% of exits, which this catches with ~99% probability (the default tier's
    17 exits: ~50%)."""
    for i in range(120):
        _exit_while_in_native_code(model_paths["qwen35-oracle"], "generate", (i % 13) / 100)


def test_runtime_shutdown_ends_running_and_queued_calls(model_paths: dict[str, Path]) -> None:
    """What the atexit handler does first (the worker's shutdown) ends a running and a
    queued call with their cancellation, and close() then returns: before, the worker
    left them behind, their readers waited forever and close() blocked exit."""
    path = model_paths["qwen35-oracle"]
    proc = run_python(
        f"""
        import anyio, json, mtpstream
        from mtpstream import _runtime
        model = mtpstream.load_model({str(path)!r})
        mtp = mtpstream.init(model, n_draft=3, n_ctx=512, n_seq=1)
        outcomes = {{}}
        async def read(name, stream, started=None):
            try:
                async for _ in stream:
                    if started is not None:
                        started.set()
                outcomes[name] = "ended"
            except mtpstream.SessionClosedError:
                outcomes[name] = "closed"
        async def main():
            running = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(read, "running", mtp.stream_events("we walked along", max_tokens=400), running)
                await running.wait()
                tg.start_soon(read, "queued", mtp.stream_events("we walked along", max_tokens=400))
                while mtp.stats().queued < 1:  # the second call is submitted, behind the first
                    await anyio.sleep(0.01)
                await anyio.to_thread.run_sync(_runtime.get().shutdown)
        anyio.run(main)
        mtp.close()
        print(json.dumps(outcomes))
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"running": "closed", "queued": "closed"}


# ------------------------------------------------------------------ 6. grammars


def test_grammars_llama_cpp_cannot_survive(model_paths: dict[str, Path]) -> None:
    path = model_paths["qwen35-oracle"]
    proc = run_python(
        f"""
        import anyio, json, mtpstream
        model = mtpstream.load_model({str(path)!r})
        out = {{}}
        async def main():
            with mtpstream.init(model, n_draft=3, n_ctx=256) as mtp:
                for name, g, temp in [
                    ("nul", 'root ::= "\\\\x00"', 0.8),
                    ("nul-greedy", 'root ::= "\\\\x00"', 0.0),
                    ("a-then-nul", 'root ::= "a" [\\\\x00]', 0.8),
                    ("min-above-max", 'root ::= "a"{{5,3}}', 0.8),
                    ("huge-repeat", 'root ::= "a"{{1,99999999}}', 0.8),
                    ("unparsable", 'root ::= (', 0.0),
                ]:
                    try:
                        await mtp.generate("we walked along", grammar=g, temp=temp, seed=1, max_tokens=8)
                        out[name] = ["ok", ""]
                    except mtpstream.MTPError as exc:
                        out[name] = [type(exc).__name__, str(exc), getattr(exc, "field", None)]
                out["after"] = await mtp.generate("we walked along", max_tokens=4)
        anyio.run(main)
        print(json.dumps(out))
        """,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = __import__("json").loads(proc.stdout.strip().splitlines()[-1])
    for name in ("nul", "nul-greedy", "a-then-nul"):
        assert out[name][0] == "GenerationError" and "grammar admits no token" in out[name][1], out[name]
    assert out["min-above-max"][:1] == ["InvalidOptionError"] and out["min-above-max"][2] == "grammar"
    assert "minimum above its maximum" in out["min-above-max"][1]
    assert out["huge-repeat"][0] == "InvalidOptionError" and out["huge-repeat"][2] == "grammar"
    assert out["unparsable"][0] == "InvalidOptionError" and out["unparsable"][2] == "grammar"
    assert "error parsing grammar: expecting" in out["unparsable"][1]  # llama.cpp's own parse message
    assert out["after"]


# ------------------------------------------------------------------ 8. threads, 9. messages


@pytest.mark.parametrize("field", ["n_threads", "n_threads_batch"])
def test_thread_counts_are_bounded(oracle: mtpstream.Model, field: str) -> None:
    for bad in (5000, 10**6):
        with pytest.raises(mtpstream.InvalidOptionError) as info:
            mtpstream.init(oracle, **{field: bad})
        assert info.value.field == field


def test_messages_show_what_the_user_passed(oracle: mtpstream.Model) -> None:
    with pytest.raises(mtpstream.InvalidOptionError) as info:
        mtpstream.init(oracle, n_draft="AUTO")
    assert info.value.field == "n_draft" and "n_draft.int" not in str(info.value)
    assert "'auto'" in str(info.value) and "'AUTO'" in str(info.value)
    with pytest.raises(mtpstream.InvalidOptionError) as info:
        mtpstream.init(oracle, type_v="q8_0", flash_attn=False)
    assert info.value.field == "type_v" and "{" not in str(info.value)
    with pytest.raises(mtpstream.InvalidOptionError) as info:
        mtpstream.init(oracle, n_draft=3, n_batch=2)
    assert info.value.field == "n_batch"
    with pytest.raises(mtpstream.InvalidOptionError) as info:
        mtpstream.init(oracle, n_draft=3, n_ctx=3)
    assert info.value.field == "n_ctx" and "n_batch" in str(info.value)


@pytest.mark.asyncio
async def test_stop_must_be_text(oracle: mtpstream.Model) -> None:
    with (
        mtpstream.init(oracle, n_draft=0, n_ctx=256) as mtp,
        pytest.raises(mtpstream.InvalidOptionError) as info,
    ):
        await mtp.generate(PROMPT, stop=5)
    assert info.value.field == "stop" and "a str or a list of str" in str(info.value)


def test_a_closed_model_always_says_so(model_paths: dict[str, Path]) -> None:
    model = mtpstream.load_model(model_paths["qwen35-oracle"])
    model.close()
    for call in (lambda: model.tokenize("a"), lambda: model.n_vocab, lambda: model.detokenize([1])):
        with pytest.raises(mtpstream.SessionClosedError, match="the model is closed"):
            call()
    with pytest.raises(mtpstream.SessionClosedError):
        mtpstream.init(model)


@pytest.mark.asyncio
async def test_tokenize_agrees_with_text_prompts(models: Models) -> None:
    model = models["qwen35-oracle"]
    text = "<|im_start|>user we walked along<|im_end|>"
    ids = model.tokenize(text)
    assert ids != model.tokenize(text, parse_special=False)
    with mtpstream.init(model, n_draft=2, n_ctx=256, **EXACT) as mtp:
        a, _ = await collect(mtp, text, max_tokens=6)
        b, _ = await collect(mtp, ids, max_tokens=6)
    assert a == b


# ------------------------------------------------------------------ 7. corrupted GGUFs


def _load_script(path: Path) -> str:
    return f"""
        import functools, anyio, mtpstream
        try:
            m = mtpstream.load_model({str(path)!r})
            with mtpstream.init(m, n_draft=2, n_ctx=128) as mtp:
                anyio.run(functools.partial(mtp.generate, "we walked along", max_tokens=4))
        except mtpstream.MTPError as exc:
            print(type(exc).__name__, exc)
        """


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"qwen35.nextn_predict_layers": 2**31}, "nextn_predict_layers"),
        ({"qwen35.ssm.inner_size": 1}, "ssm.inner_size"),
        ({"qwen35.attention.layer_norm_rms_epsilon": -1e-6}, "layer_norm_rms_epsilon"),
        ({"qwen35.attention.layer_norm_rms_epsilon": float("nan")}, "layer_norm_rms_epsilon"),
        ({"qwen35.block_count": 100000}, "block_count"),
        ("truncate token_type", "token_type"),
    ],
)
def test_corrupt_hyperparameters_are_named(tmp_path: Path, changes: Any, key: str) -> None:
    import gguf

    from gguf_edit import copy_with

    src = make_model(arch="qwen35", weights="oracle", size="tiny")
    if changes == "truncate token_type":
        types = gguf.GGUFReader(str(src)).get_field("tokenizer.ggml.token_type").contents()
        changes = {"tokenizer.ggml.token_type": types[:-7]}
    bad = copy_with(src, tmp_path / "bad.gguf", changes)
    with pytest.raises(mtpstream.ModelLoadError, match=key):
        mtpstream.load_model(bad)


def _variant(src: Path, dst: Path, seed: int) -> str:
    """A seeded corruption of ``src``: one hostile metadata value, or flipped header bytes."""
    import random

    import gguf

    from gguf_edit import copy_with

    rng = random.Random(seed)
    reader = gguf.GGUFReader(str(src))
    if seed % 4 == 3:  # raw bytes flipped in the metadata / tensor-info region
        data = bytearray(src.read_bytes())
        end = int(reader.tensors[0].data_offset)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(24, end)] ^= 1 << rng.randrange(8)
        dst.write_bytes(bytes(data))
        return "bytes"
    numeric = [
        k
        for k, f in reader.fields.items()
        if not k.startswith("GGUF.") and f.types and f.types[0] != gguf.GGUFValueType.STRING
    ]
    key = rng.choice(numeric)
    f = reader.fields[key]
    v = f.contents()
    vt = f.types[0]
    if vt == gguf.GGUFValueType.ARRAY:
        new: Any = v[: rng.randrange(1, max(2, len(v)))] if v else v  # GGUF has no empty arrays
    elif vt in (gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.FLOAT64):
        new = rng.choice([0.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e30, 1e-45])
    elif vt == gguf.GGUFValueType.BOOL:
        new = not v
    else:
        hi = {gguf.GGUFValueType.UINT8: 255, gguf.GGUFValueType.UINT16: 65535}.get(vt, 2**31 - 1)
        if vt in (gguf.GGUFValueType.UINT64, gguf.GGUFValueType.INT64):
            hi = 2**62
        if vt == gguf.GGUFValueType.UINT32:
            hi = 2**32 - 1
        new = rng.choice([0, 1, 2, 3, 7, 255, 65536, 2**31 - 1, hi, rng.randrange(0, hi)])
        new = min(new, hi)
    copy_with(src, dst, {key: new})
    return f"{key}={new!r}"[:80]


@pytest.mark.slow
def test_corruption_fuzz_never_aborts(tmp_path: Path) -> None:
    """200 seeded corruptions, each loaded, initialised and run in its own process."""
    from concurrent.futures import ThreadPoolExecutor

    src = make_model(arch="qwen35", weights="oracle", size="tiny")
    cases = []
    for seed in range(200):
        dst = tmp_path / f"v{seed}.gguf"
        cases.append((seed, _variant(src, dst, seed), dst))

    def run(case: tuple[int, str, Path]) -> tuple[int, str, int, str]:
        seed, what, path = case
        try:
            proc = run_python(_load_script(path), timeout=60, env={"MTPSTREAM_LOG_LEVEL": "CRITICAL"})
            return seed, what, proc.returncode, proc.stderr[-300:]
        except subprocess.TimeoutExpired:
            return seed, what, -999, "hung (watchdog)"

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, cases))
    failures = [r for r in results if r[2] != 0]
    assert not failures, "\n".join(f"seed {s} ({w}): exit {rc} {err}" for s, w, rc, err in failures)
