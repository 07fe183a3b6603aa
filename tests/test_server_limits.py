"""``mtpstream serve`` against hostile clients: a real server process on 127.0.0.1,
attacked with raw sockets (slow readers, slow headers, false Content-Length), huge and
deep bodies, floods over ``--max-queue``, other Host names, SIGTERM mid-stream, and a
seeded fuzz of request bodies. After every attack the server answers ``/health``
within 1 s, and the next normal request equals a direct library call."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import httpx
import openai
import pytest

import mtpstream

KEY = "sk-limits-456"
SECOND_KEY = "sk-limits-second"
MESSAGES = [{"role": "user", "content": "we walked along the river"}]
N_CTX = 200_000
HEALTH_S = 1.0
ALIAS = "tiny-" + "m" * 3000  # every chunk carries it: a stalled reader's buffers fill in ~100 tokens


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``mtpstream serve`` in a subprocess; ``stop()`` (SIGTERM) must exit with code 0."""

    def __init__(self, model: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "mtpstream", "serve", str(model), "--port", str(self.port), "--quiet"]
        self.proc = subprocess.Popen(
            [*cmd, "--n-ctx", str(N_CTX), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.headers = {"Authorization": f"Bearer {KEY}"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def health_s(self) -> float:
        """Seconds /health took (it must say ok)."""
        t0 = time.monotonic()
        r = httpx.get(self.url + "/health", timeout=5)
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        return time.monotonic() - t0

    def metric(self, name: str) -> float:
        text = httpx.get(self.url + "/metrics", timeout=5).text
        found = re.search(rf"^mtpstream_{name} (\S+)$", text, re.M)
        assert found is not None, name
        return float(found.group(1))

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]

    def post(self, path: str, body: Any, timeout: float = 60, **kw: Any) -> httpx.Response:
        return httpx.post(self.url + path, json=body, headers=self.headers, timeout=timeout, **kw)

    def chat_text(self, max_tokens: int = 12) -> str:
        r = self.post("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": max_tokens}, timeout=180)
        assert r.status_code == 200, r.text
        return str(r.json()["choices"][0]["message"]["content"])

    def idle(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while self.metric("active_sequences") > 0 or self.metric("queued") > 0:
            assert time.monotonic() < deadline, "a sequence stayed busy"
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
            raise
        return int(self.proc.returncode), err


_WATCH = """
import json, sys, threading, time, httpx
url, worst, failures, stop = sys.argv[1], 0.0, [], threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
with httpx.Client(timeout=5) as http:
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            r = http.get(url)
            if r.status_code != 200 or r.json() != {"status": "ok"}:
                failures.append(r.text[:200])
        except httpx.HTTPError as exc:
            failures.append(repr(exc))
        worst = max(worst, time.monotonic() - t0)
        stop.wait(0.1)
print(json.dumps({"worst": worst, "failures": failures}))
"""


class HealthWatch:
    """Polls /health from another process (so that the attacking client's own work does
    not slow the probe) while an attack runs; every answer must be ok within 1 s."""

    def __init__(self, server: Server) -> None:
        self.url = server.url + "/health"
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> HealthWatch:
        cmd = [sys.executable, "-c", _WATCH, self.url]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        out, _ = self.proc.communicate("", timeout=30)
        report = json.loads(out)
        assert not report["failures"], report["failures"]
        assert report["worst"] < HEALTH_S, f"/health took {report['worst']:.2f} s during the attack"


def reference(path: Path, n_seq: int) -> tuple[str, str]:
    """What the library answers directly: chat (12 tokens) and a completion (10)."""

    async def run(mtp: mtpstream.MTP) -> tuple[str, str]:
        chat = await mtp.chat(MESSAGES, max_tokens=12)
        return str(chat.choices[0].message.content), await mtp.generate("we walked along", max_tokens=10)

    with (
        mtpstream.load_model(path) as model,
        mtpstream.init(model, n_draft=3, n_ctx=N_CTX, n_seq=n_seq) as mtp,
    ):
        return anyio.run(run, mtp)


def assert_exact(server: Server, expected: tuple[str, str]) -> None:
    assert server.chat_text() == expected[0]
    r = server.post("/v1/completions", {"prompt": "we walked along", "max_tokens": 10})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == expected[1]


def assert_openai_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str)
    if code is not None:
        assert err["code"] == code, err
    return dict(err)


def raw(port: int, data: bytes, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket()
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    s.sendall(data)
    return s


def request_bytes(path: str, body: bytes, *, length: int | None = None, host: str = "localhost") -> bytes:
    n = len(body) if length is None else length
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {n}\r\n"
    )
    return f"{head}Authorization: Bearer {KEY}\r\n\r\n".encode() + body


def read_until_closed(s: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it did."""
    t0 = time.monotonic()
    s.settimeout(timeout)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data, time.monotonic() - t0


# ------------------------------------------------------------------ servers
@pytest.fixture(scope="module")
def model_path(model_paths: dict[str, Path]) -> Path:
    return model_paths["qwen35-oracle"]


@pytest.fixture(scope="module")
def expected(model_path: Path) -> tuple[str, str]:
    return reference(model_path, 1)


@pytest.fixture(scope="module")
def open_server(model_path: Path) -> Iterator[Server]:
    """No API key (so Host names are checked); one sequence; short timeouts."""
    s = Server(
        model_path,
        *("--n-seq", "1", "--n-ctx", "20000", "--max-body-bytes", "1000000", "--model-alias", ALIAS),
        *("--allowed-hosts", "my.lan", "--allowed-hosts", "other.lan,third.lan"),
        *("--stream-idle-timeout", "2", "--header-timeout", "2", "--body-timeout", "2"),
    )
    yield s
    code, err = s.stop()
    assert code == 0 and "Traceback" not in err, err


@pytest.fixture(scope="module")
def queue_server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Two keys from a file; one sequence, --max-queue 2."""
    key_file = tmp_path_factory.mktemp("key") / "key"
    key_file.write_text(f"{KEY}\n# the second key\n{SECOND_KEY}\n")
    s = Server(model_path, "--n-seq", "1", "--max-queue", "2", "--api-key-file", str(key_file))
    yield s
    code, err = s.stop()
    assert code == 0 and "Traceback" not in err, err


# ------------------------------------------------------------------ 5. slow readers and writers
def test_a_client_that_stops_reading_is_dropped_and_frees_its_sequence(
    open_server: Server, expected: tuple[str, str]
) -> None:
    s = open_server
    body = json.dumps({"prompt": "we walked", "max_tokens": 150_000, "stream": True}).encode()
    with HealthWatch(s):
        reader = raw(s.port, request_bytes("/v1/completions", body), rcvbuf=4096)  # never read
        deadline = time.monotonic() + 10
        while s.metric("active_sequences") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        t0 = time.monotonic()
        # the only sequence is held until the reader is dropped (2 s after its buffers fill)
        assert s.chat_text() == expected[0]
        waited = time.monotonic() - t0
    assert waited < 150, waited
    data, took = read_until_closed(reader, 10)  # the server reset the connection
    reader.close()
    assert took < 10 and (data == b"" or data.startswith(b"HTTP/1.1 200")), data[:100]
    s.idle()
    assert_exact(s, expected)


def test_slow_headers_and_a_false_content_length_time_out(
    open_server: Server, expected: tuple[str, str]
) -> None:
    s = open_server
    with HealthWatch(s):
        # headers at one byte per 0.2 s: cut after --header-timeout (2 s) with a 408
        trickle = raw(s.port, b"P")
        t0 = time.monotonic()
        closed_after = None
        for byte in b"OST /v1/completions HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 100:
            try:
                trickle.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - t0
                break
            time.sleep(0.2)
            if time.monotonic() - t0 > 8:
                break
        data, _ = read_until_closed(trickle, 5)
        trickle.close()
        assert data == b"" or data.startswith(b"HTTP/1.1 408"), data[:100]
        assert closed_after is None or closed_after < 5
        # a connection that sends nothing is closed too
        silent = raw(s.port, b"")
        data, took = read_until_closed(silent, 10)
        silent.close()
        assert took < 4 and data == b""
        # a body shorter than its Content-Length: 408 after --body-timeout (2 s)
        liar = raw(s.port, request_bytes("/v1/completions", b'{"prompt": "x"', length=5000))
        data, took = read_until_closed(liar, 10)
        liar.close()
        assert data.startswith(b"HTTP/1.1 408") and b'"code":"request_timeout"' in data.replace(b" ", b"")
        assert 1.5 < took < 5, took
    assert_exact(s, expected)


# ------------------------------------------------------------------ 8. body size, tokenization
def test_bodies_over_the_limit_get_413_quickly(open_server: Server, expected: tuple[str, str]) -> None:
    s = open_server
    s.chat_text()  # warm
    rss0 = s.rss_mib()
    big = json.dumps({"messages": [{"role": "user", "content": "word " * 4_000_000}]}).encode()  # 20 MB
    with HealthWatch(s):
        # declared too large: refused before the body is read
        sock = raw(s.port, request_bytes("/v1/chat/completions", b"", length=len(big)))
        data, took = read_until_closed(sock, 5)
        sock.close()
        assert data.startswith(b"HTTP/1.1 413") and took < 1, (data[:200], took)
        # sent in full with its Content-Length
        t0 = time.monotonic()
        r = httpx.post(s.url + "/v1/chat/completions", content=big, timeout=30)
        assert_openai_error(r, 413, "request_too_large")
        assert time.monotonic() - t0 < 2
        # chunked (no Content-Length): refused while it streams in

        def pieces() -> Iterator[bytes]:
            for i in range(0, len(big), 65536):
                yield big[i : i + 65536]

        try:
            r = httpx.post(s.url + "/v1/chat/completions", content=pieces(), timeout=30)
            assert_openai_error(r, 413, "request_too_large")
        except (httpx.WriteError, httpx.RemoteProtocolError):
            pass  # the server answered and closed while the client was still sending
    assert s.rss_mib() < rss0 + 40, (rss0, s.rss_mib())
    assert_exact(s, expected)


def test_a_large_prompt_is_tokenized_off_the_event_loop(
    open_server: Server, expected: tuple[str, str]
) -> None:
    s = open_server
    rss0 = s.rss_mib()
    words = " ".join(random.Random(1).choice(["river", "stone", "quiet", "bank"]) for _ in range(160_000))
    assert len(words) < 1_000_000
    with HealthWatch(s):
        # ~1 MB of text: more tokens than n_ctx after templating: a 400 once tokenized
        r = s.post("/v1/completions", {"prompt": words, "max_tokens": 1})
        assert_openai_error(r, 400)
        r = s.post(
            "/v1/chat/completions", {"messages": [{"role": "user", "content": words}], "max_tokens": 1}
        )
        assert r.status_code in (200, 400), r.text
    assert s.rss_mib() < rss0 + 150, (rss0, s.rss_mib())
    assert_exact(s, expected)


# ------------------------------------------------------------------ 3. request templates
def test_a_request_template_is_refused_unless_allowed(open_server: Server, model_path: Path) -> None:
    """A template is a program: serve refuses a request's own unless started with
    --allow-request-templates, and then it still renders within its limits."""
    bomb = "{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}"
    plain = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    body = {"messages": [{"role": "user", "content": "we walked along"}], "max_tokens": 4}
    err = assert_openai_error(open_server.post("/v1/chat/completions", {**body, "chat_template": plain}), 400)
    assert "allow-request-templates" in err["message"]
    allowed = Server(model_path, "--n-seq", "1", "--allow-request-templates")
    try:
        assert allowed.post("/v1/chat/completions", {**body, "chat_template": plain}).status_code == 200
        with HealthWatch(allowed):
            t0 = time.monotonic()
            r = allowed.post("/v1/chat/completions", {**body, "chat_template": bomb})
            assert_openai_error(r, 400)
            assert time.monotonic() - t0 < 30
    finally:
        code, errs = allowed.stop()
    assert code == 0 and "Traceback" not in errs, errs


# ------------------------------------------------------------------ 9. malformed requests
def test_malformed_requests_are_openai_errors(open_server: Server, expected: tuple[str, str]) -> None:
    s = open_server
    deep = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = httpx.post(s.url + "/v1/chat/completions", content=deep, timeout=10)
    assert_openai_error(r, 400, "too_deep")
    shallow_but_over = {"messages": MESSAGES, "x": json.loads("[" * 70 + "]" * 70)}
    assert_openai_error(s.post("/v1/chat/completions", shallow_but_over), 400, "too_deep")
    err = assert_openai_error(s.post("/v1/chat/completions", {"messages": MESSAGES, "stream": "yes"}), 400)
    assert err["param"] == "stream"
    for bad in (
        b"{not json",
        b"[1, 2]",
        b'{"max_tokens": NaN}',
        b'{"n": 1' + b"0" * 5000 + b"}",
        b"\xff\xfe",
    ):
        assert_openai_error(httpx.post(s.url + "/v1/completions", content=bad, timeout=10), 400)
    assert_openai_error(httpx.get(s.url + "/nowhere", timeout=5), 404)
    not_allowed = httpx.delete(s.url + "/health", timeout=5)
    assert_openai_error(not_allowed, 405)
    assert not_allowed.headers["allow"] == "GET"  # RFC 9110: a 405 names the methods
    assert_openai_error(httpx.get(s.url + "/v1/chat/completions", timeout=5), 405)
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert_openai_error(httpx.get(s.url + path, timeout=5), 404)
    sock = raw(s.port, b"GARBAGE\r\n\r\n")
    data, _ = read_until_closed(sock, 5)
    sock.close()
    assert data.startswith(b"HTTP/1.1 400") and b'"error"' in data
    assert_exact(s, expected)


def test_a_keyless_server_serves_only_allowed_host_names(open_server: Server) -> None:
    s = open_server
    for host in ("evil.example", "evil.example:80", "127.0.0.2", "localhost.evil.example"):
        r = httpx.get(s.url + "/v1/models", headers={"Host": host}, timeout=5)
        assert_openai_error(r, 400, "invalid_host")
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "x"}, headers={"Host": host}, timeout=5)
        assert_openai_error(r, 400, "invalid_host")
    for host in (f"localhost:{s.port}", f"127.0.0.1:{s.port}", "[::1]", "my.lan:8000", "OTHER.lan"):
        assert httpx.get(s.url + "/v1/models", headers={"Host": host}, timeout=5).status_code == 200


def test_cached_tokens_are_not_reported_across_clients(open_server: Server) -> None:
    s = open_server
    for _ in range(2):
        usage = s.post("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 3}).json()["usage"]
        assert "prompt_tokens_details" not in usage and usage["completion_tokens"] == 3
    body = {"messages": MESSAGES, "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}
    r = s.post("/v1/chat/completions", body)
    last = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")][-1]
    assert "prompt_tokens_details" not in last["usage"]


# ------------------------------------------------------------------ 6. --max-queue, every endpoint
def test_max_queue_bounds_every_endpoint(queue_server: Server, expected: tuple[str, str]) -> None:
    s = queue_server
    assert_openai_error(httpx.get(s.url + "/v1/models", timeout=5), 401, "invalid_api_key")
    assert KEY not in Path(f"/proc/{s.proc.pid}/cmdline").read_text()
    # with a key, any Host is served (the key is the defence)
    assert httpx.get(s.url + "/v1/models", headers={**s.headers, "Host": "x.example"}).status_code == 200
    # every key of the file, as a bearer token or in x-api-key (Anthropic's clients)
    for headers in ({"Authorization": f"Bearer {SECOND_KEY}"}, {"x-api-key": SECOND_KEY}, {"x-api-key": KEY}):
        assert httpx.get(s.url + "/v1/models", headers=headers, timeout=5).status_code == 200, headers
    for headers in ({"x-api-key": KEY + "x"}, {"Authorization": f"Bearer {KEY[:-1]}"}, {"x-api-key": ""}):
        refused = httpx.get(s.url + "/v1/models", headers=headers, timeout=5)
        assert_openai_error(refused, 401, "invalid_api_key")
    short = {"max_tokens": 4}
    bodies: list[tuple[str, dict[str, Any]]] = [
        *[("/v1/chat/completions", {"messages": MESSAGES, **short}) for _ in range(8)],
        *[("/v1/completions", {"prompt": "we walked", **short}) for _ in range(4)],
        *[("/v1/chat/completions", {"messages": MESSAGES, **short, "stream": True}) for _ in range(4)],
    ]
    barrier = threading.Barrier(len(bodies))

    def send(item: tuple[str, dict[str, Any]]) -> int:
        barrier.wait()
        return s.post(item[0], item[1], timeout=180).status_code

    hold = {"prompt": "we walked", "max_tokens": 100_000, "stream": True}
    with HealthWatch(s), ThreadPoolExecutor(len(bodies)) as pool:
        # the only sequence is held by a stream we read one line of: the flood can only queue
        with httpx.stream("POST", s.url + "/v1/completions", json=hold, headers=s.headers, timeout=60) as r:
            lines = r.iter_lines()
            next(lines)
            futures = [pool.submit(send, b) for b in bodies]
            deadline = time.monotonic() + 60
            while sum(f.done() for f in futures) < len(bodies) - 2 or s.metric("queued") < 2:
                assert time.monotonic() < deadline, [f.result() for f in futures if f.done()]
                assert s.metric("queued") <= 2
                time.sleep(0.05)
        statuses = [f.result() for f in futures]  # the two queued calls run once the holder left
    assert statuses.count(200) == 2 and statuses.count(429) == len(bodies) - 2, statuses
    s.idle()
    assert_exact(s, expected)
    client = openai.OpenAI(base_url=s.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    chat = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=12)  # type: ignore[arg-type]
    assert chat.choices[0].message.content == expected[0]


# ------------------------------------------------------------------ 9. shutdown, key sources
# a grammar with no end: EOS is never allowed, so only max_tokens could end the stream
ENDLESS = "root ::= [a-z ] root"


def test_sigterm_ends_streams_with_an_error_event(model_path: Path) -> None:
    # The oracle's greedy stream from "we walked" ends by itself after 600 tokens
    # (" end", then EOS): a fast machine makes them within the 0.5 s grace, and the
    # stream ended with "stop" and [DONE] instead of the error. Under ENDLESS it can
    # end only at 29,000 tokens, far beyond what the grace allows.
    flags = ("--n-seq", "2", "--n-ctx", "30000", "--shutdown-grace", "0.5")
    s = Server(model_path, *flags, env={"MTPSTREAM_API_KEY": KEY})
    try:
        assert s.post("/v1/models", {}).status_code == 405
        assert httpx.get(s.url + "/v1/models", headers=s.headers).status_code == 200
        assert_openai_error(httpx.get(s.url + "/v1/models", timeout=5), 401)
        events: list[str] = []
        body = {"prompt": "we walked", "max_tokens": 29_000, "stream": True, "grammar": ENDLESS}
        with httpx.stream("POST", s.url + "/v1/completions", json=body, headers=s.headers, timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                if len(events) == 5:
                    s.proc.send_signal(signal.SIGTERM)
        # the error event is the stream's last line; no chunk before it finished
        last = json.loads(events[-1]) if events[-1].startswith("{") else {}
        assert len(events) > 5 and last.get("error", {}).get("code") == "shutting_down", events[-3:]
        chunks = [json.loads(e) for e in events[:-1]]
        assert all(c["choices"][0].get("finish_reason") is None for c in chunks), events[-3:]
        assert all(set(c["choices"][0]["text"]) <= set("abcdefghijklmnopqrstuvwxyz ") for c in chunks)
    finally:
        code, err = s.stop()
    assert code == 0, err
    assert "Traceback" not in err and "CancelledError" not in err, err


def test_api_key_sources(tmp_path: Path) -> None:
    from mtpstream.server_limits import resolve_api_keys

    f = tmp_path / "k"
    f.write_text("  sk-file \n# a comment\n\nsk-second\n")
    assert resolve_api_keys(None, str(f), {}) == ("sk-file", "sk-second")
    assert resolve_api_keys(None, None, {"MTPSTREAM_API_KEY": "sk-env"}) == ("sk-env",)
    assert resolve_api_keys(None, None, {"MTPSTREAM_API_KEY": "sk-a,sk-b"}) == ("sk-a", "sk-b")
    assert resolve_api_keys(["sk-arg"], None, {"MTPSTREAM_API_KEY": "sk-env"}) == ("sk-arg",)
    assert resolve_api_keys(["a,b", "c", "a"], str(f), {}) == ("a", "b", "c", "sk-file", "sk-second")
    assert resolve_api_keys(None, None, {}) == ()
    for args in ((None, str(tmp_path / "missing")), ([""], None), (["a,,b"], None)):
        with pytest.raises(ValueError):
            resolve_api_keys(*args, {})  # type: ignore[arg-type]
    (tmp_path / "empty").write_text("\n# only a comment\n")
    with pytest.raises(ValueError, match="empty"):
        resolve_api_keys(None, str(tmp_path / "empty"), {})


# ------------------------------------------------------------------ fuzz
_HUGE = 10**30


def _mutant(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(12)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2, 7, -(2**63), 2**63, _HUGE, -_HUGE, 2**31])
    if kind == 3:
        return rng.choice([0.0, -0.5, 0.5, 1e308, -1e308, 1e-320, 3.0])
    if kind == 4:
        return rng.choice(["", "x", "yes", "0", "null", "\u0000", "é" * 10, "{{ 1 }}", "root ::= x"])
    if kind == 5:
        return "z" * rng.choice([1000, 100_000, 400_000])
    if kind == 6 and depth < 3:
        return [_mutant(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 7 and depth < 3:
        return {rng.choice(["a", "role", "content", "type"]): _mutant(rng, depth + 1) for _ in range(3)}
    if kind == 8:
        nest = rng.choice([10, 63, 65, 200])
        return json.loads("[" * nest + "]" * nest)
    if kind == 9:
        return [{"role": "user", "content": _mutant(rng, depth + 1) if depth < 3 else "x"}]
    if kind == 10:
        return {
            "type": rng.choice(["json_object", "json_schema", "text", "x"]),
            "json_schema": _mutant(rng, 3),
        }
    return rng.choice([[1, 2, 3], [-1], [10**9], ["a"], [True]])


_FIELDS = [
    "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p",
    "seed", "stop", "stream", "n", "frequency_penalty", "presence_penalty", "repeat_penalty", "grammar",
    "response_format", "model", "logit_bias", "user", "stream_options", "chat_template", "timeout",
    "unknown_field", "wait", "emit_stats_every", "echo", "suffix", "best_of", "logprobs",
    "top_logprobs", "store", "metadata", "modalities", "service_tier", "prompt_cache_key",
]  # fmt: skip
_COUNTS = ("max_tokens", "max_completion_tokens")
# parameters whose values are checked (issue 22): half the time a valid value, so that
# calls that carry them get through too
_VALID: dict[str, list[Any]] = {
    "logit_bias": [{"5": 1.5}, {}, {"7": -100}],
    "user": ["u"],
    "logprobs": [None],
    "top_logprobs": [None],
    "stream_options": [None],
    "echo": [False, None],
    "suffix": [None, ""],
    "best_of": [1, None],
    "store": [False, True],
    "metadata": [{"a": "b"}],
    "modalities": [["text"]],
    "service_tier": ["auto"],
    "prompt_cache_key": ["k"],
}


def fuzz_case(rng: random.Random) -> tuple[str, dict[str, Any]]:
    chat = rng.random() < 0.6
    path = "/v1/chat/completions" if chat else "/v1/completions"
    body: dict[str, Any] = {"model": "m", "max_tokens": rng.randrange(1, 6)}
    body.update({"messages": [dict(m) for m in MESSAGES]} if chat else {"prompt": "we walked along"})
    if rng.random() < 0.3:
        body["stream"] = True
    for _ in range(rng.randrange(1, 4)):
        field = rng.choice(_FIELDS)
        value = rng.choice(_VALID[field]) if field in _VALID and rng.random() < 0.5 else _mutant(rng)
        if field in _COUNTS and (value is None or (type(value) is int and 8 < value < 2**62)):
            value = 8  # a valid but long (or unbounded) generation only slows the fuzz
        body[field] = value
    return path, body


def check_fuzz_response(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code != 200:
        assert_openai_error(r, r.status_code)
    elif r.headers["content-type"].startswith("text/event-stream"):
        events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
        assert events and (events[-1] == "[DONE]" or "error" in json.loads(events[-1])), events[-2:]
    else:
        assert "choices" in r.json()


def run_fuzz(server: Server, expected: tuple[str, str], cases: int, seed: int) -> None:
    rng = random.Random(seed)
    statuses: dict[int, int] = {}
    with HealthWatch(server):
        for i in range(cases):
            path, body = fuzz_case(rng)
            try:
                r = server.post(path, body, timeout=60)
            except httpx.TimeoutException:
                pytest.fail(f"case {i} hung: {json.dumps(body)[:300]}")
            try:
                check_fuzz_response(r)
            except AssertionError as exc:
                raise AssertionError(f"case {i}: {json.dumps(body)[:300]}") from exc
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
    assert statuses.get(200, 0) > cases // 20 and statuses.get(400, 0) > cases // 5, statuses
    server.idle()
    assert_exact(server, expected)


def test_fuzzed_bodies(open_server: Server, expected: tuple[str, str]) -> None:
    run_fuzz(open_server, expected, 200, seed=1234)


@pytest.mark.slow
def test_fuzzed_bodies_long(open_server: Server, expected: tuple[str, str]) -> None:
    run_fuzz(open_server, expected, 2000, seed=98765)


def test_serve_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mtpstream.cli import _parser, main

    args = _parser().parse_args(["serve", "m.gguf"])
    assert (args.max_body_bytes, args.stream_idle_timeout, args.header_timeout) == (4 * 2**20, 30.0, 10.0)
    assert (args.body_timeout, args.max_connections, args.report_cached_tokens) == (30.0, 256, False)
    for bad in (
        ["--max-body-bytes", "0"],
        ["--stream-idle-timeout", "0"],
        ["--max-queue", "-1"],
        ["--api-key", "a", "--api-key-file", str(tmp_path / "k")],
        ["--api-key-file", str(tmp_path / "missing")],
    ):
        assert main(["serve", str(tmp_path / "m.gguf"), *bad]) == 2, bad
        assert "error:" in capsys.readouterr().err
