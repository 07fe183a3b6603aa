"""Layers offloaded to llama.cpp RPC workers (``mtpstream rpc-server`` subprocesses on
127.0.0.1, started and stopped here): greedy output and acceptance equal the local run,
MTP head included; unreachable and killed workers.

Everything that talks to a worker runs in a subprocess with a watchdog (``run_python``):
ggml's RPC client ends the process (``GGML_ABORT``) when its connection to a worker
breaks, and only mtpstream's relay in between keeps that from happening.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest

import mtpstream
from mtpstream.testing import RpcWorker, free_port, make_model, rpc_workers

from conftest import needs_rpc, run_python

pytestmark = needs_rpc

ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


# The client script: the same calls on the local model, on the model split over the
# workers (tiny models: 4 layers + 1 MTP layer; n_gpu_layers=4 keeps layers 0-1 on the
# local CPU and puts 2-4 and the output on the two workers) and on that split with the
# tail kept here (mtp_local: the MTP layer 4 and the output on the local CPU), one JSON
# line out.
EXACT_SCRIPT = """
import json, sys
import anyio
import mtpstream
from mtpstream._cli_rpc import capture_placement, placement_fields
from mtpstream.testing import load_spec
from conftest import EXACT, collect, prompts_for, together

path, endpoints = sys.argv[1], sys.argv[2].split(",")
local = mtpstream.load_model(path)
with capture_placement() as lines:
    remote = mtpstream.load_model(path, rpc=endpoints, n_gpu_layers=4)
with capture_placement() as tail_lines:
    tail = mtpstream.load_model(path, rpc=endpoints, n_gpu_layers=4, mtp_local=True)
spec = load_spec(path)
prompts = prompts_for(local, spec)

async def run(model, n_draft, n_seq):
    with mtpstream.init(model, n_draft=n_draft, n_ctx=512, n_seq=n_seq, rollback="snapshots", **EXACT) as mtp:
        if n_seq == 1:
            got = [await collect(mtp, prompts[2], max_tokens=40)]
        else:
            got = await together(mtp, [(p, {"max_tokens": 40}) for p in prompts])
    return [[ids, done.usage.drafts_accepted, done.usage.drafts_generated] for ids, done in got]

out = {
    "placement": placement_fields(lines),
    "tail_placement": placement_fields(tail_lines),
    "mtp_local": [remote.mtp_local, tail.mtp_local],
    "runs": {},
}
for n_draft in range(5):
    for n_seq in (1, 4):
        out["runs"][f"{n_draft}/{n_seq}"] = {
            "local": anyio.run(run, local, n_draft, n_seq),
            "rpc": anyio.run(run, remote, n_draft, n_seq),
            "rpc_tail": anyio.run(run, tail, n_draft, n_seq),
        }
print("RESULT " + json.dumps(out))
"""


def _result(proc: subprocess.CompletedProcess[str]) -> Any:
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise AssertionError(f"no result (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def _script(body: str, *args: str) -> str:
    return f"import sys; sys.argv = ['x', *{list(args)!r}]\n" + body


@pytest.mark.parametrize(("arch", "head"), [("qwen35", "hidden"), ("qwen35moe", "hidden")])
def test_split_over_two_workers_equals_local(workers: list[RpcWorker], arch: str, head: str) -> None:
    path = make_model(arch=arch, weights="oracle", size="tiny", mtp_error_rate=0.25, head=head)  # type: ignore[arg-type]
    endpoints = ",".join(w.endpoint for w in workers)
    proc = run_python(_script(EXACT_SCRIPT, str(path), endpoints), timeout=600, env=ENV)
    out = _result(proc)
    placement = dict(out["placement"])
    # both workers hold layers, and so does the local CPU
    assert "layers on RPC0" in placement and "layers on RPC1" in placement, placement
    assert "layers on CPU" in placement, placement
    # mtp_local: the MTP layer (4) and the output layer (5) on the local CPU, 2-3 on the workers
    tail = dict(out["tail_placement"])
    assert tail["layers on CPU"] == "0-1, 4-5", tail
    assert tail["layers on RPC0"] == "2" and tail["layers on RPC1"] == "3", tail
    assert out["mtp_local"] == [False, True]
    for key, runs in out["runs"].items():
        assert runs["rpc"] == runs["local"], key
        assert runs["rpc_tail"] == runs["local"], key
        if not key.startswith("0/"):
            assert any(acc > 0 for _ids, acc, _gen in runs["rpc"]), key  # MTP drafted and was accepted


SIDECAR_SCRIPT = """
import json, sys
import anyio
import mtpstream
from mtpstream.testing import load_spec, make_model
from conftest import EXACT, collect, prompts_for

endpoints = sys.argv[2].split(",")
target_path = make_model(arch="qwen35", weights="oracle", size="tiny", mtp_error_rate=0.25)
sidecar_path = make_model(arch="qwen35", weights="oracle", size="tiny", mtp_error_rate=0.25, kind="sidecar")
local = {"target": mtpstream.load_model(target_path), "sidecar": mtpstream.load_model(sidecar_path)}
remote = {
    "target": mtpstream.load_model(target_path, rpc=endpoints, n_gpu_layers=4),
    "sidecar": mtpstream.load_model(sidecar_path, rpc=endpoints[::-1], n_gpu_layers=99),
}
prompt = prompts_for(local["target"], load_spec(target_path))[2]

async def run(target, sidecar):
    with mtpstream.init(target, n_draft=3, n_ctx=512, draft_model=sidecar, **EXACT) as mtp:
        ids, done = await collect(mtp, prompt, max_tokens=40)
    return [ids, done.usage.drafts_accepted, done.usage.drafts_generated]

side = {"local": local, "rpc": remote}
out = {f"{t}/{d}": anyio.run(run, side[t]["target"], side[d]["sidecar"]) for t in side for d in side}
print("RESULT " + json.dumps(out))
"""


def test_sidecar_head_local_or_on_the_workers(workers: list[RpcWorker]) -> None:
    endpoints = ",".join(w.endpoint for w in workers)
    out = _result(run_python(_script(SIDECAR_SCRIPT, "-", endpoints), timeout=300, env=ENV))
    assert out["local/local"][1] > 0
    for key in ("local/rpc", "rpc/local", "rpc/rpc"):
        assert out[key] == out["local/local"], key


def _info_lines(path: Path, *args: str) -> list[str]:
    """``mtpstream info`` on ``path`` with ``args``: its lines, whitespace collapsed."""
    proc = subprocess.run(
        [sys.executable, "-m", "mtpstream", "info", str(path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **ENV},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [" ".join(line.split()) for line in proc.stdout.splitlines()]


def test_info_tells_which_device_holds_which_layers(workers: list[RpcWorker]) -> None:
    path = make_model(arch="qwen35moe", weights="oracle", size="tiny", mtp_error_rate=0.25)
    a, b = (w.endpoint for w in workers)
    lines = _info_lines(path, "--rpc", f"{a},{b}", "-ngl", "4", "-ts", "1,3")
    # 5 layers (4 + the MTP layer) and the output layer "5": 0-1 local, then 1:3 over the workers
    assert "layers on CPU 0-1" in lines
    assert f"layers on RPC0 ({a}) 2" in lines
    assert f"layers on RPC1 ({b}) 3-5" in lines
    assert any(line.startswith(f"weights on {b} ") for line in lines), lines


def test_mtp_local_keeps_the_tail_on_this_host(workers: list[RpcWorker]) -> None:
    path = make_model(arch="qwen35moe", weights="oracle", size="tiny", mtp_error_rate=0.25)
    a, b = (w.endpoint for w in workers)
    # the same split with the MTP layer (4) and the output layer (5) kept here; the two
    # layers left for the workers shared 1:3 as whole layers
    lines = _info_lines(path, "--rpc", f"{a},{b}", "-ngl", "4", "-ts", "1,3", "--mtp-local")
    assert "layers on CPU 0-1, 4-5" in lines, lines
    assert f"layers on RPC0 ({a}) 2" in lines
    assert f"layers on RPC1 ({b}) 3" in lines
    # every layer offloaded (llama.cpp's default n_gpu_layers): only the tail stays here
    lines = _info_lines(path, "--rpc", f"{a},{b}", "--mtp-local")
    assert "layers on CPU 4-5" in lines, lines
    # without workers there is nothing to move
    assert mtpstream.load_model(path, mtp_local=True).mtp_local is False
    with pytest.raises(TypeError, match="mtp_local"):
        mtpstream.load_model(path, rpc=f"{a},{b}", mtp_local="yes")  # type: ignore[arg-type]


MEM_SCRIPT = """
import sys, mtpstream
from mtpstream import _rpc
path, endpoint = sys.argv[1], sys.argv[2]
try:
    mtpstream.load_model(path, rpc=[endpoint], n_gpu_layers=99)
    print("RESULT loaded")
except mtpstream.ModelLoadError as exc:
    print("RESULT refused " + str(exc).replace(chr(10), " "))
print("ALIVE", _rpc.probe(endpoint, timeout_s=5.0, handshake=True) is None)
"""


def test_worker_mem_caps_what_it_reports_and_what_it_allocates() -> None:
    path = make_model(arch="qwen35moe", weights="oracle", size="tiny", mtp_error_rate=0.25)
    # reported: the default split follows the workers' free memory, 64 : 192 MiB = 1 : 3
    with rpc_workers(2, mem_mib=[64, 192]) as (a, b):
        lines = _info_lines(path, "--rpc", f"{a.endpoint},{b.endpoint}", "-ngl", "4")
        assert f"layers on RPC0 ({a.endpoint}) 2" in lines, lines
        assert f"layers on RPC1 ({b.endpoint}) 3-5" in lines, lines
        assert f"memory on RPC0 ({a.endpoint}) 64 MiB free" in lines, lines
        assert f"memory on RPC1 ({b.endpoint}) 192 MiB free" in lines, lines
    # enforced: the tiny model's 5 MiB of weights on a 1 MiB worker are refused, the
    # client's load fails naming the cause, and the worker serves its next client
    with rpc_workers(1, mem_mib=[1]) as (w,):
        proc = run_python(_script(MEM_SCRIPT, str(path), w.endpoint), timeout=120, env=ENV)
        assert "RESULT refused" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "rpc-server --mem" in proc.stdout and f"RPC0[{w.endpoint}]" in proc.stdout
        assert "ALIVE True" in proc.stdout
        assert w.proc is not None and w.proc.poll() is None
    # freed buffers count no more: on an 8 MiB worker, with a model holding 1 MiB there
    # (its output layer) and so the connection open, the 5 MiB load three times, each
    # model closed before the next
    with rpc_workers(1, mem_mib=[8]) as (w,):
        proc = run_python(_script(RELOAD_SCRIPT, str(path), w.endpoint), timeout=120, env=ENV)
        assert "RESULT 3 loads" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]


RELOAD_SCRIPT = """
import gc, sys, mtpstream
path, endpoint = sys.argv[1], sys.argv[2]
keep = mtpstream.load_model(path, rpc=[endpoint], n_gpu_layers=1)
for _ in range(3):
    mtpstream.load_model(path, rpc=[endpoint], n_gpu_layers=99).close()
    gc.collect()
print("RESULT 3 loads")
"""


def test_unreachable_worker_fails_the_load_in_bounded_time(workers: list[RpcWorker]) -> None:
    path = make_model(arch="qwen35", weights="oracle", size="tiny", mtp_error_rate=0.25)
    dead = f"127.0.0.1:{free_port()}"
    code = f"""
    import time, mtpstream
    t = time.monotonic()
    try:
        mtpstream.load_model({str(path)!r}, rpc=[{workers[0].endpoint!r}, {dead!r}])
    except mtpstream.ModelLoadError as exc:
        print("ERROR", round(time.monotonic() - t, 1), exc)
    """
    proc = run_python(code, timeout=60, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ERROR" in proc.stdout and dead in proc.stdout, proc.stdout


# The client of the stopped-worker test: one stream on the split model; it prints
# STREAMING at its first token (the test then stops worker 1), then the outcome.
STOP_SCRIPT = """
import sys, time
import anyio
import mtpstream
from conftest import EXACT

path, endpoints = sys.argv[1], sys.argv[2].split(",")
model = mtpstream.load_model(path, rpc=endpoints, n_gpu_layers=4, rpc_timeout=2)

async def main():
    with mtpstream.init(model, n_draft=3, n_ctx=4096, **EXACT) as mtp:
        t = None
        try:
            async for ev in mtp.stream_events("the river and the road", max_tokens=100000):
                if t is None:
                    print("STREAMING", flush=True)
                    t = time.monotonic()
            print("OUTCOME finished", flush=True)
        except mtpstream.MTPError as exc:
            print("OUTCOME", round(time.monotonic() - t, 1), type(exc).__name__, exc, flush=True)

anyio.run(main)
"""


@pytest.mark.slow
@pytest.mark.parametrize("guard", ["hooks", "relay"])
def test_a_stopped_worker_counts_as_lost_after_rpc_timeout(guard: str) -> None:
    """SIGSTOP a worker mid-stream (its kernel still acknowledges data, so only the
    reply deadline can tell): the call ends with WorkerLostError naming the worker and
    rpc_timeout within seconds, instead of waiting for good."""
    path = make_model(arch="qwen35", weights="oracle", size="tiny", mtp_error_rate=0.25)
    with rpc_workers(2, threads=1) as ws:
        assert ws[1].proc is not None
        client = subprocess.Popen(
            [sys.executable, "-c", _script(STOP_SCRIPT, str(path), ",".join(w.endpoint for w in ws))],
            cwd=str(Path(__file__).parent),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **ENV, "MTPSTREAM_RPC_GUARD": guard},
        )
        assert client.stdout is not None
        try:
            assert _line_starting(client.stdout, "STREAMING", 120), "the stream never started"
            os.kill(ws[1].proc.pid, signal.SIGSTOP)
            line = _line_starting(client.stdout, "OUTCOME", 60)  # the watchdog: no hang
        finally:
            os.kill(ws[1].proc.pid, signal.SIGCONT)
            if client.poll() is None:
                client.send_signal(signal.SIGKILL)
            client.wait()
    assert "WorkerLostError" in line and ws[1].endpoint in line and "rpc_timeout" in line, line
    assert float(line.split()[1]) < 15, line


@pytest.mark.slow
def test_worker_killed_during_the_load_fails_it_and_the_process_lives_on() -> None:
    """SIGKILL a worker while the weights are being sent to it (from load_model's
    progress callback): the load ends with ModelLoadError naming that worker, and a
    model loaded after the worker is back generates the local model's tokens."""
    path = make_model(arch="qwen35", weights="oracle", size="tiny", mtp_error_rate=0.25)
    with rpc_workers(2, threads=1) as ws:
        assert ws[1].proc is not None
        eps = [w.endpoint for w in ws]
        code = f"""
        import os, signal, sys, mtpstream
        killed = []
        def progress(p):
            if p > 0.3 and not killed:
                os.kill({ws[1].proc.pid}, signal.SIGKILL)
                killed.append(p)
            return True
        try:
            mtpstream.load_model({str(path)!r}, rpc={eps!r}, n_gpu_layers=4, progress=progress)
            print("LOADED")
        except mtpstream.ModelLoadError as exc:
            print("ERROR", exc)
        sys.stdout.flush()
        sys.stdin.readline()  # the worker is back
        model = mtpstream.load_model({str(path)!r}, rpc={eps!r}, n_gpu_layers=4)
        local = mtpstream.load_model({str(path)!r})
        with mtpstream.init(model, n_draft=3, n_ctx=256) as a, mtpstream.init(local, n_draft=3) as b:
            same = a.generate_sync("the river", max_tokens=24) == b.generate_sync("the river", max_tokens=24)
            print("SAME", same)
        """
        client = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **ENV},
        )
        assert client.stdout is not None and client.stdin is not None
        try:
            first = _line_starting(client.stdout, "", 120)
            ws[1].start()
            out, err = client.communicate("go\n", timeout=300)
        finally:
            if client.poll() is None:
                client.send_signal(signal.SIGKILL)
                client.wait()
    assert client.returncode == 0, f"client exit {client.returncode}: {err[-3000:]}"
    assert first.startswith("ERROR") and f"lost the RPC worker {ws[1].endpoint}" in first, first
    assert "SAME True" in out, out + err[-2000:]


def test_bad_endpoints_are_option_errors() -> None:
    path = make_model(arch="qwen35", weights="oracle", size="tiny", mtp_error_rate=0.25)
    for bad in ("localhost", "host:0", "host:x", [], ["a:1", "a:1"]):
        with pytest.raises(mtpstream.InvalidOptionError) as info:
            mtpstream.load_model(path, rpc=bad)
        assert info.value.field == "rpc"
    with pytest.raises(mtpstream.InvalidOptionError) as info:
        mtpstream.load_model(path, rpc="127.0.0.1:1", tensor_split=[1, -1])
    assert info.value.field == "tensor_split"
    for timeout in (0, -1, float("nan"), float("inf"), True, "5"):
        with pytest.raises(mtpstream.InvalidOptionError) as info:
            mtpstream.load_model(path, rpc="127.0.0.1:1", rpc_timeout=timeout)  # type: ignore[arg-type]
        assert info.value.field == "rpc_timeout"


def test_a_build_without_rpc_names_the_build_option(monkeypatch: pytest.MonkeyPatch) -> None:
    """(The real case needs a second llama.cpp build; this checks the Python path.)"""
    path = make_model(arch="qwen35", weights="oracle", size="tiny", mtp_error_rate=0.25)
    monkeypatch.setattr(mtpstream._bridge, "rpc_available", lambda: False)
    with pytest.raises(mtpstream.ModelLoadError, match="-DGGML_RPC=on"):
        mtpstream.load_model(path, rpc="127.0.0.1:50052")


def test_rpc_server_cli_refuses_a_port_in_use() -> None:
    with rpc_workers(1) as (w,):
        proc = subprocess.run(
            [sys.executable, "-m", "mtpstream", "rpc-server", "--port", str(w.port), "--threads", "1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 1
    assert "could not bind" in proc.stderr


# The client of the fault test: 4 streams in flight on the split model; it prints
# STREAMING once every stream has tokens (the test then kills worker 1), then each
# stream's outcome and the model's rpc_loss. Then it waits for a line on stdin (the
# test restarts the worker), loads the model again in the same process and prints
# that model's tokens beside the local model's.
KILL_SCRIPT = """
import json, sys, time
import anyio
import mtpstream
from conftest import EXACT, collect, prompts_for
from mtpstream.testing import load_spec

path, endpoints = sys.argv[1], sys.argv[2].split(",")
model = mtpstream.load_model(path, rpc=endpoints, n_gpu_layers=4)
outcomes = {}

async def one(mtp, i, seen):
    try:
        n = 0
        prompt = model.tokenize("the river and the road " * (i + 1))
        async for ev in mtp.stream_events(prompt, max_tokens=100000):
            if isinstance(ev, mtpstream.TokenEvent):
                n += 1
                seen.add(i)
                if len(seen) == 4 and n == 1:
                    print("STREAMING", flush=True)
        outcomes[i] = "finished"
    except mtpstream.MTPError as exc:
        outcomes[i] = f"{type(exc).__name__}: {exc}"

async def main():
    seen = set()
    with mtpstream.init(model, n_draft=3, n_ctx=4096, n_seq=4, **EXACT) as mtp:
        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(one, mtp, i, seen)
        try:
            await mtp.generate("again", max_tokens=4)
            outcomes["after"] = "usable"
        except mtpstream.MTPError as exc:
            outcomes["after"] = f"{type(exc).__name__}: {exc}"

t = time.monotonic()
anyio.run(main)
outcomes["seconds"] = round(time.monotonic() - t, 1)
outcomes["rpc_loss"] = model.rpc_loss
model.close()
print("OUTCOMES " + json.dumps(outcomes), flush=True)

sys.stdin.readline()  # the worker is back
local = mtpstream.load_model(path)
again = mtpstream.load_model(path, rpc=endpoints, n_gpu_layers=4)
prompts = prompts_for(local, load_spec(path))

async def run(m):
    with mtpstream.init(m, n_draft=3, n_ctx=512, n_seq=2, rollback="snapshots", **EXACT) as mtp:
        ids, done = await collect(mtp, prompts[2], max_tokens=40)
    return [ids, done.usage.drafts_accepted, done.usage.drafts_generated]

print("RESULT " + json.dumps({"local": anyio.run(run, local), "rpc": anyio.run(run, again),
                              "rpc_loss": again.rpc_loss}), flush=True)
"""


def _line_starting(stream: Any, prefix: str, seconds: float) -> str:
    """The first line of ``stream`` starting with ``prefix`` within ``seconds`` ("" if none)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line or line.startswith(prefix):
            return str(line)
    return ""


@pytest.mark.slow
@pytest.mark.parametrize("guard", ["hooks", "relay"])
def test_worker_killed_mid_stream_ends_the_calls_with_typed_errors(guard: str) -> None:
    """SIGKILL one of two workers while 4 streams run: every call ends with a
    GenerationError naming that worker within seconds, the session refuses further
    calls the same way, the process does not abort, and after the worker is started
    again a model loaded in the same process gives the local model's tokens. Under
    both guards (native/rpc_guard.hpp): the socket hooks and the relay."""
    path = make_model(arch="qwen35", weights="oracle", size="tiny", mtp_error_rate=0.25)
    with rpc_workers(2, threads=1) as ws:
        client = subprocess.Popen(
            [sys.executable, "-c", _script(KILL_SCRIPT, str(path), ",".join(w.endpoint for w in ws))],
            cwd=str(Path(__file__).parent),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **ENV, "MTPSTREAM_RPC_GUARD": guard},
        )
        assert client.stdout is not None and client.stdin is not None
        try:
            assert _line_starting(client.stdout, "STREAMING", 120), "the streams never started"
            ws[1].kill()
            line = _line_starting(client.stdout, "OUTCOMES ", 60)  # the watchdog: no hang
            assert line, f"no outcome (exit {client.poll()})"
            outcomes = json.loads(line[len("OUTCOMES ") :])
            ws[1].start()
            client.stdin.write("go\n")
            client.stdin.flush()
            out, err = client.communicate(timeout=300)
        finally:
            if client.poll() is None:
                client.send_signal(signal.SIGKILL)
                client.wait()
    assert client.returncode == 0, f"client exit {client.returncode}: {err[-3000:]}"
    lost = f"lost the RPC worker {ws[1].endpoint}"
    for key in ("0", "1", "2", "3", "after"):  # WorkerLostError is a GenerationError
        assert outcomes[key].startswith("WorkerLostError: ") and lost in outcomes[key], outcomes
    assert ws[0].endpoint not in outcomes["0"], outcomes  # only the lost worker is named
    assert lost in outcomes["rpc_loss"], outcomes
    assert outcomes["seconds"] < 30, outcomes
    runs = _result(subprocess.CompletedProcess([], 0, out, err))
    assert runs["rpc"] == runs["local"] and runs["rpc_loss"] is None, runs


def test_serve_with_rpc_answers_as_the_local_model(workers: list[RpcWorker]) -> None:
    from test_server import KEY, MESSAGES, Server

    path = make_model(arch="qwen35", weights="oracle", size="tiny", mtp_error_rate=0.25)
    answers = []
    # rollback pinned: "auto" times both on this machine and may choose differently per run
    common = ("--n-draft", "3", "--api-key", KEY, "--model-alias", "tiny", "-fa", "off")
    common += ("--rollback", "snapshots")
    split = ("--rpc", ",".join(w.endpoint for w in workers), "-ngl", "4")
    for extra in ((), split, (*split, "--mtp-local")):
        server = Server(path, *common, *extra)
        try:
            client = server.client()
            chat = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=24)  # type: ignore[arg-type]
            answers.append((chat.choices[0].message.content, json.loads(chat.model_dump_json())["mtp"]))
        finally:
            assert server.stop() == 0
    assert answers[1] == answers[0]
    assert answers[2] == answers[0]
    assert answers[0][1]["drafts_accepted"] > 0


@pytest.mark.slow
def test_serve_with_rpc_answers_503_once_a_worker_is_lost() -> None:
    """The server of a model split over two workers, one of them killed: the next
    request gets an OpenAI-shaped 503 (code rpc_worker_lost) naming the worker, /health
    turns 503 with the loss, and the server process stays up and answers."""
    from test_server import KEY, MESSAGES, Server

    path = make_model(arch="qwen35", weights="oracle", size="tiny", mtp_error_rate=0.25)
    with rpc_workers(2, threads=1) as ws:
        extra = (
            "--rpc",
            ",".join(w.endpoint for w in ws),
            "-ngl",
            "4",
            "--api-key",
            KEY,
            "--model-alias",
            "tiny",
        )
        server = Server(path, *extra)
        try:
            client = server.client()
            client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8)  # type: ignore[arg-type]
            ws[1].kill()
            with pytest.raises(openai.APIStatusError) as caught:
                client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8)  # type: ignore[arg-type]
            assert caught.value.status_code == 503
            body = caught.value.body
            assert isinstance(body, dict) and body.get("code") == "rpc_worker_lost", body
            assert f"lost the RPC worker {ws[1].endpoint}" in str(body.get("message")), body
            try:
                urllib.request.urlopen(server.url + "/health", timeout=5)
                raise AssertionError("/health answered 200 after the loss")
            except urllib.error.HTTPError as exc:
                assert exc.code == 503
                assert json.loads(exc.read())["status"] == "rpc worker lost"
            assert server.proc.poll() is None
        finally:
            assert server.stop() == 0


@pytest.mark.slow
def test_bench_rpc_writes_the_comparison(tmp_path: Path) -> None:
    path = make_model(arch="qwen35", weights="oracle", size="tiny", mtp_error_rate=0.25)
    cmd = [sys.executable, "-m", "mtpstream", "bench", str(path), "--rpc", "--quick", "--runs", "2"]
    proc = subprocess.run(
        [*cmd, "--tokens", "16", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **ENV},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result_path,) = tmp_path.glob("bench-*-rpc.json")
    result = json.loads(result_path.read_text())
    assert result["acceptance_equal"] is True
    sides = {f"{where}-{n}" for where in ("local", "rpc", "rpc-tail") for n in ("plain", "k3")}
    assert set(result["decode_tps"]) == sides
    assert all(len(v) == 2 for v in result["decode_tps"].values())
    assert result["rpc_over_local_median"] > 0 and "pass" in result["target"]
    assert result["mtp_local"]["rpc_over_local_median"] > 0 and "pass" in result["mtp_local"]["target"]


def test_rpc_server_warns_when_bound_beyond_loopback() -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "mtpstream", "rpc-server", "--host", "0.0.0.0", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "listening on 0.0.0.0" not in (line := proc.stdout.readline()):
            assert line, "rpc-server exited"
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=30)
    assert "no authentication" in err and "trusted network" in err, err


def test_several_models_on_the_same_workers_in_one_process(workers: list[RpcWorker]) -> None:
    """The process is each worker's one client: a later load's check must not mistake a
    worker busy with it (a backlog of one) for an unreachable one."""
    path = make_model(arch="qwen35", weights="oracle", size="tiny", mtp_error_rate=0.25)
    code = f"""
    import mtpstream
    eps = {[w.endpoint for w in workers]!r}
    models = [mtpstream.load_model({str(path)!r}, rpc=eps, n_gpu_layers=4) for _ in range(4)]
    with mtpstream.init(models[-1], n_draft=3, n_ctx=256) as mtp:
        import anyio, functools
        print("OK", len(anyio.run(functools.partial(mtp.generate, "the river", max_tokens=8))))
    """
    proc = run_python(code, timeout=120, env=ENV)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.skipif(
    sys.platform != "linux" or os.uname().machine not in ("x86_64", "aarch64"),
    reason="the hooks are ELF x86-64/AArch64",
)
def test_the_socket_hooks_guard_by_default_and_the_relay_on_request(workers: list[RpcWorker]) -> None:
    """The default guard is the socket hooks (no relay between ggml and the workers);
    MTPSTREAM_RPC_GUARD=relay puts a relay on loopback in front of each worker."""
    path = make_model(arch="qwen35", weights="oracle", size="tiny", mtp_error_rate=0.25)
    code = f"""
    import mtpstream
    m = mtpstream.load_model({str(path)!r}, rpc={[w.endpoint for w in workers]!r}, n_gpu_layers=4)
    print("RELAYS", len(m.native.rpc_relays), m.rpc_loss)
    """
    for guard, relays in (("hooks", 0), ("relay", 2)):
        proc = run_python(code, timeout=120, env={**ENV, "MTPSTREAM_RPC_GUARD": guard})
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"RELAYS {relays} None" in proc.stdout, (guard, proc.stdout)
