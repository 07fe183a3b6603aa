"""The low-level draft session: a loop written by hand over Context + DraftSession
gives exactly plain decoding's tokens and the engine's acceptance; every misuse is a
typed error; lifetimes and threads cannot crash the process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import mtpstream
from mtpstream import Batch, Context, DraftSession, GenerationError, InvalidOptionError, SessionClosedError
from mtpstream.testing import expected_acceptance

from conftest import EXACT, Models, OracleModels, collect, run_python


@pytest.fixture(scope="module")
def heads() -> Iterator[OracleModels]:
    h = OracleModels()
    yield h
    h.close()


def greedy(row: Any) -> int:
    return int(np.argmax(row))


class Loop:
    """One sequence of a hand-written greedy speculative loop."""

    def __init__(self, seq: int, prompt: list[int]) -> None:
        self.seq, self.prompt = seq, prompt
        self.out: list[int] = []
        self.last, self.n_past = -1, 0
        self.drafted = self.accepted = 0

    def prefill(self, target: Context, session: DraftSession) -> None:
        batch = Batch(len(self.prompt))
        batch.add_sequence(self.prompt, 0, self.seq)
        target.decode(batch)
        session.process(batch)
        self.last, self.n_past = greedy(target.logits(len(self.prompt) - 1)), len(self.prompt)
        self.out = [self.last]

    def round(self, target: Context, session: DraftSession, n_draft: int, max_tokens: int) -> None:
        k = min(n_draft, max_tokens - len(self.out) - 1)
        drafts = session.draft(self.seq, self.n_past, self.last, n_draft=k)
        assert len(drafts) == k
        batch = Batch(k + 1)
        for i, t in enumerate([self.last, *drafts]):
            batch.add(t, self.n_past + i, self.seq, logits=True)
        target.decode(batch)
        session.process(batch)
        n_acc, token = 0, greedy(target.logits(0))
        while n_acc < k and token == drafts[n_acc]:
            n_acc += 1
            token = greedy(target.logits(n_acc))
        session.accept(self.seq, n_acc)
        if n_acc < k:
            target.remove(self.seq, self.n_past + n_acc + 1)
        self.out += [*drafts[:n_acc], token]
        self.drafted, self.accepted = self.drafted + k, self.accepted + n_acc
        self.n_past, self.last = self.n_past + n_acc + 1, token


def contexts(
    model: mtpstream.Model, head: mtpstream.Model, n_seq: int, n_draft: int, n_ctx: int = 1024
) -> tuple[Context, Context, DraftSession]:
    target = Context(model, "target", n_ctx=n_ctx, n_seq=n_seq, n_rs_seq=n_draft, **EXACT)
    draft = Context(head, "mtp", n_ctx=n_ctx, n_seq=n_seq, **EXACT)
    return target, draft, DraftSession(target, draft, n_seq=n_seq, n_draft_max=n_draft)


def run_loops(
    model: mtpstream.Model, head: mtpstream.Model, prompts: list[list[int]], n_draft: int, max_tokens: int
) -> list[Loop]:
    target, draft, session = contexts(model, head, len(prompts), n_draft)
    with target, draft, session:
        loops = [Loop(s, p) for s, p in enumerate(prompts)]
        for loop in loops:
            loop.prefill(target, session)
        while any(len(loop.out) < max_tokens for loop in loops):
            for loop in loops:  # the sequences take turns, round by round
                if len(loop.out) < max_tokens:
                    loop.round(target, session, n_draft, max_tokens)
    return loops


async def engine_runs(
    model: mtpstream.Model, head: mtpstream.Model, prompts: list[list[int]], n_draft: int, n: int
) -> list[tuple[list[int], Any]]:
    sidecar = head if head is not model else None
    with mtpstream.init(
        model, n_draft=n_draft, n_ctx=1024, draft_model=sidecar, rollback="snapshots", **EXACT
    ) as mtp:
        return [await collect(mtp, p, max_tokens=n) for p in prompts]


def prompts_of(model: mtpstream.Model, spec: Any, n_seq: int) -> list[list[int]]:
    chain = [spec.chain_start, *spec.chain(spec.chain_start, 6)]
    return [[*model.tokenize("we walked along"), spec.chain_start], chain, [spec.chain_start]][:n_seq]


async def check_loop(
    heads: OracleModels, arch: str, head: str, n_draft: int, n_seq: int, sidecar: bool = False, n: int = 60
) -> None:
    model, spec = heads.get(arch, head), heads.spec(arch, head)
    mtp_model = heads.get(arch, head, kind="sidecar") if sidecar else model
    prompts = prompts_of(model, spec, n_seq)
    loops = run_loops(model, mtp_model, prompts, n_draft, n)
    engine = await engine_runs(model, mtp_model, prompts, n_draft, n)
    for loop, (ids, done), prompt in zip(loops, engine, prompts, strict=True):
        expected = expected_acceptance(spec, prompt, n_draft=n_draft, n_tokens=n)
        assert not expected.stopped_at_eos
        assert loop.out == list(expected.tokens) == ids  # plain decoding's tokens
        assert (loop.accepted, loop.drafted) == (expected.drafts_accepted, expected.drafts_generated)
        assert (loop.accepted, loop.drafted) == (done.usage.drafts_accepted, done.usage.drafts_generated)


# ------------------------------------------------------------------ exactness
@pytest.mark.asyncio
@pytest.mark.parametrize("head", ["hidden", "kv", "token"])
@pytest.mark.parametrize("n_draft", [1, 2, 3, 4])
async def test_loop_equals_plain_decoding_and_engine(heads: OracleModels, head: str, n_draft: int) -> None:
    await check_loop(heads, "qwen35", head, n_draft, n_seq=1)


@pytest.mark.asyncio
@pytest.mark.parametrize("arch", ["qwen35", "qwen35moe"])
@pytest.mark.parametrize("n_seq", [2, 3])
async def test_loop_several_sequences(heads: OracleModels, arch: str, n_seq: int) -> None:
    await check_loop(heads, arch, "hidden", 3, n_seq=n_seq)


@pytest.mark.asyncio
async def test_loop_moe_kv_head(heads: OracleModels) -> None:
    await check_loop(heads, "qwen35moe", "kv", 2, n_seq=1)


@pytest.mark.asyncio
@pytest.mark.parametrize("head", ["hidden", "kv"])
async def test_loop_with_sidecar_head(heads: OracleModels, head: str) -> None:
    await check_loop(heads, "qwen35", head, 3, n_seq=1, sidecar=True)


def test_example_prints_tokens_and_acceptance(heads: OracleModels) -> None:
    import json
    import subprocess
    import sys
    from pathlib import Path

    path = heads.path("qwen35", "hidden")
    example = Path(__file__).parent.parent / "examples" / "draft_session.py"
    r = subprocess.run(
        [
            sys.executable,
            str(example),
            str(path),
            "--n-draft",
            "3",
            "--max-tokens",
            "40",
            "--prompt",
            "we walked",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    spec = heads.spec("qwen35", "hidden")
    expected = expected_acceptance(spec, result["prompt"], n_draft=3, n_tokens=40)
    assert result["tokens"] == list(expected.tokens)
    if expected.drafts_generated and not expected.stopped_at_eos:
        assert result["acceptance"] == pytest.approx(expected.drafts_accepted / expected.drafts_generated)


# ------------------------------------------------------------------ errors
@pytest.fixture
def loop_setup(models: Models) -> Iterator[tuple[Context, Context, DraftSession, list[int]]]:
    model = models["qwen35-oracle"]
    target, draft, session = contexts(model, model, 2, 3, n_ctx=256)
    prompt = model.tokenize("the river and the road")
    with target, draft, session:
        yield target, draft, session, prompt


def prefill(target: Context, session: DraftSession, prompt: list[int], seq: int = 0) -> int:
    batch = Batch(len(prompt))
    batch.add_sequence(prompt, 0, seq)
    target.decode(batch)
    session.process(batch)
    return greedy(target.logits(len(prompt) - 1))


def test_construction_errors(models: Models) -> None:
    model, plain = models["qwen35-oracle"], models["qwen35-plain"]
    with pytest.raises(mtpstream.NoMTPHeadError):
        Context(plain, "mtp", n_ctx=64)
    with pytest.raises(InvalidOptionError) as e:
        Context(model, "draft", n_ctx=64)  # type: ignore[arg-type]
    assert e.value.field == "kind"
    with pytest.raises(InvalidOptionError) as e:
        Context(model, n_ctx=0)
    assert e.value.field == "n_ctx"
    with pytest.raises(InvalidOptionError) as e:
        Context(model, n_ctx=64, rope=1)
    assert e.value.field == "rope"
    with Context(model, n_ctx=64) as t1, Context(plain, n_ctx=64) as t2, Context(model, "mtp", n_ctx=64) as d:
        with pytest.raises(mtpstream.NoMTPHeadError):
            DraftSession(t1, t2)
        with pytest.raises(InvalidOptionError) as e:
            DraftSession(t1, t1)
        assert e.value.field == "draft"
        with pytest.raises(InvalidOptionError) as e:
            DraftSession(d, d)
        assert e.value.field == "target"
        for kwargs, field in (
            ({"n_seq": 2}, "n_seq"),
            ({"n_seq": 0}, "n_seq"),
            ({"n_draft_max": 0}, "n_draft_max"),
        ):
            with pytest.raises(InvalidOptionError) as e:
                DraftSession(t1, d, **kwargs)
            assert e.value.field == field
        with pytest.raises(InvalidOptionError) as e:
            d.decode(Batch(1))
        b = Batch(1)
        b.add(model.n_vocab, 0)
        with pytest.raises(InvalidOptionError) as e:
            t1.decode(b)
        assert e.value.field == "batch"


def test_call_order_errors(loop_setup: Any) -> None:
    target, _, session, prompt = loop_setup
    with pytest.raises(GenerationError, match="taken in nothing"):
        session.draft(0, len(prompt), 5)
    batch = Batch(len(prompt))
    batch.add_sequence(prompt, 0, 0)
    target.decode(batch)
    other = Batch(1)
    other.add(prompt[0], 0, 0)
    with pytest.raises(GenerationError, match="just decoded"):
        session.process(other)
    session.process(batch)
    with pytest.raises(GenerationError, match="already processed"):
        session.process(batch)
    last = greedy(target.logits(len(prompt) - 1))
    # the batch holding the last accepted token was decoded but not processed
    step = Batch(1)
    step.add(last, len(prompt), 0, True)
    target.decode(step)
    with pytest.raises(GenerationError, match=r"process\(\) every batch.*last accepted token"):
        session.draft(0, len(prompt) + 1, greedy(target.logits(0)))
    target.remove(0, len(prompt))
    with pytest.raises(GenerationError, match="n_past is the position of id_last"):
        session.draft(0, len(prompt) - 1, last)
    with pytest.raises(InvalidOptionError) as e:
        session.draft(2, len(prompt), last)
    assert e.value.field == "seq_id"
    with pytest.raises(InvalidOptionError) as e:
        session.draft(0, len(prompt), target.model.n_vocab)
    assert e.value.field == "id_last"
    with pytest.raises(InvalidOptionError) as e:
        session.draft(0, len(prompt), last, n_draft=4)
    assert e.value.field == "n_draft"
    drafts = session.draft(0, len(prompt), last)
    assert len(drafts) == 3
    with pytest.raises(GenerationError, match=r"process\(\) the target batch"):
        session.accept(0, 1)
    wrong = Batch(1)
    wrong.add((last + 1) % target.model.n_vocab, len(prompt), 0, True)
    target.decode(wrong)
    with pytest.raises(GenerationError, match="does not verify the last draft"):
        session.process(wrong)
    target.remove(0, len(prompt))
    verify = Batch(4)
    for i, t in enumerate([last, *drafts]):
        verify.add(t, len(prompt) + i, 0, True)
    target.decode(verify)
    session.process(verify)
    with pytest.raises(GenerationError, match=r"accept\(\)"):
        session.draft(0, len(prompt), last)
    with pytest.raises(InvalidOptionError) as e:
        session.accept(0, 4)
    assert e.value.field == "n_accepted"
    session.accept(0, 0)
    with pytest.raises(GenerationError, match="no draft"):
        session.accept(0, 1)


def test_batch_of_unknown_sequence(models: Models) -> None:
    model = models["qwen35-oracle"]
    target, draft, session = contexts(model, model, 2, 3, n_ctx=64)
    with target, draft:
        one = DraftSession(target, draft, n_seq=1, n_draft_max=2)
        b = Batch(1)
        b.add(model.tokenize("we")[0], 0, 1)
        target.decode(b)
        with pytest.raises(GenerationError, match="n_seq=1"):
            one.process(b)
        session.process(b)  # the two-sequence session takes it


def test_closed_session_and_context(loop_setup: Any) -> None:
    target, draft, session, prompt = loop_setup
    last = prefill(target, session, prompt)
    assert session.draft(0, len(prompt), last)
    session.close()
    with pytest.raises(SessionClosedError):
        session.draft(0, len(prompt), last)
    again = DraftSession(target, draft, n_seq=2, n_draft_max=3)
    draft.close()  # closes the session that uses it first
    assert again.closed
    with pytest.raises(SessionClosedError):
        again.accept(0, 0)
    with pytest.raises(SessionClosedError):
        DraftSession(target, draft)


def test_begin_starts_over(loop_setup: Any) -> None:
    target, _, session, prompt = loop_setup
    last = prefill(target, session, prompt)
    session.begin(0, prompt)  # after process() of exactly this prompt: nothing changes
    first = session.draft(0, len(prompt), last)
    target.remove(0)
    session.begin(0)
    with pytest.raises(GenerationError, match="taken in nothing"):
        session.draft(0, len(prompt), last)
    assert prefill(target, session, prompt) == last
    assert session.draft(0, len(prompt), last) == first


# ------------------------------------------------------------------ lifetimes and threads
def test_lifetime_misuse_never_crashes(model_paths: dict[str, Any]) -> None:
    r = run_python(
        f"""
        import gc, mtpstream
        from mtpstream import Batch, Context, DraftSession, SessionClosedError
        model = mtpstream.load_model({str(model_paths["qwen35-oracle"])!r})
        prompt = model.tokenize("the river and the road")

        def fresh():
            t = Context(model, "target", n_ctx=128, n_rs_seq=3, flash_attn=False)
            d = Context(model, "mtp", n_ctx=128, flash_attn=False)
            s = DraftSession(t, d)
            b = Batch(len(prompt)); b.add_sequence(prompt, 0, 0)
            t.decode(b); s.process(b)
            return t, d, s, int(t.logits(len(prompt) - 1).argmax())

        # close the target, then draft
        t, d, s, last = fresh()
        t.close()
        try:
            s.draft(0, len(prompt), last); print("no error")
        except SessionClosedError:
            print("closed ok")
        # the native context freed under a live native session (no Python cascade)
        t, d, s, last = fresh()
        d.native.close()
        try:
            s.draft(0, len(prompt), last); print("no error")
        except SessionClosedError:
            print("native closed ok")
        # drop the model and the contexts' handles: the session keeps them alive
        t, d, s, last = fresh()
        model.close(); del t, d; gc.collect()
        print("drafts", len(s.draft(0, len(prompt), last)))
        s.close()
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:3] == ["closed ok", "native closed ok", "drafts 3"]


def test_two_threads_are_serialized(heads: OracleModels) -> None:
    model, spec = heads.get("qwen35", "hidden"), heads.spec("qwen35", "hidden")
    prompts = prompts_of(model, spec, 2)
    alone = run_loops(model, model, prompts, 3, 40)
    target, draft, session = contexts(model, model, 2, 3)
    lock = threading.Lock()  # a decode and its process() belong together; the rest races
    errors: list[BaseException] = []

    def run(loop: Loop) -> None:
        try:
            with lock:
                loop.prefill(target, session)
            while len(loop.out) < 40:
                k = min(3, 40 - len(loop.out) - 1)
                drafts = session.draft(loop.seq, loop.n_past, loop.last, n_draft=k)
                batch = Batch(k + 1)
                for i, t in enumerate([loop.last, *drafts]):
                    batch.add(t, loop.n_past + i, loop.seq, logits=True)
                with lock:
                    target.decode(batch)
                    session.process(batch)
                    rows = [greedy(target.logits(i)) for i in range(k + 1)]
                n_acc = 0
                while n_acc < k and rows[n_acc] == drafts[n_acc]:
                    n_acc += 1
                session.accept(loop.seq, n_acc)
                if n_acc < k:
                    target.remove(loop.seq, loop.n_past + n_acc + 1)
                loop.out += [*drafts[:n_acc], rows[n_acc]]
                loop.n_past, loop.last = loop.n_past + n_acc + 1, rows[n_acc]
        except BaseException as exc:  # reported below
            errors.append(exc)

    with target, draft, session:
        loops = [Loop(s, p) for s, p in enumerate(prompts)]
        threads = [threading.Thread(target=run, args=(loop,)) for loop in loops]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert not errors, errors
    assert [loop.out for loop in loops] == [a.out for a in alone]


def test_close_racing_with_calls_never_crashes(model_paths: dict[str, Any]) -> None:
    r = run_python(
        f"""
        import threading, mtpstream
        from mtpstream import Batch, Context, DraftSession, MTPError
        model = mtpstream.load_model({str(model_paths["qwen35-oracle"])!r})
        prompt = model.tokenize("the river and the road")
        t = Context(model, "target", n_ctx=128, flash_attn=False)
        d = Context(model, "mtp", n_ctx=128, flash_attn=False)
        s = DraftSession(t, d)
        b = Batch(len(prompt)); b.add_sequence(prompt, 0, 0)
        t.decode(b); s.process(b)
        last = int(t.logits(len(prompt) - 1).argmax())
        seen = set()
        def hammer():
            for _ in range(300):
                try:
                    s.draft(0, len(prompt), last)
                except MTPError as exc:
                    seen.add(type(exc).__name__)
        th = threading.Thread(target=hammer); th.start()
        d.native.close()
        th.join()
        print(sorted(seen))
        """
    )
    assert r.returncode == 0, r.stderr
    assert "SessionClosedError" in r.stdout


# ------------------------------------------------------------------ llama-cpp-python's contexts
def _llama_cpp_context(model: mtpstream.Model, kind: str, n_seq: int, n_rs_seq: int) -> Any:
    """A llama_context made with llama-cpp-python's own low-level API on ``model``."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_seq_max, params.n_batch, params.n_ubatch = 1024 * n_seq, n_seq, 512, 512
    params.n_rs_seq = n_rs_seq if kind == "target" else 0
    params.kv_unified = n_seq > 1
    params.flash_attn_type = 0  # off, as EXACT
    params.ctx_type = 1 if kind == "mtp" else 0  # LLAMA_CONTEXT_TYPE_MTP
    ctx = llama_cpp.llama_init_from_model(ctypes.c_void_p(model.llama_model_address), params)
    assert ctx
    return ctx


@pytest.mark.asyncio
@pytest.mark.parametrize("n_seq", [1, 2])
async def test_contexts_made_by_llama_cpp_python_drive_the_same_loop(heads: OracleModels, n_seq: int) -> None:
    """Contexts created through llama-cpp-python's low-level API on a model loaded by
    mtpstream (one libllama) and taken over by Context.adopt run the loop exactly."""
    model, spec = heads.get("qwen35", "hidden"), heads.spec("qwen35", "hidden")
    prompts, n_draft, n = prompts_of(model, spec, n_seq), 3, 40
    target = Context.adopt(model, _llama_cpp_context(model, "target", n_seq, n_draft))
    draft = Context.adopt(model, _llama_cpp_context(model, "mtp", n_seq, 0), kind="mtp")
    assert (target.n_seq, target.n_ctx, draft.kind) == (n_seq, 1024, "mtp")
    session = DraftSession(target, draft, n_seq=n_seq, n_draft_max=n_draft)
    with target, draft, session:
        loops = [Loop(s, p) for s, p in enumerate(prompts)]
        for loop in loops:
            loop.prefill(target, session)
        while any(len(loop.out) < n for loop in loops):
            for loop in loops:
                if len(loop.out) < n:
                    loop.round(target, session, n_draft, n)
    assert target.closed and draft.closed and session.closed
    for loop, prompt in zip(loops, prompts, strict=True):
        expected = expected_acceptance(spec, prompt, n_draft=n_draft, n_tokens=n)
        assert loop.out[:n] == list(expected.tokens)[:n]
        assert loop.accepted > 0


def test_adopt_refuses_what_it_cannot_take(heads: OracleModels) -> None:
    """Another model's context is refused and left to its maker (freeing it after is
    safe); no pointer, a bad kind and an MTP context on a model without a head too."""
    import llama_cpp

    model, other = heads.get("qwen35", "hidden"), heads.get("qwen35", "kv")
    foreign = _llama_cpp_context(other, "target", 1, 0)
    with pytest.raises(mtpstream.InvalidOptionError, match="another llama_model") as e:
        Context.adopt(model, foreign)
    assert e.value.field == "context"
    llama_cpp.llama_free(foreign)  # still the caller's: not freed by the refusal
    for bad in (None, 0, "x", True):
        with pytest.raises(mtpstream.InvalidOptionError) as e:
            Context.adopt(model, bad)
        assert e.value.field == "context"
    with pytest.raises(mtpstream.InvalidOptionError) as e:
        Context.adopt(model, 1, kind="draft")  # type: ignore[arg-type]
    assert e.value.field == "kind"
