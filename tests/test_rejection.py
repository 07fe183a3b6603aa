"""verify="rejection" (speculative sampling): the option, its fallbacks, greedy
exactness at temperature 0, reproducibility, and the acceptance the soft oracle
predicts. The distribution tests (chi-square against plain decoding) are in
test_rejection_distribution.py."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import mtpstream
from mtpstream._openai import generation_options
from mtpstream.testing import SoftSpec, load_soft_spec, make_model

from conftest import EXACT, Models, collect

SOFT_RATE = 0.25  # head q = (0.4, 0.25, 0.35) at temperature 1


@pytest.fixture(scope="module")
def soft() -> Iterator[tuple[mtpstream.Model, SoftSpec]]:
    path = make_model(weights="soft", size="tiny", mtp_error_rate=SOFT_RATE)
    model = mtpstream.load_model(path)
    yield model, load_soft_spec(path)
    model.close()


def soft_prompt(spec: SoftSpec) -> list[int]:
    return [spec.successors[0][0]]


# ------------------------------------------------------------------ the option
def test_bogus_verify_names_the_field(models: Models) -> None:
    async def main() -> None:
        with mtpstream.init(models["qwen35-oracle"], n_draft=2, n_ctx=64, n_threads=1) as mtp:
            with pytest.raises(mtpstream.InvalidOptionError) as info:
                await mtp.generate("the", verify="bogus")
            assert info.value.field == "verify"
            assert "verify" in str(info.value)
            with pytest.raises(mtpstream.InvalidOptionError) as info:
                await mtp.chat([{"role": "user", "content": "hi"}], verify=1)
            assert info.value.field == "verify"

    anyio.run(main)
    # the server's requests go through the same mapping (an OpenAI-shaped 400 names it)
    with pytest.raises(mtpstream.InvalidOptionError) as info:
        generation_options({"verify": "Rejection"})
    assert info.value.field == "verify"
    assert generation_options({"verify": "rejection", "temp": 0.5}).verify == "rejection"


@pytest.mark.parametrize("name", ["qwen35-oracle", "qwen35-random"])
def test_temperature_zero_is_the_greedy_path(models: Models, name: str) -> None:
    """At temperature 0 verify="rejection" emits plain greedy decoding's tokens and
    runs no rejection sampling (nor counts a fallback)."""

    async def main() -> None:
        model = models[name]
        prompt = model.tokenize("we walked along the")
        with mtpstream.init(model, n_draft=0, n_ctx=128, n_threads=1, **EXACT) as plain:
            want, _ = await collect(plain, prompt, max_tokens=24)
        with mtpstream.init(model, n_draft=3, n_ctx=128, n_threads=1, **EXACT) as mtp:
            got, _ = await collect(mtp, prompt, max_tokens=24, verify="rejection")
            stats = mtp.stats()
        assert got == want
        assert stats.drafts_generated > 0
        assert stats.rejection_iters == stats.rejection_drafts == stats.verify_fallbacks == 0

    anyio.run(main)


@pytest.mark.parametrize(
    "options",
    [
        {"penalty_repeat": 1.2},
        {"penalty_freq": 0.5},
        {"penalty_present": 0.5},
        {"grammar": "root ::= [a-z ]+"},
    ],
    ids=["repeat", "frequency", "presence", "grammar"],
)
def test_incompatible_options_fall_back_to_match(models: Models, options: dict[str, Any]) -> None:
    """Penalties and grammars apply to the target only: such a call runs "match"
    (the same tokens as verify="match" with the same seed), counted in stats()."""

    async def main() -> None:
        model = models["qwen35-random"]
        with mtpstream.init(model, n_draft=3, n_ctx=128, n_threads=1, **EXACT) as mtp:
            common = {"max_tokens": 12, "temp": 0.9, "seed": 7, **options}
            match, _ = await collect(mtp, "the", verify="match", **common)
            assert mtp.stats().verify_fallbacks == 0
            rejection, _ = await collect(mtp, "the", verify="rejection", **common)
            stats = mtp.stats()
        assert rejection == match
        assert stats.verify_fallbacks == 1
        assert stats.rejection_iters == 0

    anyio.run(main)


# ------------------------------------------------------------------ reproducibility and modes
async def soft_tokens(
    model: mtpstream.Model, spec: SoftSpec, seeds: range, together: bool = False, **session: Any
) -> tuple[list[list[int]], mtpstream.MTPStats]:
    out: dict[int, list[int]] = {}
    with mtpstream.init(model, n_ctx=256, n_threads=1, **session) as mtp:

        async def one(seed: int) -> None:
            out[seed], _ = await collect(
                mtp, soft_prompt(spec), max_tokens=40, temp=0.8, top_k=3, seed=seed, verify="rejection"
            )

        if together:
            async with anyio.create_task_group() as tg:
                for seed in seeds:
                    tg.start_soon(one, seed)
        else:
            for seed in seeds:
                await one(seed)
        return [out[s] for s in seeds], mtp.stats()


@pytest.mark.parametrize(
    "session",
    [
        {"n_draft": 3, "rollback": "replay"},
        {"n_draft": 3, "rollback": "snapshots"},
        {"n_draft": 2, "n_seq": 3, "rollback": "replay"},
        {"n_draft": 2, "n_seq": 3, "rollback": "snapshots"},
    ],
    ids=["replay", "snapshots", "n_seq3-replay", "n_seq3-snapshots"],
)
def test_seeded_and_reproducible(soft: tuple[mtpstream.Model, SoftSpec], session: dict[str, Any]) -> None:
    """Same seed, same tokens: run twice, and (n_seq > 1) alone and together with other
    calls; every token is one of its predecessor's successors; drafts were sampled."""
    model, spec = soft
    seeds = range(3)

    async def main() -> None:
        first, stats = await soft_tokens(model, spec, seeds, **session)
        again, _ = await soft_tokens(model, spec, seeds, together=session.get("n_seq", 1) > 1, **session)
        assert again == first
        assert len({tuple(t) for t in first}) == len(first)  # the seed matters
        for tokens in first:
            assert len(tokens) == 40
            prev = soft_prompt(spec)[-1]
            for t in tokens:
                assert t in spec.next_tokens(prev)
                prev = t
        assert stats.rejection_iters == stats.iters > 0
        assert 0 < stats.rejection_accepted < stats.rejection_drafts

    anyio.run(main)


def test_auto_draft_and_prompt_cache(soft: tuple[mtpstream.Model, SoftSpec]) -> None:
    """n_draft="auto" and a prompt that extends the previous call's (prompt cache) run
    rejection sampling too (the tokens then depend on the draft lengths chosen)."""
    model, spec = soft

    async def main() -> None:
        with mtpstream.init(model, n_draft="auto", n_ctx=256, n_threads=1) as mtp:
            opts: dict[str, Any] = {"max_tokens": 30, "temp": 1.0, "verify": "rejection"}
            first, _ = await collect(mtp, soft_prompt(spec), seed=1, **opts)
            prompt = soft_prompt(spec) + first
            second, _ = await collect(mtp, prompt, seed=2, **opts)
            stats = mtp.stats()
        assert stats.prompt_tokens_cached > 0
        assert stats.rejection_drafts > 0
        prev = prompt[-1]
        for t in second:
            assert t in spec.next_tokens(prev)
            prev = t

    anyio.run(main)


# ------------------------------------------------------------------ acceptance on the soft oracle
@pytest.mark.parametrize(
    ("temp", "transforms"),
    [(1.0, {}), (0.8, {}), (0.7, {"top_k": 2, "min_p": 0.05})],
    ids=["t1", "t0.8", "t0.7-topk2-minp"],
)
def test_acceptance_matches_the_soft_oracle(
    soft: tuple[mtpstream.Model, SoftSpec], temp: float, transforms: dict[str, Any]
) -> None:
    """With one draft per verify every draft is judged on its own: the kept share is
    sum_x min(p(x), q(x)) under rejection and p(argmax q) under match, within 4.5
    standard errors (fixed seeds: deterministic)."""
    model, spec = soft

    async def measure(verify: str) -> tuple[int, int]:
        with mtpstream.init(model, n_draft=1, n_ctx=512, n_threads=1) as mtp:
            for seed in range(16):
                await mtp.generate(
                    soft_prompt(spec), max_tokens=300, temp=temp, seed=seed, verify=verify, **transforms
                )
            s = mtp.stats()
            return s.drafts_accepted, s.drafts_generated

    async def main() -> None:
        for verify, expected in (
            ("rejection", spec.rejection_acceptance(temp, **transforms)),
            ("match", spec.match_acceptance(temp, **transforms)),
        ):
            accepted, drafted = await measure(verify)
            assert drafted > 2000
            se = math.sqrt(expected * (1 - expected) / drafted)
            assert abs(accepted / drafted - expected) < 4.5 * se, (verify, accepted / drafted, expected, se)

    anyio.run(main)


def test_soft_spec_formula() -> None:
    """At temperature 1 the rejection acceptance is 1 - 0.6 e (the module docstring's
    formula), and the head's distribution is the target's at e = 0."""
    for rate in (0.0, 0.25, 1.0):
        spec = load_soft_spec(make_model(weights="soft", size="tiny", mtp_error_rate=rate))
        assert spec.rejection_acceptance(1.0) == pytest.approx(1 - 0.6 * rate, abs=0.01)
        p, _ = spec.distributions(1.0)
        assert p == pytest.approx([0.5, 0.3, 0.2], abs=0.01)
    with pytest.raises(ValueError, match="head='token'"):
        make_model(weights="soft", head="hidden")


# ------------------------------------------------------------------ the server
def test_server_requests_take_verify(soft: tuple[mtpstream.Model, SoftSpec]) -> None:
    """A real server on 127.0.0.1: ``verify`` in a request body (OpenAI client's
    extra_body) gives the in-process call's tokens, a bad one an OpenAI-shaped 400
    naming it, and /metrics the rejection counters."""
    import openai

    from test_server import Server

    model, spec = soft
    prompt = model.detokenize(soft_prompt(spec))
    opts: dict[str, Any] = {"max_tokens": 20, "temperature": 0.8, "seed": 3}

    # the rollback pinned on both sides: rollback="auto" picks by timing, and the two
    # rollbacks draft differently after a rejection, so a sampled call's tokens (not
    # their distribution) depend on it
    async def ours() -> str:
        with mtpstream.init(model, n_draft=3, n_ctx=512, rollback="snapshots") as mtp:
            return await mtp.generate(prompt, max_tokens=20, temp=0.8, seed=3, verify="rejection")

    expected = anyio.run(ours)
    server = Server(model.path, "--api-key", "sk-rej", "--n-ctx", "512", "--rollback", "snapshots")
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-rej", max_retries=0, timeout=60)
        r = client.completions.create(model="m", prompt=prompt, extra_body={"verify": "rejection"}, **opts)
        assert r.choices[0].text == expected
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(model="m", prompt=prompt, extra_body={"verify": "bogus"}, **opts)
        assert info.value.status_code == 400 and "verify" in str(info.value)
        metrics = server.metrics()
        assert metrics["mtpstream_rejection_iterations_total"] > 0
        assert metrics["mtpstream_verify_fallbacks_total"] == 0
    finally:
        assert server.stop() == 0


def test_soft_oracle_from_the_command_lines(tmp_path: Path) -> None:
    """Both CLIs write a soft oracle; ``info`` describes its spec."""
    import json
    import subprocess
    import sys

    def run(*args: str) -> str:
        return subprocess.run([sys.executable, *args], check=True, capture_output=True, text=True).stdout

    soft = ["--weights", "soft", "--mtp-error-rate", "0.5", "--cache-dir", str(tmp_path)]
    path = run("-m", "mtpstream.testing", "make", *soft).strip()
    info = json.loads(run("-m", "mtpstream.testing", "info", path))
    assert info["soft"]["rejection_acceptance_t1"] == pytest.approx(1 - 0.6 * 0.5, abs=0.01)
    assert info["soft"]["match_acceptance_t1"] == pytest.approx(0.2, abs=0.01)  # argmax q: the third
    cli = run("-m", "mtpstream", "make-model", *soft)
    assert cli.strip() == path
