"""The prompt cache: a call whose prompt extends what the sequence holds (the next chat
turn) reads only the new tokens; every other prompt shape starts cold. Output and
acceptance equal a cold session's in every case; heads that read the hidden row and
their own KV entry prove that the MTP context and the carried row match the reused
target state."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import mtpstream
from mtpstream.testing import make_model

from conftest import EXACT, collect


class CacheModels:
    def __init__(self) -> None:
        self._loaded: dict[tuple[str, str, str], mtpstream.Model] = {}

    def get(self, arch: str, head: str, kind: str = "mtp") -> mtpstream.Model:
        key = (arch, head, kind)
        if key not in self._loaded:
            path = make_model(
                arch=arch, weights="oracle", size="tiny", mtp_error_rate=0.25, head=head, kind=kind
            )  # type: ignore[arg-type]
            self._loaded[key] = mtpstream.load_model(path)
        return self._loaded[key]

    def close(self) -> None:
        for m in self._loaded.values():
            m.close()


@pytest.fixture(scope="module")
def cm() -> Any:
    m = CacheModels()
    yield m
    m.close()


async def turn(mtp: mtpstream.MTP, prompt: list[int], n: int, **opts: Any) -> tuple[list[int], Any]:
    ids, end = await collect(mtp, prompt, max_tokens=n, **opts)
    return ids, end.usage


def shapes(model: mtpstream.Model, first: list[int], gen: list[int]) -> dict[str, list[int]]:
    new = model.tokenize(" and then the road", add_special=False)
    return {
        "extension": [*first, *gen, *new],
        "identical": list(first),
        "diverge_in_prompt": [*first[:3], *new, *first[3:]],
        "diverge_in_generation": [*first, *gen[:4], *new],
        "shorter": first[: len(first) // 2],
    }


@pytest.mark.asyncio
@pytest.mark.parametrize("arch", ["qwen35", "qwen35moe"])
@pytest.mark.parametrize("head", ["hidden", "kv"])
@pytest.mark.parametrize("n_draft", [0, 1, 3, "auto"])
async def test_every_prompt_shape_equals_a_cold_session(
    cm: CacheModels, arch: str, head: str, n_draft: Any
) -> None:
    model = cm.get(arch, head)
    first = model.tokenize("we walked along the river and the sun was low")
    with (
        mtpstream.init(model, n_draft=n_draft, n_ctx=1024, **EXACT) as warm,
        mtpstream.init(model, n_draft=n_draft, n_ctx=1024, prompt_cache=False, **EXACT) as cold,
    ):
        gen = (await turn(warm, first, 40))[0]
        for name, prompt in shapes(model, first, gen).items():
            await turn(warm, first, 40)  # the sequence holds `first` + its generation again
            got, usage = await turn(warm, prompt, 60)
            want, ref = await turn(cold, prompt, 60)
            assert got == want, name
            assert ref.cached_tokens == 0
            if name == "extension":
                # all of it but the last generated token (never decoded) at least
                assert usage.cached_tokens >= len(first) + len(gen) - 1, usage
            else:
                assert usage.cached_tokens == 0, name
            if n_draft != "auto":  # auto's draft lengths follow its timings
                assert (usage.drafts_accepted, usage.drafts_generated) == (
                    ref.drafts_accepted,
                    ref.drafts_generated,
                ), name


@pytest.mark.asyncio
async def test_a_conversation_reuses_every_turn(cm: CacheModels) -> None:
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
        st = warm.stats()
        assert 0 < st.prompt_tokens_cached < st.prompt_tokens


@pytest.mark.asyncio
async def test_cache_prompt_false_neither_reuses_nor_leaves_anything(cm: CacheModels) -> None:
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
async def test_each_sequence_keeps_its_conversation(cm: CacheModels) -> None:
    """n_seq=2, two conversations alternating: each turn takes the slot that holds its
    own history (the free slot with the longest common prefix)."""
    model = cm.get("qwen35moe", "hidden")
    a = model.tokenize("we walked along the river")
    b = model.tokenize("the road went on and on")
    with (
        mtpstream.init(model, n_draft=3, n_ctx=1024, n_seq=2, **EXACT) as warm,
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
async def test_sidecar_draft_model(cm: CacheModels) -> None:
    target = cm.get("qwen35", "hidden")
    sidecar = cm.get("qwen35", "hidden", kind="sidecar")
    first = target.tokenize("we walked along the river")
    with (
        mtpstream.init(target, n_draft=3, n_ctx=1024, draft_model=sidecar, **EXACT) as warm,
        mtpstream.init(
            target, n_draft=3, n_ctx=1024, draft_model=sidecar, prompt_cache=False, **EXACT
        ) as cold,
    ):
        gen, _ = await turn(warm, first, 30)
        ext = [*first, *gen, *target.tokenize(" and then", add_special=False)]
        got, u = await turn(warm, ext, 40)
        want, ref = await turn(cold, ext, 40)
        assert got == want and u.cached_tokens > 0
        assert (u.drafts_accepted, u.drafts_generated) == (ref.drafts_accepted, ref.drafts_generated)


def test_prompt_cache_options_are_validated(cm: CacheModels) -> None:
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
    cm: CacheModels, arch: str, n_new: int
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
