"""What a session sends and fetches over llama.cpp's RPC backend, counted by a relay
(``mtpstream.testing.rpc_counter``) in front of each worker: a greedy MTP draft step
reads its token from the worker that holds the head's logits, not a row of n_vocab
logits; a call drafting for rejection sampling reads the logits it needs; a greedy
call after it is back to tokens, with the same output as before.

In a subprocess with a watchdog, as in test_rpc.py (ggml's RPC client ends the
process when it loses a worker).
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from mtpstream.testing import RpcWorker, make_model

from conftest import needs_rpc, run_python

pytestmark = needs_rpc

ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


# One session (n_draft=3): greedy, rejection, greedy. Per call: its iterations and
# drafts, and from the relays' logs the GET_TENSORs that fetched at least one row of
# logits and those that fetched the device's draft token.
SCRIPT = """
import json, sys
import anyio
import mtpstream
from mtpstream.testing import load_spec
from mtpstream.testing.rpc_counter import Relay, wait_quiet
from conftest import EXACT, collect, prompts_for

path, ports = sys.argv[1], [int(p) for p in sys.argv[2].split(",")]
relays = [Relay("127.0.0.1", p, i) for i, p in enumerate(ports)]
model = mtpstream.load_model(path, rpc=[r.endpoint for r in relays], n_gpu_layers=4)
prompt = prompts_for(model, load_spec(path))[2]
row = 4 * model.n_vocab

async def call(mtp, **opts):
    wait_quiet(relays, 0.2)
    for r in relays:
        r.start_log()
    before = mtp.stats()
    ids, done = await collect(mtp, prompt, max_tokens=40, **opts)
    wait_quiet(relays, 0.2)
    log = [e for r in relays for e in r.take_log() if e.cmd == "GET_TENSOR"]
    return {
        "ids": ids,
        "iters": mtp.stats().iters - before.iters,
        "drafts": done.usage.drafts_generated,
        "logit_rows": sum(e.response_bytes >= 8 + row for e in log),
        "draft_tokens": sum(e.detail == "mtp_draft_argmax" for e in log),
    }

async def run():
    with mtpstream.init(model, n_draft=3, n_ctx=512, rollback="snapshots", **EXACT) as mtp:
        return [
            await call(mtp),
            await call(mtp, temp=0.8, seed=7, verify="rejection"),
            await call(mtp),
        ]

out = anyio.run(run)
model.close()
print("RESULT " + json.dumps(out))
"""


def _result(proc: subprocess.CompletedProcess[str]) -> Any:
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise AssertionError(f"no result (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def test_greedy_draft_steps_fetch_a_token_not_a_logits_row(workers: list[RpcWorker]) -> None:
    path = make_model(arch="qwen35", weights="oracle", size="tiny", mtp_error_rate=0.25)
    ports = ",".join(str(w.port) for w in workers)
    code = f"import sys; sys.argv = ['x', {str(path)!r}, {ports!r}]\n" + SCRIPT
    greedy, rejection, again = _result(run_python(code, timeout=300, env=ENV))
    for c in (greedy, again):
        assert c["drafts"] > 0 and c["draft_tokens"] > 0, c
        # logits rows only for the target: one fetch per verify, plus the prompt's last token
        assert c["logit_rows"] <= c["iters"] + 1, c
    # drafts for rejection sampling need the head's distribution: a logits row per draft step
    assert rejection["drafts"] > 0 and rejection["draft_tokens"] == 0, rejection
    assert rejection["logit_rows"] > rejection["iters"] + 1, rejection
    assert again["ids"] == greedy["ids"]
