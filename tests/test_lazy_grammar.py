"""``grammar_triggers``: a lazy grammar (llama.cpp's) holds only once the output
contains a trigger word, from the word on; before it, and in outputs without it,
decoding is exactly plain decoding. On the oracle model (a deterministic text), with
speculation on, through both kinds of trigger: a word that is one token and a word
that is not (matched in the text)."""

from __future__ import annotations

import pytest

import mtpstream

from conftest import EXACT, collect

PROMPT = "we walked along the river"
N = 40


async def _ids(mtp: mtpstream.MTP, **opts: object) -> list[int]:
    ids, _ = await collect(mtp, mtp.model.tokenize(PROMPT), max_tokens=N, **opts)
    return ids


async def _plain(mtp: mtpstream.MTP) -> tuple[list[int], str]:
    ids = await _ids(mtp)
    return ids, mtp.model.detokenize(ids)


def _literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.mark.asyncio
async def test_the_grammar_holds_from_a_one_token_trigger_on(oracle: mtpstream.Model) -> None:
    with mtpstream.init(oracle, n_draft=3, n_ctx=512, **EXACT) as mtp:
        ids, _ = await _plain(mtp)
        # the 6th token of the plain output triggers; the grammar then allows only it
        # and one more fixed word, then the end
        trigger = oracle.detokenize([ids[5]])
        assert len(oracle.tokenize(trigger)) == 1
        tail = " zebra"
        grammar = f"root ::= {_literal(trigger)} {_literal(tail)}"
        got = await _ids(mtp, grammar=grammar, grammar_triggers=[trigger])
    text = oracle.detokenize(got)
    assert got[:6] == ids[:6]  # free (exactly plain) up to and including the trigger
    assert text == oracle.detokenize(ids[:6]) + tail  # then the grammar, then the end


@pytest.mark.asyncio
async def test_a_trigger_inside_a_token_is_matched_in_the_text(oracle: mtpstream.Model) -> None:
    with mtpstream.init(oracle, n_draft=3, n_ctx=512, **EXACT) as mtp:
        ids, _ = await _plain(mtp)
        # a piece of the 4th word that is not a token of its own
        word = oracle.detokenize([ids[3]])
        piece = word.strip()[1:3]
        assert len(piece) == 2 and len(oracle.tokenize(piece)) != 1, (word, piece)
        start = len(oracle.detokenize(ids[:3])) + word.index(piece)
        rest = oracle.detokenize(ids[:4])[start:]  # the trigger's token, from the piece on
        grammar = f'root ::= {_literal(rest)} " ok"'
        got = await _ids(mtp, grammar=grammar, grammar_triggers=[piece])
    assert oracle.detokenize(got) == oracle.detokenize(ids[:4]) + " ok"


@pytest.mark.asyncio
async def test_without_its_trigger_the_output_is_plain(oracle: mtpstream.Model) -> None:
    with mtpstream.init(oracle, n_draft=3, n_ctx=512, **EXACT) as mtp:
        ids, text = await _plain(mtp)
        assert "qqq" not in text
        # a grammar the plain text breaks at once: it never holds
        got = await _ids(mtp, grammar='root ::= "qqq"', grammar_triggers=["qqq"])
    assert got == ids


@pytest.mark.parametrize(
    ("triggers", "grammar", "match"),
    [
        (["x"], None, "needs a grammar"),
        ("x", 'root ::= "x"', "list of str"),
        ([""], 'root ::= "x"', "1-256 characters"),
        (["x" * 257], 'root ::= "x"', "1-256 characters"),
        ([str(i) for i in range(17)], 'root ::= "x"', "at most 16"),
        ([3], 'root ::= "x"', "1-256 characters"),
    ],
)
def test_bad_triggers_name_the_option(
    oracle: mtpstream.Model, triggers: object, grammar: str | None, match: str
) -> None:
    refused = pytest.raises(mtpstream.InvalidOptionError, match=match)
    with mtpstream.init(oracle, n_draft=3, n_ctx=256) as mtp, refused as e:
        mtp.generate_sync(PROMPT, max_tokens=4, grammar=grammar, grammar_triggers=triggers)
    assert e.value.field == "grammar_triggers"
