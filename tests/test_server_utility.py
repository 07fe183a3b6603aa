"""``mtpstream serve``'s runtime flags, CORS and llama-server's utility endpoints
(``/tokenize``, ``/detokenize``, ``/apply-template``, ``/props``, ``/slots``): a real
server process on 127.0.0.1, driven over HTTP."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import mtpstream
from mtpstream.cli import main
from test_server import KEY, MESSAGES, Server

# every runtime flag away from its default (-ngl 0 and -ncmoe 1 change nothing on a
# CPU build and a dense model, but must reach /props)
RUNTIME = [
    "-t",
    "1",
    "-tb",
    "2",
    "-b",
    "64",
    "-ub",
    "32",
    "--no-mmap",
    "-ctk",
    "q8_0",
    "-ctv",
    "q8_0",
    "-fa",
    "on",
    "-ngl",
    "0",
    "-ncmoe",
    "1",
]
ALLOWED = "http://app.example:5173"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def tuned(model_paths: dict[str, Path]) -> Iterator[Server]:
    """A server started with every runtime flag set away from its default."""
    s = Server(
        model_paths["qwen35-oracle"], *RUNTIME, "--n-seq", "2", "--api-key", KEY, "--cors-origins", ALLOWED
    )
    yield s
    assert s.stop() == 0


def call(s: Server, method: str, path: str, body: Any = None, **kw: Any) -> httpx.Response:
    headers = kw.pop("headers", AUTH)
    return httpx.request(method, s.url + path, json=body, headers=headers, timeout=30, **kw)


def chat(s: Server, key: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": "x", "messages": MESSAGES, "max_tokens": 24, "temperature": 0}
    r = httpx.post(s.url + "/v1/chat/completions", json=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["message"]["content"])


# ------------------------------------------------------------------ runtime flags
def test_runtime_flags_answer_exactly_and_props_reports_them(
    tuned: Server, model_paths: dict[str, Path]
) -> None:
    plain = Server(model_paths["qwen35-oracle"], "--n-seq", "2")
    try:
        expected = chat(plain)
    finally:
        assert plain.stop() == 0
    assert chat(tuned, KEY) == expected
    props = call(tuned, "GET", "/props").json()
    assert props["runtime"] == {
        "n_gpu_layers": 0,
        "n_cpu_moe": 1,
        "mmap": False,
        "repack": True,
        "n_threads": 1,
        "n_threads_batch": 2,
        "n_batch": 64,
        "n_ubatch": 32,
        "flash_attn": "on",
        "type_k": "q8_0",
        "type_v": "q8_0",
    }
    assert props["total_slots"] == props["n_seq"] == 2 and props["n_draft"] == 3
    assert props["default_generation_settings"]["n_ctx"] == props["n_ctx"] == 4096
    assert props["model_path"] == str(model_paths["qwen35-oracle"])
    with mtpstream.load_model(model_paths["qwen35-oracle"]) as model:
        assert props["chat_template"] == model.chat_template
    assert props["build_info"].startswith("mtpstream ")
    assert call(tuned, "GET", "/props", headers={}).status_code == 401


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["-t", "0"], "--threads"),
        (["-tb", "many"], "--threads-batch"),
        (["-b", "0"], "--batch-size"),
        (["-ub", "-4"], "--ubatch-size"),
        (["-b", "32", "-ub", "64"], "--ubatch-size"),
        (["-ctk", "q9_9"], "--cache-type-k"),
        (["-ctv", "q8_0", "-fa", "off"], "--cache-type-v"),
        (["-fa", "maybe"], "--flash-attn"),
        (["-ngl", "-3"], "--n-gpu-layers"),
        (["--n-cpu-moe", "-1"], "--n-cpu-moe"),
        (["--cors-origins", "app.example/path"], "--cors-origins"),
    ],
)
def test_a_bad_flag_value_is_a_usage_error_naming_it(
    args: list[str], flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit code 2 and the flag named, before any model is read (the file does not exist)."""
    try:
        code = main(["serve", str(tmp_path / "missing.gguf"), *args])
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2, err
    assert flag in err.splitlines()[-1] and "Traceback" not in err


def test_a_batch_too_small_for_the_drafts_names_its_flag(model_paths: dict[str, Path]) -> None:
    """A limit checked once the model is known (its MTP head): still exit 2, the flag named."""
    p = subprocess.run(
        [sys.executable, "-m", "mtpstream", "serve", str(model_paths["qwen35-oracle"]), "--quiet", "-b", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2, p.stderr
    assert "--batch-size" in p.stderr and "Traceback" not in p.stderr


def test_n_cpu_moe_overrides_the_expert_tensors(
    model_paths: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """llama.cpp's own log names each expert tensor it kept on the CPU."""
    path = model_paths["qwen35moe-oracle"]
    overridden: dict[object, set[str]] = {}
    with caplog.at_level(logging.DEBUG, logger="mtpstream.llama"):
        for n in (0, 1, "all"):
            caplog.clear()
            with mtpstream.load_model(path, n_cpu_moe=n) as model:  # type: ignore[arg-type]
                assert model.n_cpu_moe == n
            lines = [r.getMessage() for r in caplog.records if "overridden" in r.getMessage()]
            overridden[n] = {line.split()[1] for line in lines}
    assert overridden[0] == set()
    assert overridden[1] and all(t.startswith("blk.0.ffn_") and "_exps" in t for t in overridden[1])
    blocks = {t.split(".")[1] for t in overridden["all"]}
    assert len(blocks) > 1 and overridden[1] < overridden["all"]
    for bad in (-1, "some", True, 1.5):
        with pytest.raises(mtpstream.InvalidOptionError) as info:
            mtpstream.load_model(path, n_cpu_moe=bad)  # type: ignore[arg-type]
        assert info.value.field == "n_cpu_moe"


# ------------------------------------------------------------------ CORS
def test_cors_preflight_is_allowed_for_the_configured_origin_only(tuned: Server) -> None:
    ask = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    ok = call(tuned, "OPTIONS", "/v1/chat/completions", headers={"Origin": ALLOWED, **ask})
    assert ok.status_code == 200  # no API key: a browser sends none with a preflight
    assert ok.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in ok.headers["access-control-allow-methods"]
    assert "authorization" in ok.headers["access-control-allow-headers"].lower()
    other = call(tuned, "OPTIONS", "/v1/chat/completions", headers={"Origin": "http://evil.example", **ask})
    assert "access-control-allow-origin" not in other.headers
    # the real request: headers for the allowed origin, none for another, the key still needed
    r = call(tuned, "GET", "/v1/models", headers={"Origin": ALLOWED, **AUTH})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ALLOWED
    r = call(tuned, "GET", "/v1/models", headers={"Origin": "http://evil.example", **AUTH})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    assert call(tuned, "GET", "/v1/models", headers={"Origin": ALLOWED}).status_code == 401


# ------------------------------------------------------------------ tokenize, detokenize, template
def test_tokenize_and_detokenize_round_trip_as_the_model_does(tuned: Server, oracle: mtpstream.Model) -> None:
    text = "we walked along the river <|im_start|> é"
    r = call(tuned, "POST", "/tokenize", {"content": text})
    assert r.status_code == 200 and r.json() == {"tokens": oracle.tokenize(text, add_special=False)}
    r = call(tuned, "POST", "/tokenize", {"content": text, "add_special": True, "parse_special": False})
    assert r.json()["tokens"] == oracle.tokenize(text, add_special=True, parse_special=False)
    ids = oracle.tokenize(text, add_special=False)
    pieces = call(tuned, "POST", "/tokenize", {"content": text, "with_pieces": True}).json()["tokens"]
    assert [p["id"] for p in pieces] == ids
    raw = b"".join(p["piece"].encode() if isinstance(p["piece"], str) else bytes(p["piece"]) for p in pieces)
    assert raw.decode() == text  # special tokens shown as their text, as llama-server does
    back = call(tuned, "POST", "/detokenize", {"tokens": ids})
    assert back.status_code == 200 and back.json() == {"content": oracle.detokenize(ids)}
    for body, field in (
        ({"content": 5}, "content"),
        ({}, "content"),
        ({"content": "x", "with_pieces": "yes"}, "with_pieces"),
    ):
        r = call(tuned, "POST", "/tokenize", body)
        assert r.status_code == 400 and r.json()["error"]["param"] == field, body
    for tokens in ([1, oracle.n_vocab], [-1], [True], ["1"], "1 2"):
        r = call(tuned, "POST", "/detokenize", {"tokens": tokens})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tokens", tokens
    assert call(tuned, "POST", "/tokenize", {"content": "x"}, headers={}).status_code == 401
    big = {"content": "x" * (5 * 2**20)}
    assert call(tuned, "POST", "/tokenize", big).status_code == 413


def test_apply_template_equals_render_chat(tuned: Server, model_paths: dict[str, Path]) -> None:
    kwargs = {"enable_thinking": False}
    r = call(tuned, "POST", "/apply-template", {"messages": MESSAGES, "chat_template_kwargs": kwargs})
    assert r.status_code == 200, r.text
    with mtpstream.load_model(model_paths["qwen35-oracle"]) as model, mtpstream.init(model, n_ctx=256) as mtp:
        assert r.json() == {"prompt": mtp.render_chat(MESSAGES, chat_template_kwargs=kwargs)}
        assert r.json()["prompt"] == mtp.render_chat(MESSAGES)  # this template ignores the kwargs
    for body, field in (({}, "messages"), ({"messages": []}, "messages"), ({"messages": "hi"}, "messages")):
        r = call(tuned, "POST", "/apply-template", body)
        assert r.status_code == 400 and r.json()["error"]["param"] == field, body


# ------------------------------------------------------------------ slots
def test_slots_show_a_busy_sequence_during_a_stream_and_idle_after(tuned: Server) -> None:
    def slots() -> list[dict[str, Any]]:
        r = call(tuned, "GET", "/slots")
        assert r.status_code == 200
        return list(r.json())

    deadline = time.monotonic() + 30
    while any(s["is_processing"] for s in slots()):  # earlier tests' calls have ended
        assert time.monotonic() < deadline
        time.sleep(0.05)
    body = {
        "model": "x",
        "messages": MESSAGES,
        "max_tokens": 100_000,
        "stream": True,
        "grammar": "root ::= [a-z ] root",
    }
    with httpx.stream("POST", tuned.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=30) as r:
        lines = r.iter_lines()  # kept: a discarded line iterator closes the response
        next(lines)
        busy = [s for s in slots() if s["is_processing"]]
        while not busy or busy[0]["next_token"]["n_decoded"] == 0:  # published after each step
            assert time.monotonic() < deadline
            time.sleep(0.02)
            busy = [s for s in slots() if s["is_processing"]]
        assert len(busy) == 1
        assert busy[0]["n_prompt_tokens"] > 0 and busy[0]["n_past"] >= busy[0]["n_prompt_tokens"]
        assert busy[0]["next_token"]["n_decoded"] >= 1
        assert call(tuned, "GET", "/slots?fail_on_no_slot=1").status_code == 200  # one is free
    now = slots()
    while any(s["is_processing"] for s in now):
        assert time.monotonic() < deadline
        time.sleep(0.05)
        now = slots()
    assert len(now) == 2 and [s["id"] for s in now] == [0, 1]
    assert any(s["prompt_cache"]["tokens"] > 0 for s in now)  # the ended call's tokens stay cached
    assert all("prompt" not in s for s in now)
    assert call(tuned, "GET", "/slots", headers={}).status_code == 401


def test_sequences_in_the_library(oracle: mtpstream.Model) -> None:
    async def run(mtp: mtpstream.MTP) -> None:
        assert [s.busy for s in mtp.sequences()] == [False, False]
        # a long call: its event queue fills and it waits for this reader, holding its sequence
        endless = {"max_tokens": 1500, "grammar": "root ::= [a-z ] root"}
        async with mtp.stream_chat(MESSAGES, **endless) as chunks:
            await chunks.__anext__()
            # the view is published after each engine step: the first may still be running
            with anyio.fail_after(30):
                while not any(s.busy for s in mtp.sequences()):
                    await anyio.sleep(0.01)
            assert [s.busy for s in mtp.sequences()].count(True) == 1
        await mtp.generate("we walked along", max_tokens=4)
        # the call's last event may reach us before the step that ends it is published
        with anyio.fail_after(30):
            while any(s.busy for s in mtp.sequences()):
                await anyio.sleep(0.01)
        assert max(s.cache_tokens for s in mtp.sequences()) > 0

    with mtpstream.init(oracle, n_ctx=2048, n_seq=2) as mtp:
        anyio.run(run, mtp)
