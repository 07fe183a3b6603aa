"""Log-probabilities against llama-server's own (``n_probs``), built from the llama.cpp
source llama-cpp-python 0.3.36 vendors: same model, same prompt, greedy: the same
tokens, log-probabilities within 1e-3.

Needs the llama-server binary that ``mtpstream bench --with-upstream`` builds once
(under the upstream cache) or one named by ``MTPSTREAM_LLAMA_SERVER``; skips, saying
so, without it (building it takes longer than the suite).
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import mtpstream
from mtpstream.bench.upstream import launched
from mtpstream.testing import llama_cpp_source

from conftest import EXACT, Models

TOL = 1e-3
TOP = 5
N_TOKENS = 16


def _binary() -> Path:
    named = os.environ.get("MTPSTREAM_LLAMA_SERVER")
    exe = Path(named) if named else llama_cpp_source.cache_root() / "build" / "bin" / "llama-server"
    if not exe.is_file():
        pytest.skip(
            f"no llama-server at {exe} (mtpstream bench --with-upstream builds it; or MTPSTREAM_LLAMA_SERVER)"
        )
    return exe


def _post(port: int, path: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def llama_server(model: Path) -> contextlib.AbstractContextManager[int]:
    args = ["-m", str(model), "-c", "512", "-np", "1", "-fa", "off", "--no-webui", "-t", "2", "-tb", "2"]
    return launched(_binary(), args)


@pytest.mark.asyncio
# On the random-weight model llama-server's own prompt processing (it batches the
# prompt differently from llama-cpp-python, which we match to 1e-4) already moves the
# first row's alternatives by 2.7e-3: batch rounding in the recurrent layers (README,
# "Exactness"), not a different distribution.
@pytest.mark.parametrize(("name", "n_draft", "tol"), [("qwen35-oracle", 3, TOL), ("qwen35-random", 0, 1e-2)])
async def test_logprobs_match_llama_servers(models: Models, name: str, n_draft: int, tol: float) -> None:
    model = models[name]
    prompt = model.tokenize("we walked along the river")
    with llama_server(models.paths[name]) as port:
        body = {"prompt": prompt, "n_predict": N_TOKENS, "n_probs": TOP, "temperature": 0.0}
        ref = _post(port, "/completion", {**body, "cache_prompt": False, "post_sampling_probs": False})
    probs = ref["completion_probabilities"]
    with mtpstream.init(model, n_draft=n_draft, n_ctx=512, **EXACT) as mtp:
        events = [
            ev
            async for ev in mtp.stream_events(prompt, max_tokens=N_TOKENS, logprobs=TOP)
            if isinstance(ev, mtpstream.TokenEvent)
        ]
    assert [ev.token_id for ev in events] == [p["id"] for p in probs]
    for i, (ev, p) in enumerate(zip(events, probs, strict=True)):
        assert ev.logprob is not None, i
        assert ev.logprob.logprob == pytest.approx(p["logprob"], abs=tol)
        want = {t["id"]: t["logprob"] for t in p["top_logprobs"]}
        got = {t.token_id: t.logprob for t in ev.top_logprobs}
        # equal values; the tokens may differ only among exact ties, broken each its own way
        assert sorted(got.values()) == pytest.approx(sorted(want.values()), abs=tol), i
        for t in set(got) & set(want):
            assert got[t] == pytest.approx(want[t], abs=tol)
