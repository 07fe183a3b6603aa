"""The prompt cache: a call whose prompt extends what the sequence holds (the next chat
turn) reads only the new tokens; a prompt that diverges inside it restarts from the
checkpoint left one token before an earlier prompt's end (hybrid models cannot cut their
recurrent state back); anything else starts cold. Output and acceptance equal a cold
session's in every case; heads that read the hidden row and their own KV entry prove
that the MTP context and the carried row match the reused target state."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import mtpstream
from mtpstream.testing import load_spec

from conftest import EXACT, OracleModels, collect


@pytest.fixture(scope="module")
def cm() -> Any:
    m = OracleModels()
    yield m
    m.close()


async def turn(mtp: mtpstream.MTP, prompt: list[int], n: int, **opts: Any) -> tuple[list[int], Any]:
    ids, end = await collect(mtp, prompt, max_tokens=n, **opts)
    return ids, end.usage


# long enough (> 256 tokens) that a cold call leaves a checkpoint one before its end
LONG = "we walked along the river and the sun was low over the water " * 20


def shapes(model: mtpstream.Model, first: list[int], gen: list[int]) -> dict[str, tuple[list[int], int]]:
    """Each prompt shape and the prompt tokens the warm session reuses for it."""
    new = model.tokenize(" and then the road", add_special=False)
    n = len(first)
    return {
        # all of it but the last generated token (never decoded)
        "extension": ([*first, *gen, *new], n + len(gen) - 1),
        # the checkpoint one token before the end of `first`
        "identical": (list(first), n - 1),
        "diverge_in_generation": ([*first, *gen[:4], *new], n - 1),
        # before every checkpoint: cold
        "diverge_in_prompt": ([*first[:3], *new, *first[3:]], 0),
        "shorter": (first[: n // 2], 0),
    }


@pytest.mark.asyncio
@pytest.mark.parametrize("arch", ["qwen35", "qwen35moe"])
@pytest.mark.parametrize("head", ["hidden", "kv"])
@pytest.mark.parametrize("n_draft", [0, 1, 3, "auto"])
async def test_every_prompt_shape_equals_a_cold_session(
    cm: OracleModels, arch: str, head: str, n_draft: Any
) -> None:
    model = cm.get(arch, head)
    first = model.tokenize(LONG)
    assert len(first) > 256
    with (
        mtpstream.init(model, n_draft=n_draft, n_ctx=1024, **EXACT) as warm,
        mtpstream.init(model, n_draft=n_draft, n_ctx=1024, prompt_cache=False, **EXACT) as cold,
    ):
        gen = (await turn(warm, first, 40))[0]
        assert warm.stats().checkpoints == 1
        for name, (prompt, n_cached) in shapes(model, first, gen).items():
            await turn(warm, first, 40)  # the sequence holds `first` + its generation again
            got, usage = await turn(warm, prompt, 60)
            want, ref = await turn(cold, prompt, 60)
            assert got == want, name
            assert ref.cached_tokens == 0
            assert usage.cached_tokens == n_cached, (name, usage)
            if n_draft != "auto":  # auto's draft lengths follow its timings
                assert (usage.drafts_accepted, usage.drafts_generated) == (
                    ref.drafts_accepted,
                    ref.drafts_generated,
                ), name
        assert cold.stats().checkpoints == 0


@pytest.mark.asyncio
async def test_a_conversation_reuses_every_turn(cm: OracleModels) -> None:
    model = cm.get("qwen35", "hidden")
    messages: list[dict[str, str]] = []
    with (
        mtpstream.init(model, n_draft=3, n_ctx=4096, **EXACT) as warm,
        mtpstream.init(model, n_draft=3, n_ctx=4096, prompt_cache=False, **EXACT) as cold,
    ):
        for i, text in enumerate(["we walked along the river", "and then?", "what about the road", "go on"]):
            messages.append({"role": "user", "content": text})
            a = await warm.chat(messages, max_tokens=30)
            b = await cold.chat(messages, max_tokens=30)
            assert a.choices[0].message.content == b.choices[0].message.content
            assert (a.mtp.drafts_accepted, a.mtp.drafts_generated) == (
                b.mtp.drafts_accepted,
                b.mtp.drafts_generated,
            )
            cached = a.usage.prompt_tokens_details.cached_tokens
            assert (cached > 0) == (i > 0), (i, cached)
            assert b.usage.prompt_tokens_details.cached_tokens == 0
            messages.append({"role": "assistant", "content": a.choices[0].message.content})
            last_cached = cached
        st = warm.stats()
        assert 0 < st.prompt_tokens_cached < st.prompt_tokens
        # the last turn asked again, and its reply replaced: both restart from the
        # checkpoint the turn left where its generation prompt began (after the
        # history it shares with both), past the one where the turn started
        again = messages[:-1]
        edited = [*messages[:-1], {"role": "assistant", "content": "no"}, {"role": "user", "content": "why"}]
        hits = []
        for msgs in (again, edited):
            a = await warm.chat(msgs, max_tokens=30)
            b = await cold.chat(msgs, max_tokens=30)
            assert a.choices[0].message.content == b.choices[0].message.content
            hits.append(a.usage.prompt_tokens_details.cached_tokens)
        n_again = len(warm.tokenize_chat(again))  # the history, then the generation prompt
        assert hits[0] == hits[1] > last_cached and n_again - 16 < hits[0] < n_again, (hits, n_again)


@pytest.mark.asyncio
async def test_cache_prompt_false_neither_reuses_nor_leaves_anything(cm: OracleModels) -> None:
    model = cm.get("qwen35", "kv")
    first = model.tokenize("we walked along the river")
    with mtpstream.init(model, n_draft=3, n_ctx=1024, **EXACT) as mtp:
        gen, _ = await turn(mtp, first, 20)
        ext = [*first, *gen, *model.tokenize(" and", add_special=False)]
        _, u = await turn(mtp, ext, 10, cache_prompt=False)
        assert u.cached_tokens == 0
        _, u = await turn(mtp, [*ext, 5, 6], 10)  # the False call left nothing to extend
        assert u.cached_tokens == 0
        gen, _ = await turn(mtp, first, 20)
        _, u = await turn(mtp, [*first, *gen, 7], 10)
        assert u.cached_tokens > len(first)


@pytest.mark.asyncio
async def test_each_sequence_keeps_its_conversation(cm: OracleModels) -> None:
    """n_seq=2, two conversations alternating: each turn takes the slot that holds its
    own history (the free slot with the longest common prefix)."""
    model = cm.get("qwen35moe", "hidden")
    a = model.tokenize("we walked along the river")
    b = model.tokenize("the road went on and on")
    with (
        # the cold session's rollback (auto would choose by timing with two sequences)
        mtpstream.init(model, n_draft=3, n_ctx=1024, n_seq=2, rollback="snapshots", **EXACT) as warm,
        mtpstream.init(model, n_draft=3, n_ctx=1024, prompt_cache=False, **EXACT) as cold,
    ):
        for step in range(3):
            for conv in ("a", "b"):
                prompt = a if conv == "a" else b
                got, usage = await turn(warm, prompt, 20)
                want, _ = await turn(cold, prompt, 20)
                assert got == want
                assert (usage.cached_tokens > 0) == (step > 0), (conv, step)
                nxt = [*prompt, *got, *model.tokenize(" then", add_special=False)]
                if conv == "a":
                    a = nxt
                else:
                    b = nxt


@pytest.mark.asyncio
async def test_sidecar_draft_model(cm: OracleModels) -> None:
    target = cm.get("qwen35", "hidden")
    sidecar = cm.get("qwen35", "hidden", kind="sidecar")
    first = target.tokenize(LONG)
    with (
        mtpstream.init(target, n_draft=3, n_ctx=1024, draft_model=sidecar, **EXACT) as warm,
        mtpstream.init(
            target, n_draft=3, n_ctx=1024, draft_model=sidecar, prompt_cache=False, **EXACT
        ) as cold,
    ):
        gen, _ = await turn(warm, first, 30)
        ext = [*first, *gen, *target.tokenize(" and then", add_special=False)]
        # an extension, then the first prompt again (from its checkpoint)
        for prompt, n_cached in ((ext, len(first) + len(gen) - 1), (first, len(first) - 1)):
            got, u = await turn(warm, prompt, 40)
            want, ref = await turn(cold, prompt, 40)
            assert got == want and u.cached_tokens == n_cached
            assert (u.drafts_accepted, u.drafts_generated) == (ref.drafts_accepted, ref.drafts_generated)


def test_prompt_cache_options_are_validated(cm: OracleModels) -> None:
    model = cm.get("qwen35", "hidden")
    with pytest.raises(mtpstream.InvalidOptionError) as info:
        mtpstream.init(model, prompt_cache="yes")  # type: ignore[arg-type]
    assert info.value.field == "prompt_cache"
    with mtpstream.init(model, n_ctx=256) as mtp, pytest.raises(mtpstream.InvalidOptionError) as info:
        anyio.run(lambda: mtp.generate("x", cache_prompt=1))
    assert info.value.field == "cache_prompt"


@pytest.mark.asyncio
@pytest.mark.parametrize("arch", ["qwen35", "qwen35moe"])
@pytest.mark.parametrize("n_new", [1, 2])
async def test_a_one_token_extension_drafts_from_the_carried_row(
    cm: OracleModels, arch: str, n_new: int
) -> None:
    """One or two new tokens: the first drafts read the MTP context's entries right at
    the join of cached and new tokens. (The oracle heads read the token part of those
    entries, not the hidden-row part, so a wrongly carried row would not show here:
    checked by zeroing it on purpose.)"""
    model = cm.get(arch, "kv")
    first = model.tokenize("we walked along the river and the sun was low")
    with (
        mtpstream.init(model, n_draft=3, n_ctx=1024, **EXACT) as warm,
        mtpstream.init(model, n_draft=3, n_ctx=1024, prompt_cache=False, **EXACT) as cold,
    ):
        for tail in ([5], [9], [17], [23], [31]):
            gen, _ = await turn(warm, first, 30)
            prompt = [*first, *gen, *(tail * n_new)]
            got, u = await turn(warm, prompt, 40)
            want, ref = await turn(cold, prompt, 40)
            assert u.cached_tokens > 0
            assert got == want
            assert (u.drafts_accepted, u.drafts_generated) == (ref.drafts_accepted, ref.drafts_generated), (
                tail
            )


@pytest.mark.asyncio
@pytest.mark.parametrize("arch", ["qwen35", "qwen35moe"])
@pytest.mark.parametrize("head", ["hidden", "kv", "kv2"])
async def test_reused_state_on_the_chain_drafts_like_a_cold_session(
    cm: OracleModels, arch: str, head: str
) -> None:
    """Prompts that follow the model's own greedy chain, so the drafts right after the
    join of reused and new tokens can only be right if the carried row (hidden head)
    and the MTP context's KV entries before the join (kv and kv2 heads) are right: after
    an extension (carry and pending pairs) and after a checkpoint restore. With k = 0 the
    extension is the last generated token alone: the first draft reads the entry built
    from the carried row (kv) and the last pair the previous call left pending (kv2).
    (Zeroing the carried row, dropping the pending pairs, skipping the MTP context's cut
    or the state restore each fails this test.)"""
    model = cm.get(arch, head)
    spec = load_spec(model.path)
    start = spec.chain_start
    first = [start, *spec.chain(start, 300)]
    with (
        mtpstream.init(model, n_draft=3, n_ctx=1024, **EXACT) as warm,
        mtpstream.init(model, n_draft=3, n_ctx=1024, prompt_cache=False, **EXACT) as cold,
    ):
        for k in (0, 1, 2, 5):
            gen, _ = await turn(warm, first, 20)
            assert gen == spec.chain(first[-1], 20)
            tail = spec.chain(gen[-1], k)
            cases = {
                "extension": ([*first, *gen, *tail], len(first) + len(gen) - 1),
                "identical": (first, len(first) - 1),
                "diverge_in_generation": ([*first, *gen[:k]], len(first) - 1),
            }
            for name, (prompt, n_cached) in cases.items():
                await turn(warm, first, 20)
                got, u = await turn(warm, prompt, 12)
                want, ref = await turn(cold, prompt, 12)
                assert got == want, (name, k)
                assert u.cached_tokens == n_cached, (name, k, u)
                assert (u.drafts_accepted, u.drafts_generated) == (
                    ref.drafts_accepted,
                    ref.drafts_generated,
                ), (
                    name,
                    k,
                )


def _long_prompt(model: mtpstream.Model, i: int) -> list[int]:
    words = ["river", "road", "sun", "water", "hill", "town"]
    return model.tokenize(f"the {words[i % len(words)]} {i} " + LONG)


@pytest.mark.asyncio
async def test_checkpoint_memory_stays_within_its_budget(cm: OracleModels) -> None:
    """Checkpoints of all sequences share prompt_cache_checkpoint_bytes: past it the
    oldest goes first; the bytes in use are reported; 0 keeps none."""
    model = cm.get("qwen35", "hidden")
    with mtpstream.init(model, n_draft=3, n_ctx=1024, n_seq=3, **EXACT) as probe:
        await turn(probe, _long_prompt(model, 0), 4)
        one = probe.stats().checkpoint_bytes
    assert one > 0
    budget = 2 * one + one // 2  # room for two
    with (
        mtpstream.init(
            model, n_draft=3, n_ctx=1024, n_seq=3, prompt_cache_checkpoint_bytes=budget, **EXACT
        ) as mtp,
        mtpstream.init(model, n_draft=3, n_ctx=1024, prompt_cache=False, **EXACT) as cold,
    ):
        prompts = [_long_prompt(model, i) for i in range(3)]
        for p in prompts:  # one per sequence; the third pushes the first out
            await turn(mtp, p, 4)
            st = mtp.stats()
            assert st.checkpoint_bytes <= budget and st.checkpoint_bytes == st.checkpoints * one
        assert mtp.stats().checkpoints == 2
        for i in (2, 1, 0):  # the same prompt again restarts from its checkpoint
            p = prompts[i]
            got, u = await turn(mtp, p, 8)
            want, _ = await turn(cold, p, 8)
            assert got == want
            assert u.cached_tokens == (0 if i == 0 else len(p) - 1), i
    with mtpstream.init(model, n_draft=3, n_ctx=1024, prompt_cache_checkpoint_bytes=0, **EXACT) as none:
        p = _long_prompt(model, 0)
        await turn(none, p, 4)
        gen, u = await turn(none, p, 4)
        assert u.cached_tokens == 0 and none.stats().checkpoints == 0
        _, u = await turn(none, [*p, *gen, 5], 4)  # extensions need no checkpoint
        assert u.cached_tokens > len(p)


@pytest.mark.asyncio
@pytest.mark.parametrize("n_draft", [3, "auto"])
async def test_a_cancelled_call_leaves_its_checkpoint(cm: OracleModels, n_draft: Any) -> None:
    """A reply stopped by the user keeps the checkpoint of its prompt: asking again
    reads one token, not the whole prompt."""
    model = cm.get("qwen35moe", "kv")
    p = _long_prompt(model, 1)
    with (
        mtpstream.init(model, n_draft=n_draft, n_ctx=1024, **EXACT) as warm,
        mtpstream.init(model, n_draft=n_draft, n_ctx=1024, prompt_cache=False, **EXACT) as cold,
    ):
        async with warm.stream(p, max_tokens=200) as s:
            n = 0
            async for _ in s:
                n += 1
                if n == 5:
                    break  # leaving the block cancels the call
        await anyio.sleep(0.2)
        assert warm.stats().active_sequences == 0
        got, u = await turn(warm, p, 30)
        want, _ = await turn(cold, p, 30)
        assert got == want
        assert u.cached_tokens == len(p) - 1


@pytest.mark.asyncio
async def test_a_diverging_prompt_takes_the_sequence_with_its_checkpoint(cm: OracleModels) -> None:
    """n_seq=2: the same prompt asked again, then a reply edited in the middle, each
    takes the free sequence whose checkpoint covers the longest prefix."""
    model = cm.get("qwen35", "kv")
    a, b = _long_prompt(model, 2), _long_prompt(model, 3)
    with (
        # the cold session's rollback (auto would choose by timing with two sequences)
        mtpstream.init(model, n_draft=3, n_ctx=1024, n_seq=2, rollback="snapshots", **EXACT) as warm,
        mtpstream.init(model, n_draft=3, n_ctx=1024, prompt_cache=False, **EXACT) as cold,
    ):
        gen_a, _ = await turn(warm, a, 20)
        await turn(warm, b, 20)
        for prompt in (a, [*a, *gen_a[:5], 9, 9], b, a):
            got, u = await turn(warm, prompt, 20)
            want, _ = await turn(cold, prompt, 20)
            assert got == want
            base = a if prompt[: len(a)] == a else b
            assert u.cached_tokens == len(base) - 1


@pytest.mark.parametrize("bad", [-1, 1.5, "1M", True])
def test_checkpoint_budget_is_validated(cm: OracleModels, bad: object) -> None:
    with pytest.raises(mtpstream.InvalidOptionError) as info:
        mtpstream.init(cm.get("qwen35", "hidden"), prompt_cache_checkpoint_bytes=bad)
    assert info.value.field == "prompt_cache_checkpoint_bytes"


@pytest.mark.asyncio
@pytest.mark.parametrize("n_draft", [0, 3])
async def test_a_shared_long_head_restarts_from_a_chunk_boundary(cm: OracleModels, n_draft: int) -> None:
    """Two prompts sharing a long head (a system prompt, a document) but not what follows:
    the second restarts from the checkpoint the first left where its first 512-token
    chunk ended (n_batch), not from the start."""
    model = cm.get("qwen35moe", "kv")
    head = model.tokenize(LONG * 4)[:900]
    a = [*head, *model.tokenize(" the road went on", add_special=False)]
    b = [*head, *model.tokenize(" and the town was quiet", add_special=False)]
    with (
        mtpstream.init(model, n_draft=n_draft, n_ctx=2048, **EXACT) as warm,
        mtpstream.init(model, n_draft=n_draft, n_ctx=2048, prompt_cache=False, **EXACT) as cold,
    ):
        assert warm.stats().checkpoints == 0
        await turn(warm, a, 10)
        assert warm.stats().checkpoints == 2  # at 512 (the chunk's end) and one before a's end
        got, u = await turn(warm, b, 20)
        want, ref = await turn(cold, b, 20)
        assert got == want
        assert u.cached_tokens == 512
        if n_draft:
            assert (u.drafts_accepted, u.drafts_generated) == (ref.drafts_accepted, ref.drafts_generated)


@pytest.mark.asyncio
async def test_a_turn_whose_reasoning_the_template_drops_reuses_the_history(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Qwen3.5's template renders an earlier assistant turn without its <think> block, so
    the next turn's prompt leaves the cached sequence where this turn's generation prompt
    began (before "<think>"), far from the checkpoint one token before the prompt's end.
    The chat path asks for a checkpoint there: the next turn reuses the whole history,
    and its reply equals a cold session's."""
    import real_vocab
    from mtpstream.testing import make_real_vocab_model

    real_vocab.require()
    model = mtpstream.load_model(
        make_real_vocab_model(dst=tmp_path_factory.mktemp("rv") / "m.gguf", added_tokens=True)
    )
    system = {"role": "system", "content": "You answer questions about rivers. " * 60}
    first = [system, {"role": "user", "content": "Which river is the longest?"}]
    try:
        with (
            mtpstream.init(model, n_draft=0, n_ctx=2048) as warm,
            mtpstream.init(model, n_draft=0, n_ctx=2048, prompt_cache=False) as cold,
        ):
            n_first = len(warm.tokenize_chat(first))
            assert n_first > 300 and n_first % 256 > 8  # not next to a spacing checkpoint
            one = await warm.chat(first, max_tokens=24, temperature=0)
            reply = one.choices[0].message
            assert reply.reasoning_content  # the template opened <think>: the reply is reasoning
            second = [
                *first,
                {
                    "role": "assistant",
                    "content": reply.content or "",
                    "reasoning_content": reply.reasoning_content,
                },
                {"role": "user", "content": "And the shortest?"},
            ]
            two = await warm.chat(second, max_tokens=24, temperature=0)
            ref = await cold.chat(second, max_tokens=24, temperature=0)
        opener = len(model.tokenize("<|im_start|>assistant\n<think>\n", add_special=False))
    finally:
        model.close()
    # the whole history: all of the first prompt but its generation prompt
    assert two.usage.prompt_tokens_details.cached_tokens == n_first - opener
    assert two.choices[0].message == ref.choices[0].message
