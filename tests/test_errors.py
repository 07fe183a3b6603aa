"""Every bad input raises a typed, named error; the process lives and the session stays usable."""

from __future__ import annotations

from typing import Any

import pytest

import mtpstream

from conftest import Models, collect

PROMPT = "the river runs"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_draft": -1}, "n_draft"),
        ({"n_draft": 2.5}, "n_draft"),
        ({"n_draft": "many"}, "n_draft"),
        ({"n_ctx": 0}, "n_ctx"),
        ({"n_ctx": -5}, "n_ctx"),
        ({"n_threads": 0}, "n_threads"),
        ({"n_batch": 0}, "n_batch"),
        ({"type_k": "q9_9"}, "type_k"),
        ({"flash_attn": "yes"}, "flash_attn"),
        ({"bogus_option": 1}, "bogus_option"),
        ({"type_v": "q8_0", "flash_attn": False}, "type_v"),
    ],
)
def test_bad_session_options(oracle: mtpstream.Model, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(mtpstream.InvalidOptionError) as info:
        mtpstream.init(oracle, **kwargs)
    assert isinstance(info.value, ValueError)
    assert info.value.field == field
    assert field in str(info.value)


def test_limits_that_would_abort_inside_llama_cpp(oracle: mtpstream.Model) -> None:
    # n_batch < n_draft + 1 and n_ubatch < n_draft + 2 abort llama.cpp; refused here
    with pytest.raises(mtpstream.InvalidOptionError, match="n_batch"):
        mtpstream.init(oracle, n_draft=4, n_batch=4)
    with pytest.raises(mtpstream.InvalidOptionError, match="n_ubatch"):
        mtpstream.init(oracle, n_draft=4, n_batch=64, n_ubatch=5)
    with pytest.raises(mtpstream.InvalidOptionError, match="n_batch"):
        mtpstream.init(oracle, n_draft=3, n_ctx=2)
    with pytest.raises(mtpstream.InvalidOptionError):
        mtpstream.init("not a model", n_draft=0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("opts", "field"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"temp": -0.1}, "temp"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": -0.1}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"min_p": 2.0}, "min_p"),
        ({"seed": -3}, "seed"),
        ({"penalty_repeat": 0.0}, "penalty_repeat"),
        ({"stop": [""]}, "stop"),
        ({"timeout": 0}, "timeout"),
        ({"emit_stats_every": -1}, "emit_stats_every"),
        ({"grammar": "   "}, "grammar"),
        ({"temperature": 0.5}, "temperature"),
    ],
)
@pytest.mark.asyncio
async def test_bad_generation_options(oracle: mtpstream.Model, opts: dict[str, Any], field: str) -> None:
    with mtpstream.init(oracle, n_draft=3, n_ctx=256) as mtp:
        with pytest.raises(mtpstream.InvalidOptionError) as info:
            await mtp.generate(PROMPT, **opts)
        assert info.value.field == field
        assert await mtp.generate(PROMPT, max_tokens=4)


@pytest.mark.asyncio
async def test_bad_prompts(oracle: mtpstream.Model) -> None:
    with mtpstream.init(oracle, n_draft=3, n_ctx=64) as mtp:
        for prompt, pattern in [
            ("", "empty"),
            ([], "empty"),
            ([1, oracle.n_vocab], str(oracle.n_vocab)),
            ([1, -2], "-2"),
            ([1, True], "int"),
            (b"bytes", "str or a list"),
        ]:
            with pytest.raises(mtpstream.InvalidOptionError, match=pattern):
                await mtp.generate(prompt, max_tokens=4)  # type: ignore[arg-type]
        with pytest.raises(mtpstream.ContextOverflowError, match="64"):
            await mtp.generate([5] * 65, max_tokens=4)
        # the prompt fits but the context fills up: ends with "length"
        ids, done = await collect(mtp, [5] * 60, max_tokens=50)
        assert isinstance(done, mtpstream.DoneEvent) and done.finish_reason == "length"
        assert len(ids) <= 5
        assert await mtp.generate(PROMPT, max_tokens=4)


@pytest.mark.asyncio
async def test_malformed_grammar(oracle: mtpstream.Model) -> None:
    with mtpstream.init(oracle, n_draft=3, n_ctx=256) as mtp:
        for grammar in [
            'root ::= "unterminated',
            "root ::= undefined_rule",
            "not a grammar at all",
            'other ::= "x"',
        ]:
            with pytest.raises(mtpstream.InvalidOptionError, match="grammar"):
                await mtp.generate(PROMPT, max_tokens=4, grammar=grammar)
        text = await mtp.generate(PROMPT, max_tokens=6, grammar='root ::= (" the" | " river" | " runs")+')
        assert set(text.split()) <= {"the", "river", "runs"} and text


def test_errors_are_one_family() -> None:
    for cls in (
        mtpstream.ModelLoadError,
        mtpstream.NoMTPHeadError,
        mtpstream.InvalidOptionError,
        mtpstream.ContextOverflowError,
        mtpstream.GenerationError,
        mtpstream.SessionClosedError,
        mtpstream.SessionBusyError,
    ):
        assert issubclass(cls, mtpstream.MTPError)
    assert issubclass(mtpstream.InvalidOptionError, ValueError)


def test_auto_n_draft_not_silently_ignored(models: Models) -> None:
    try:
        mtp = mtpstream.init(models["qwen35-oracle"], n_draft="auto", n_ctx=256)
    except mtpstream.InvalidOptionError as exc:
        assert exc.field == "n_draft"
    else:
        assert mtp.n_draft >= 1
        mtp.close()
