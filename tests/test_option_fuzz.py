"""Property-based fuzzing of the option layer: whatever a caller passes, the answer is
a generation or an InvalidOptionError naming an option the caller passed — never
another exception, an abort or a hang."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mtpstream
from mtpstream.options import GenerationOptions, SessionOptions, validate

HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["auto", "AUTO", "\ud800", "", "f16", "q8_0", "q9_9"]),
    st.lists(st.one_of(st.integers(-3, 3), st.text(max_size=3)), max_size=3),
)
GEN_KEYS = [*GenerationOptions.model_fields, "temperature", "bogus"]
SESSION_KEYS = [*SessionOptions.model_fields, "bogus"]


def _check(err: mtpstream.InvalidOptionError, passed: dict[str, Any]) -> None:
    assert isinstance(err, ValueError)
    assert err.field is None or err.field in passed, (err.field, passed)
    assert str(err)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(GEN_KEYS), HOSTILE, max_size=4))
def test_generation_options_validate_or_raise_named_errors(opts: dict[str, Any]) -> None:
    try:
        o = validate(GenerationOptions, opts)
    except mtpstream.InvalidOptionError as err:
        _check(err, opts)
        return
    # what passed is in range for native code
    for name in ("max_tokens", "top_k", "penalty_last_n", "emit_stats_every"):
        assert -1 <= getattr(o, name) < 2**31
    assert math.isfinite(o.temp)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(SESSION_KEYS), HOSTILE, max_size=4))
def test_session_options_validate_or_raise_named_errors(opts: dict[str, Any]) -> None:
    try:
        o = validate(SessionOptions, opts)
    except mtpstream.InvalidOptionError as err:
        _check(err, opts)
        return
    assert 1 <= o.n_ctx < 2**31
    assert o.n_threads is None or 1 <= o.n_threads <= 512


@pytest.fixture(scope="module")
def session(oracle_module: mtpstream.Model) -> Any:
    with mtpstream.init(oracle_module, n_draft=2, n_ctx=128) as mtp:
        yield mtp


@pytest.fixture(scope="module")
def oracle_module() -> Any:
    from mtpstream.testing import make_model

    with mtpstream.load_model(make_model()) as m:
        yield m


SMALL = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.lists(st.text(max_size=3), max_size=2),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.dictionaries(st.sampled_from([k for k in GEN_KEYS if k != "timeout"]), SMALL, max_size=3),
    st.one_of(st.text(max_size=12), st.lists(st.integers(-5, 5000), max_size=4)),
)
def test_generate_with_hostile_options_keeps_the_session(
    session: mtpstream.MTP, opts: dict[str, Any], prompt: Any
) -> None:
    import anyio

    opts = (
        {**opts, "max_tokens": 3}
        if isinstance(opts.get("max_tokens"), int) and opts["max_tokens"] > 3
        else opts
    )
    try:
        anyio.run(lambda: session.generate(prompt, **opts))
    except mtpstream.InvalidOptionError as err:
        _check(err, {**opts, "prompt": prompt})
    except (mtpstream.ContextOverflowError, mtpstream.GenerationError):
        pass
    assert anyio.run(lambda: session.generate("we walked along", max_tokens=2)) is not None
