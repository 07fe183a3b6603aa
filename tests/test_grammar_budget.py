"""The real cost bound on grammars (issue 19): every new grammar is built and tried in
a checker process that is killed past ``grammar_budget``, and a grammar step in the
engine that runs over ``grammar_step_budget`` ends its call with ``GenerationError``.

The bomb is the issue's own: the JSON-schema converter's grammar for
``^(a{0,1000}){0,1000}$`` (building and advancing its stacks never ends in llama.cpp),
reached behind a decoy that the static stack model of ``mtpstream._gbnf`` follows
instead, so only the real trial can refuse it. Cases that would wedge the worker run
in a subprocess with a watchdog.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mtpstream
from mtpstream import _grammar_limits as limits
from test_server_limits import HealthWatch, Server, assert_exact, assert_openai_error, reference

from conftest import run_python

BUDGET_S = 2.0
BOUND_S = 30.0  # a refusal over the budget ends well within this, even on 2 loaded cores
ISSUE_PATTERN = "^(a{0,1000}){0,1000}$"
# the trial ends the bomb at the budget, or sees one of its steps finish over the step budget
REFUSAL_RE = rf"grammar is too costly: .*(grammar budget of {BUDGET_S:g} s|grammar step budget is 1 s)"


def converted(pattern: str) -> str:
    from llama_cpp import llama_grammar

    return str(llama_grammar.json_schema_to_gbnf(json.dumps({"type": "string", "pattern": pattern})))


def decoyed_bomb() -> str:
    """``root`` offers six two-character words starting with "c", or "b" followed by the
    issue's wedging grammar: the stack model follows the "c" words (more stacks) and
    passes it; llama.cpp, on the "b" path, never finishes."""
    bomb = converted(ISSUE_PATTERN).replace("root ::=", "bomb ::=")
    decoy = " | ".join(f'"c" "{i}"' for i in range(6))
    return f'root ::= {decoy} | "b" bomb\n{bomb}'


def test_the_decoyed_bomb_passes_the_static_limits() -> None:
    """Else the tests below would not show what the trial adds."""
    assert limits.grammar_problem(decoyed_bomb()) is None


def test_a_grammar_over_the_budget_is_refused_and_the_session_goes_on() -> None:
    proc = run_python(
        f"""
        import anyio, json, time, mtpstream
        from llama_cpp import llama_grammar
        from mtpstream.testing import make_model
        model = mtpstream.load_model(str(make_model()))
        bomb = {decoyed_bomb()!r}
        async def main():
            with mtpstream.init(model, n_draft=3, n_ctx=512, grammar_budget={BUDGET_S}) as mtp:
                before = await mtp.generate("we walked along", max_tokens=8)
                rows = []
                for name, grammar in [("bomb", bomb), ("again", bomb), ("json", llama_grammar.JSON_GBNF),
                                      ("json-cached", llama_grammar.JSON_GBNF)]:
                    t = time.perf_counter()
                    try:
                        await mtp.generate("we walked along", max_tokens=4, grammar=grammar)
                        out = ["ok", "", None]
                    except mtpstream.MTPError as exc:
                        out = [type(exc).__name__, str(exc), getattr(exc, "field", None)]
                    checker = mtp._grammars
                    rows.append([name, *out, time.perf_counter() - t, checker.trials, checker.restarts])
                after = await mtp.generate("we walked along", max_tokens=8)
                print(json.dumps({{"rows": rows, "same": before == after}}))
        anyio.run(main)
        """,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-1000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    rows = {r[0]: r[1:] for r in report["rows"]}
    kind, message, field, seconds, trials, restarts = rows["bomb"]
    assert (kind, field) == ("InvalidOptionError", "grammar"), rows["bomb"]
    assert re.search(REFUSAL_RE, message), message
    assert seconds < BOUND_S and trials == 1
    assert restarts == (1 if "grammar budget of" in message else 0)  # killed at the budget
    # the verdict is cached: no second trial, no second kill
    assert rows["again"][0] == "InvalidOptionError" and rows["again"][4:] == [1, restarts]
    # a fine grammar passes afterwards (in a new child if the old one was killed), once
    assert rows["json"][0] == "ok" and rows["json"][4] == 2
    assert rows["json-cached"][0] == "ok" and rows["json-cached"][4] == 2
    assert report["same"]


def test_closing_the_session_cuts_a_running_trial_short() -> None:
    """close() during a bomb's trial kills the child at once: the call gets
    SessionClosedError (no verdict is cached) and close() waits for no budget."""
    proc = run_python(
        f"""
        import anyio, json, time, mtpstream
        from mtpstream.testing import make_model
        model = mtpstream.load_model(str(make_model()))
        bomb = {decoyed_bomb()!r}
        async def main():
            mtp = mtpstream.init(model, n_draft=3, n_ctx=512, grammar_budget=60.0, grammar_step_budget=60.0)
            checker = mtp._grammars
            out = {{}}
            async def call():
                try:
                    await mtp.generate("we walked along", max_tokens=4, grammar=bomb)
                    out["call"] = "ok"
                except mtpstream.MTPError as exc:
                    out["call"] = type(exc).__name__
            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                while checker.trials == 0:
                    await anyio.sleep(0.05)
                await anyio.sleep(1.0)  # inside the trial
                t = time.perf_counter()
                mtp.close()
                out["close_s"] = time.perf_counter() - t
            out["child"] = checker._child is None
            out["restarts"] = checker.restarts
            print(json.dumps(out))
        anyio.run(main)
        """,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-1000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["call"] == "SessionClosedError" and out["child"] and out["restarts"] == 0, out
    assert out["close_s"] < BOUND_S, out


def test_a_response_format_grammar_over_the_budget_names_response_format(oracle: mtpstream.Model) -> None:
    """The field of the refusal is the option the grammar came from (a schema whose
    grammar is refused by a step budget below any real step: a checker refusal
    without a bomb)."""
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}

    async def run() -> None:
        with mtpstream.init(oracle, n_draft=3, n_ctx=512, grammar_step_budget=1e-6) as mtp:
            with pytest.raises(mtpstream.InvalidOptionError, match="grammar step budget") as info:
                await mtp.generate("we walked along", max_tokens=4, response_format=fmt)
            assert info.value.field == "response_format"
            with pytest.raises(mtpstream.InvalidOptionError) as info:
                await mtp.generate("we walked along", max_tokens=4, grammar="root ::= [a-z ]+")
            assert info.value.field == "grammar"

    import anyio

    anyio.run(run)


@pytest.mark.parametrize("value", [0, -1, float("nan"), 1e9, "5"])
def test_budget_options_are_validated(oracle: mtpstream.Model, value: Any) -> None:
    for name in ("grammar_budget", "grammar_step_budget"):
        with pytest.raises(mtpstream.InvalidOptionError) as info:
            mtpstream.init(oracle, n_ctx=64, **{name: value})
        assert info.value.field == name


@pytest.mark.asyncio
async def test_a_step_over_the_engine_budget_ends_only_its_call(oracle: mtpstream.Model) -> None:
    """The engine's per-step budget (the checker off, a budget no real step meets): the
    grammar call ends with GenerationError naming the budget; the other sequence's
    call, running beside it, finishes exactly; the session stays usable."""
    from llama_cpp import llama_grammar

    with mtpstream.init(oracle, n_draft=3, n_ctx=512, n_seq=2) as ref:
        expected = await ref.generate("we walked along the river", max_tokens=24)
    with mtpstream.init(
        oracle, n_draft=3, n_ctx=512, n_seq=2, grammar_budget=None, grammar_step_budget=1e-6
    ) as mtp:
        import anyio

        results: dict[str, Any] = {}

        async def grammar_call() -> None:
            try:
                await mtp.generate("we walked along", max_tokens=24, grammar=llama_grammar.JSON_GBNF)
                results["grammar"] = "ok"
            except mtpstream.GenerationError as exc:
                results["grammar"] = str(exc)

        async def plain_call() -> None:
            results["plain"] = await mtp.generate("we walked along the river", max_tokens=24)

        async with anyio.create_task_group() as tg:
            tg.start_soon(grammar_call)
            tg.start_soon(plain_call)
        assert "over the grammar step budget of 0.000 s" in results["grammar"], results
        assert "too costly" in results["grammar"]
        assert results["plain"] == expected
        assert await mtp.generate("we walked along the river", max_tokens=24) == expected


# ------------------------------------------------------------------ the real server


@pytest.fixture(scope="module")
def model_path(model_paths: dict[str, Path]) -> Path:
    return model_paths["qwen35-oracle"]


@pytest.fixture(scope="module")
def server(model_path: Path) -> Iterator[Server]:
    s = Server(
        model_path,
        "--n-seq",
        "2",
        "--n-ctx",
        "2000",
        "--api-key",
        "sk-limits-456",
        "--grammar-budget",
        str(BUDGET_S),
    )
    yield s
    code, err = s.stop()
    assert code == 0 and "Traceback" not in err, err


def test_the_issue_bombs_get_400_while_the_server_stays_responsive(server: Server, model_path: Path) -> None:
    expected = reference(model_path, 2)
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "a", "schema": {"type": "string", "pattern": ISSUE_PATTERN}},
    }
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("response_format", {"response_format": fmt}, "limit"),
        ("grammar", {"grammar": converted(ISSUE_PATTERN)}, "too costly"),
        ("grammar", {"grammar": decoyed_bomb()}, REFUSAL_RE),
        ("grammar", {"grammar": decoyed_bomb()}, REFUSAL_RE),  # cached
    ]
    with HealthWatch(server):
        for path in ("/v1/chat/completions", "/v1/completions"):
            for field, extra, match in cases:
                body: dict[str, Any] = {"max_tokens": 8, **extra}
                if path == "/v1/completions":
                    body["prompt"] = "we walked along"
                else:
                    body["messages"] = [{"role": "user", "content": "hi"}]
                for stream in (False, True):
                    t = time.monotonic()
                    r = server.post(path, {**body, "stream": stream}, timeout=BOUND_S)
                    assert r.status_code == 400, (path, field, match, stream, r.text)
                    err = assert_openai_error(r, 400)
                    assert err["param"] == field and re.search(match, err["message"]), err
                    assert time.monotonic() - t < BOUND_S
    server.idle()
    assert_exact(server, expected)
    # a fine grammar still works, and again from the cache
    for _ in range(2):
        r = server.post(
            "/v1/completions",
            {"prompt": "we walked along", "max_tokens": 8, "response_format": {"type": "json_object"}},
        )
        assert r.status_code == 200, r.text


def test_serve_rejects_a_bad_budget(model_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mtpstream", "serve", str(model_path), "--grammar-budget", "0", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "grammar_budget" in proc.stderr, proc.stderr[-2000:]


def test_trials_beyond_the_queue_limit_are_busy(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One trial runs, MAX_WAITING wait, the next is SessionBusyError at once (the
    trial itself is replaced by one that waits for the test: no child, no CPU)."""
    import threading

    from mtpstream import _grammar_check as gc

    release = threading.Event()
    checker = gc.GrammarChecker(model_path, 5.0, 1.0)

    def trial(grammar: str) -> str | None:
        release.wait(60)
        return None

    monkeypatch.setattr(checker, "_trial", trial)
    results: list[str] = []

    def call(i: int) -> None:
        try:
            checker.check(f'root ::= "queue-{i}-{time.time_ns()}"', "grammar")
            results.append("ok")
        except mtpstream.SessionBusyError:
            results.append("busy")

    threads = [threading.Thread(target=call, args=(i,)) for i in range(gc.MAX_WAITING + 1)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while checker._waiting < gc.MAX_WAITING + 1:
        assert time.monotonic() < deadline, checker._waiting
        time.sleep(0.01)
    call(99)  # one more: refused without waiting
    assert results == ["busy"]
    release.set()
    for t in threads:
        t.join(30)
    assert results.count("ok") == gc.MAX_WAITING + 1 and results.count("busy") == 1
