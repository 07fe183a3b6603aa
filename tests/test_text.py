"""Token text: valid UTF-8 always, held-back bytes, stop strings never emitted."""

from __future__ import annotations

import pytest

import mtpstream
from mtpstream.testing import load_spec

from conftest import EXACT, Models


async def _events(mtp: mtpstream.MTP, prompt: object, **opts: object) -> list[mtpstream.Event]:
    return [ev async for ev in mtp.stream_events(prompt, **opts)]  # type: ignore[arg-type]


def _text(events: list[mtpstream.Event]) -> str:
    out = []
    for ev in events:
        if isinstance(ev, (mtpstream.TokenEvent, mtpstream.DoneEvent, mtpstream.EogEvent)):
            out.append(ev.text)
    return "".join(out)


@pytest.mark.asyncio
@pytest.mark.parametrize("n_draft", [0, 3])
async def test_stop_string_ends_generation_without_emitting_it(models: Models, n_draft: int) -> None:
    model = models["qwen35-oracle"]
    spec = load_spec(models.paths["qwen35-oracle"])
    chain = spec.chain(spec.chain_start, 40)
    full = model.detokenize(chain)
    # a stop string spanning two tokens: the end of word 10 and the start of word 11
    w10 = model.detokenize([chain[10]])
    w11 = model.detokenize([chain[11]])
    stop = w10[-2:] + w11[:3]
    cut = full.index(stop)
    with mtpstream.init(model, n_draft=n_draft, n_ctx=256) as mtp:
        events = await _events(mtp, [spec.chain_start], max_tokens=40, stop=["zzz-never", stop])
    done = events[-1]
    assert isinstance(done, mtpstream.DoneEvent) and done.finish_reason == "stop"
    assert _text(events) == full[:cut]
    assert stop not in _text(events)
    tokens = [e for e in events if isinstance(e, mtpstream.TokenEvent)]
    assert len(tokens) == 12 == done.usage.completion_tokens
    # text that could be the start of the stop string was held back, then released
    pieces = [e.text for e in tokens]
    assert "".join(pieces) == full[:cut]


@pytest.mark.asyncio
async def test_stream_yields_only_nonempty_text(models: Models) -> None:
    model = models["qwen35-random"]
    with mtpstream.init(model, n_draft=3, n_ctx=512) as mtp:
        pieces = [p async for p in mtp.stream("hello there", max_tokens=120, temp=1.0, seed=3)]
    assert all(isinstance(p, str) and p for p in pieces)


@pytest.mark.asyncio
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_text_is_always_valid_utf8_and_matches_the_bytes(models: Models, seed: int) -> None:
    # random weights emit raw byte tokens (0x80-0xff): pieces that are not valid
    # UTF-8 on their own must be held back or replaced, never passed through
    model = models["qwen35-random"]
    with mtpstream.init(model, n_draft=3, n_ctx=1024, **EXACT) as mtp:
        events = await _events(mtp, "x", max_tokens=400, temp=1.5, seed=seed)
    ids = [e.token_id for e in events if isinstance(e, mtpstream.TokenEvent)]
    raw = b"".join(model.token_to_piece(t) for t in ids)
    assert any(b >= 0x80 for b in raw), "this seed produced no non-ASCII bytes"
    assert _text(events) == raw.decode("utf-8", errors="replace")


@pytest.mark.asyncio
async def test_multibyte_character_split_across_tokens_is_held_back(models: Models) -> None:
    # the vocabulary has no token for "é": the grammar forces its two byte tokens
    model = models["qwen35-oracle"]
    with mtpstream.init(model, n_draft=2, n_ctx=256) as mtp:
        events = await _events(mtp, "the", max_tokens=10, grammar='root ::= "é" "ü" " the"')
    tokens = [e for e in events if isinstance(e, mtpstream.TokenEvent)]
    assert [model.token_to_piece(e.token_id) for e in tokens[:2]] == [b"\xc3", b"\xa9"]
    assert tokens[0].text == "" and tokens[1].text == "é"
    assert _text(events) == "éü the"
    assert isinstance(events[-1], mtpstream.EogEvent)  # the grammar is complete: only EOG remains
