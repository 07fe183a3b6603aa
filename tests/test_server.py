"""``mtpstream serve``: a real server process on 127.0.0.1, driven with the official
``openai`` client (and raw HTTP where the client hides what we check)."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import openai
import pytest

import mtpstream

KEY = "sk-test-123"
MESSAGES = [{"role": "user", "content": "we walked along the river"}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, model: Path, *extra: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            "-m",
            "mtpstream",
            "serve",
            str(model),
            "--port",
            str(self.port),
            "--quiet",
            *extra,
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if json.loads(r.read())["status"] == "ok":
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=60)

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, value = line.split()
                out[name] = float(value)
        return out

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return int(self.proc.returncode)


@pytest.fixture(scope="module")
def server(model_paths: dict[str, Path]) -> Iterator[Server]:
    s = Server(
        model_paths["qwen35-oracle"],
        "--n-seq",
        "2",
        "--api-key",
        KEY,
        "--model-alias",
        "tiny",
        "--n-ctx",
        "100000",
    )
    yield s
    assert s.stop() == 0


def in_process(path: Path, fn: Any) -> Any:
    with mtpstream.load_model(path) as model, mtpstream.init(model, n_draft=3, n_ctx=100_000, n_seq=2) as mtp:
        return anyio.run(fn, mtp)


def test_chat_and_completions_equal_in_process_calls(server: Server, model_paths: dict[str, Path]) -> None:
    client = server.client()
    chat = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=24)  # type: ignore[arg-type]
    assert chat.model == "tiny" and chat.choices[0].message.role == "assistant"
    assert chat.usage is not None and chat.usage.completion_tokens == 24
    assert chat.choices[0].finish_reason == "length"
    text = client.completions.create(model="tiny", prompt="we walked along", max_tokens=16)
    assert text.object == "text_completion" and text.usage is not None

    async def ours(mtp: mtpstream.MTP) -> tuple[str, str]:
        a = await mtp.chat(MESSAGES, max_tokens=24)
        b = await mtp.generate("we walked along", max_tokens=16)
        return a.choices[0].message.content, b

    expected_chat, expected_text = in_process(model_paths["qwen35-oracle"], ours)
    assert chat.choices[0].message.content == expected_chat
    assert text.choices[0].text == expected_text
    assert json.loads(chat.model_dump_json())["mtp"]["drafts_generated"] > 0  # the extension field


def test_streams(server: Server) -> None:
    client = server.client()
    whole = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=20)  # type: ignore[arg-type]
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=20, stream=True))  # type: ignore[arg-type]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["length"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    pieces = list(
        client.completions.create(model="tiny", prompt="we walked along", max_tokens=12, stream=True)
    )
    assert [p.choices[0].finish_reason for p in pieces if p.choices[0].finish_reason] == ["length"]
    plain = client.completions.create(model="tiny", prompt="we walked along", max_tokens=12)
    assert "".join(p.choices[0].text for p in pieces) == plain.choices[0].text


def test_json_schema_and_models(server: Server) -> None:
    client = server.client()
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    r = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=40,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "a", "schema": schema, "strict": True},
        },
    )
    assert set(json.loads(r.choices[0].message.content or "")) == {"ok"}
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_errors_are_openai_errors_and_the_session_keeps_working(server: Server) -> None:
    with pytest.raises(openai.AuthenticationError):
        server.client("wrong").chat.completions.create(model="tiny", messages=MESSAGES)  # type: ignore[arg-type]
    client = server.client()
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=-1)  # type: ignore[arg-type]
    assert info.value.status_code == 400 and "temp" in str(info.value)
    with pytest.raises(openai.BadRequestError, match="n=1"):
        client.chat.completions.create(model="tiny", messages=MESSAGES, n=2)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="tiny", prompt="word " * 110_000, max_tokens=2)
    r = httpx.post(
        server.url + "/v1/chat/completions", content=b"{not json", headers={"Authorization": f"Bearer {KEY}"}
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    ok = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=3)  # type: ignore[arg-type]
    assert ok.usage is not None and ok.usage.completion_tokens == 3
    m = server.metrics()
    assert m["mtpstream_tokens_total"] > 0 and 0 < m["mtpstream_acceptance_rate"] <= 1


def test_a_client_that_disconnects_cancels_its_generation(server: Server) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    # a grammar that never ends: the generation runs until max_tokens
    body = {
        "model": "tiny",
        "messages": MESSAGES,
        "max_tokens": 90_000,
        "stream": True,
        "grammar": "root ::= [a-z ] root",
    }
    before = server.metrics()["mtpstream_tokens_total"]
    with httpx.stream(
        "POST", server.url + "/v1/chat/completions", json=body, headers=headers, timeout=30
    ) as r:
        assert r.status_code == 200
        for i, _line in enumerate(r.iter_lines()):
            if i > 10:
                break
    deadline = time.monotonic() + 10
    while server.metrics()["mtpstream_active_sequences"] > 0:
        assert time.monotonic() < deadline, "the generation went on after the client left"
        time.sleep(0.05)
    generated = server.metrics()["mtpstream_tokens_total"] - before
    assert generated < 5000
    # a non-streamed request whose client gives up is cancelled too
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            server.url + "/v1/chat/completions", json={**body, "stream": False}, headers=headers, timeout=0.5
        )
    deadline = time.monotonic() + 10
    while server.metrics()["mtpstream_active_sequences"] > 0:
        assert time.monotonic() < deadline, "the non-streamed generation went on after the client left"
        time.sleep(0.05)


def test_full_queue_gets_429_and_sigint_exits_cleanly(model_paths: dict[str, Path]) -> None:
    s = Server(model_paths["qwen35-oracle"], "--n-seq", "1", "--max-queue", "0", "--n-ctx", "200000")
    try:
        # a generation that never ends by itself holds the only sequence
        body = {"model": "x", "messages": MESSAGES, "max_tokens": 150_000, "grammar": "root ::= [a-z ] root"}
        with httpx.Client(timeout=60) as http:

            def hold() -> None:
                with contextlib.suppress(httpx.HTTPError):  # ends when the server stops
                    http.post(s.url + "/v1/chat/completions", json=body)

            busy = threading.Thread(target=hold)
            busy.daemon = True
            busy.start()
            deadline = time.monotonic() + 10
            while s.metrics()["mtpstream_active_sequences"] < 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            with pytest.raises(openai.RateLimitError):
                s.client().chat.completions.create(model="x", messages=MESSAGES, max_tokens=2)  # type: ignore[arg-type]
    finally:
        # SIGINT while a request runs: a clean exit (code 0), the request cancelled
        assert s.stop(signal.SIGINT) == 0


def test_serve_binds_loopback_by_default() -> None:
    from mtpstream.cli import _parser

    args = _parser().parse_args(["serve", "m.gguf"])
    assert args.host == "127.0.0.1"


def test_a_slow_streaming_client_keeps_its_sequence(model_paths: dict[str, Path]) -> None:
    """A streamed request whose client reads nothing more holds its sequence (the
    generation waits for the reader), so the next request on a full queue gets 429."""
    s = Server(model_paths["qwen35-oracle"], "--n-seq", "1", "--max-queue", "0", "--n-ctx", "200000")
    try:
        body = {
            "model": "x",
            "messages": MESSAGES,
            "max_tokens": 100_000,
            "stream": True,
            "grammar": "root ::= [a-z ] root",
        }
        with httpx.stream("POST", s.url + "/v1/chat/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()  # kept: a discarded line iterator closes the response
            next(lines)
            time.sleep(0.5)
            assert s.metrics()["mtpstream_active_sequences"] == 1
            with pytest.raises(openai.RateLimitError):
                s.client().chat.completions.create(model="x", messages=MESSAGES, max_tokens=2)  # type: ignore[arg-type]
    finally:
        assert s.stop() == 0
