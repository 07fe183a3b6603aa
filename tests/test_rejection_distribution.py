"""verify="rejection" keeps plain sampling's output distribution.

For each configuration, 1,200 seeded calls of plain decoding (``n_draft=0``) and
1,200 of ``verify="rejection"`` with ``n_draft=3`` give the first four tokens after
the prompt (the first from the prompt's logits, the next three decided by
verification); a chi-square homogeneity test compares each position's marginal
and the pair of positions 2-3 and, on the soft oracle, which of its predecessor's
three successors each token at positions 2-4 is (pooled: 3,600 draws a side), at
a fixed significance level of 0.001. The seeds
are fixed (disjoint between the two sides), so each test's outcome is fixed too.

The soft oracle's head (``mtp_error_rate=0.75``: q = 0.2 / 0.15 / 0.65 against the
target's 0.5 / 0.3 / 0.2 at temperature 1) makes the residual matter: resampling
a rejected position from p instead of norm(max(0, p - q)) moves the marginals by
~0.1 and fails these tests (checked on purpose). The random-weight model's head
is unrelated to its target (acceptance ~0), so there it checks the sampling and
the residual path at a vocabulary's scale, not the acceptance rule.
"""

from __future__ import annotations

import itertools
from typing import Any

import anyio
import pytest

import mtpstream
from chi_square import homogeneity
from mtpstream.testing import SoftSpec, load_soft_spec, make_model

from conftest import EXACT, Models, collect

pytestmark = pytest.mark.slow

N_SAMPLES = 1200
ALPHA = 0.001
N_POS = 4
PLAIN_SEEDS = range(N_SAMPLES)
REJECTION_SEEDS = range(100_000, 100_000 + N_SAMPLES)

CONFIGS: list[tuple[float, dict[str, Any]]] = [
    (1.0, {}),
    (0.7, {"top_k": 3, "top_p": 0.95, "min_p": 0.05}),
    (1.0, {"top_k": 2}),
    (0.7, {"top_p": 0.75}),
]
RANDOM_CONFIGS: list[tuple[float, dict[str, Any]]] = [
    (1.0, {"top_k": 40, "top_p": 0.95, "min_p": 0.02}),
    (0.7, {"top_k": 20, "min_p": 0.05}),
]


async def first_tokens(
    model: mtpstream.Model, prompt: list[int], n_draft: int, seeds: range, **opts: Any
) -> list[tuple[int, ...]]:
    """The first N_POS tokens of one call per seed (-1 past an end of generation)."""
    out = []
    with mtpstream.init(model, n_draft=n_draft, n_ctx=64, n_threads=1, **EXACT) as mtp:
        for seed in seeds:
            ids, _ = await collect(mtp, prompt, max_tokens=N_POS, seed=seed, **opts)
            out.append(tuple(ids + [-1] * (N_POS - len(ids))))
        if n_draft:
            assert mtp.stats().rejection_drafts > 0
    return out


Samples = list[tuple[int, ...]]


def assert_same_distribution(
    plain: Samples, rejection: Samples, pooled: tuple[list[int], list[int]] | None = None
) -> None:
    """Each position's tokens, the pair at positions 2-3 and (``pooled``) a statistic
    pooled over positions: homogeneous at level ALPHA."""
    tests = [
        (name, [key(t) for t in plain], [key(t) for t in rejection])
        for name, key in [(f"position {i + 1}", lambda t, i=i: t[i]) for i in range(N_POS)]
        + [("positions 2-3", lambda t: (t[1], t[2]))]
    ]
    if pooled is not None:
        tests.append(("successor slots, positions 2-4", *pooled))
    failures = []
    for name, a, b in tests:
        res = homogeneity(a, b)
        if res.p_value < ALPHA:
            failures.append(f"{name}: chi2={res.statistic:.1f} df={res.df} p={res.p_value:.2e} {res.table}")
    assert not failures, "\n".join(failures)


def slots(spec: SoftSpec, samples: Samples) -> list[int]:
    """Which of its predecessor's three successors each token at positions 2-4 is:
    independent draws from the transformed p at every position, whatever the
    predecessor (the soft oracle's distribution is the same after every class)."""
    out = []
    for tokens in samples:
        for prev, tok in itertools.pairwise(tokens):
            out.append(spec.next_tokens(prev).index(tok))
    return out


@pytest.mark.parametrize(
    ("temp", "transforms"), CONFIGS, ids=["t1", "t0.7-k3-p.95-m.05", "t1-k2", "t0.7-p.75"]
)
def test_soft_oracle_distribution(temp: float, transforms: dict[str, Any]) -> None:
    path = make_model(weights="soft", size="tiny", mtp_error_rate=0.75)
    spec = load_soft_spec(path)
    prompt = [spec.successors[5][1]]
    opts = {"temp": temp, **transforms}

    async def main() -> None:
        with mtpstream.load_model(path) as model:
            plain = await first_tokens(model, prompt, 0, PLAIN_SEEDS, **opts)
            rejection = await first_tokens(model, prompt, 3, REJECTION_SEEDS, verify="rejection", **opts)
        pooled = (slots(spec, plain), slots(spec, rejection))
        assert_same_distribution(plain, rejection, pooled)

    anyio.run(main)


@pytest.mark.parametrize(("temp", "transforms"), RANDOM_CONFIGS, ids=["t1-k40-p.95-m.02", "t0.7-k20-m.05"])
def test_random_model_distribution(models: Models, temp: float, transforms: dict[str, Any]) -> None:
    model = models["qwen35-random"]
    prompt = model.tokenize("we walked along the")
    opts = {"temp": temp, **transforms}

    async def main() -> None:
        plain = await first_tokens(model, prompt, 0, PLAIN_SEEDS, **opts)
        rejection = await first_tokens(model, prompt, 3, REJECTION_SEEDS, verify="rejection", **opts)
        assert_same_distribution(plain, rejection)

    anyio.run(main)
