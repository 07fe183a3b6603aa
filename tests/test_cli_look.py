"""How the command line looks: plain text off a terminal (logs, pipes), rich tables and
colour on one (``FORCE_COLOR`` stands in for a terminal; chat runs in a pseudo-terminal);
``serve``'s start banner; ``chat``'s history file."""

from __future__ import annotations

import os
import pty
import re
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

import mtpstream

ESC = "\x1b["
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]")
LABELS = ("model", "arch", "params", "shape", "context", "mtp head", "sidecar", "chat template", "repack")


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR")}
    return subprocess.run(
        [sys.executable, "-m", "mtpstream", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **(env or {})},
    )


# ------------------------------------------------------------------ info
def test_info_is_plain_off_a_terminal(model_paths: dict[str, Path]) -> None:
    path = model_paths["qwen35-oracle"]
    p = run("info", str(path))
    assert p.returncode == 0, p.stderr
    assert ESC not in p.stdout and ESC not in p.stderr
    lines = p.stdout.splitlines()
    assert [ln[:15].rstrip() for ln in lines] == list(LABELS)  # one line each, values at column 15
    with mtpstream.load_model(path) as model:
        assert lines[0] == f"model          {model.path}"
        assert (
            lines[3]
            == f"shape          n_embd={model.n_embd} n_layer={model.n_layer} n_vocab={model.n_vocab}"
        )
        assert lines[4] == f"context        {model.n_ctx_train} tokens (trained)"
        assert lines[2].startswith(f"params         {model.n_params:,}  (")


def test_info_is_a_rich_table_on_a_terminal(model_paths: dict[str, Path]) -> None:
    path = model_paths["qwen35-oracle"]
    p = run("info", str(path), env={"FORCE_COLOR": "1", "COLUMNS": "200"})
    assert p.returncode == 0, p.stderr
    assert ESC in p.stdout and "╭" in p.stdout and "│" in p.stdout
    text = ANSI.sub(b"", p.stdout.encode()).decode()
    for label in LABELS:
        assert re.search(rf"│ {label} +│", text), label
    with mtpstream.load_model(path) as model:
        assert f"n_embd={model.n_embd} n_layer={model.n_layer} n_vocab={model.n_vocab}" in text
    # NO_COLOR wins over FORCE_COLOR: plain again
    plain = run("info", str(path), env={"FORCE_COLOR": "1", "NO_COLOR": "1"})
    assert plain.stdout == run("info", str(path)).stdout and ESC not in plain.stdout


# ------------------------------------------------------------------ the load progress bar
def test_load_progress_bar_plain_and_rich(model_paths: dict[str, Path]) -> None:
    args = ("generate", str(model_paths["qwen35-oracle"]), "we walked", "--max-tokens", "2")
    plain = run(*args)
    assert plain.returncode == 0, plain.stderr
    assert ESC not in plain.stderr
    # off a terminal: 0% and 100%, not a hundred redraws
    assert plain.stderr.count("loading [") == 2
    assert "loading [                         ]   0%" in plain.stderr
    assert "loading [" + "#" * 25 + "] 100%" in plain.stderr
    rich = run(*args, env={"FORCE_COLOR": "1"})
    assert rich.returncode == 0, rich.stderr
    assert ESC in rich.stderr and "#" * 25 not in rich.stderr
    assert "loading" in rich.stderr and "100%" in rich.stderr and "━" in rich.stderr


# ------------------------------------------------------------------ serve's banner
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_banner(model: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[str, int]:
    """Start ``mtpstream serve``, wait until it answers /health, stop it; its stderr."""
    port = _free_port()
    base = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR", "MTPSTREAM_API_KEY")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtpstream", "serve", str(model), "--port", str(port), "--quiet", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**base, **(env or {})},
    )
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read() if proc.stderr else ""))
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        reader.join(timeout=30)
    return err[0], port


def test_serve_banner_names_what_it_serves_and_never_a_key(model_paths: dict[str, Path]) -> None:
    path = model_paths["qwen35-oracle"]
    keys = ("sk-first-secret-111", "sk-second-secret-222")
    text, port = _serve_banner(
        path, "--n-seq", "2", "--n-draft", "2", "--model-alias", "tiny",
        "--api-key", keys[0], "--api-key", keys[1],
    )  # fmt: skip
    assert ESC not in text
    fields = dict(re.findall(r"^(\S[\w ]*?) {2,}(.*)$", text, re.M))
    assert fields["url"] == f"http://127.0.0.1:{port}/v1"
    assert Path(fields["model"]).resolve() == path.resolve()
    assert fields["alias"] == "tiny"
    assert fields["decoding"] == "n_seq=2, n_ctx=4096, n_draft=2, rollback=snapshots" or (
        fields["decoding"] == "n_seq=2, n_ctx=4096, n_draft=2, rollback=replay"
    )
    assert fields["API keys"].startswith("2 keys in use")
    for route in ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages", "/props"):
        assert route in text, route
    assert re.search(r"^endpoints +POST +/v1/chat/completions", text, re.M)
    assert re.search(r"^ +GET +/health", text, re.M)
    assert not any(key in text for key in keys)
    # without a key the banner says Host names are checked, and which
    text, _ = _serve_banner(path, "--allowed-hosts", "box.lan")
    fields = dict(re.findall(r"^(\S[\w ]*?) {2,}(.*)$", text, re.M))
    assert fields["API keys"].startswith("none; Host names are checked: ")
    assert "box.lan" in fields["API keys"] and "localhost" in fields["API keys"]
    # on a terminal: the same as a rich table
    text, port = _serve_banner(path, "--api-key", keys[0], env={"FORCE_COLOR": "1", "COLUMNS": "200"})
    assert ESC in text and "╭" in text and keys[0] not in text
    plain = ANSI.sub(b"", text.encode()).decode()
    assert f"http://127.0.0.1:{port}/v1" in plain and "1 key in use" in plain


# ------------------------------------------------------------------ chat's history
class Pty:
    """``mtpstream chat`` on a pseudo-terminal."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child
            os.execve(sys.executable, [sys.executable, "-m", "mtpstream", "chat", *args], env)
        self.out = b""

    def until(self, marker: bytes, timeout: float = 60) -> bytes:
        """What the chat printed up to ``marker`` (escape codes removed)."""
        deadline = time.monotonic() + timeout
        while marker not in ANSI.sub(b"", self.out):
            left = deadline - time.monotonic()
            assert left > 0, self.out.decode(errors="replace")
            if select.select([self.fd], [], [], left)[0]:
                try:
                    self.out += os.read(self.fd, 4096)
                except OSError:
                    break
        head, _, rest = ANSI.sub(b"", self.out).partition(marker)
        self.out = rest
        return head

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)


def test_chat_keeps_a_bounded_history_between_sessions(model_paths: dict[str, Path], tmp_path: Path) -> None:
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "TERM": "xterm"}
    args = (str(model_paths["qwen35-oracle"]), "--max-tokens", "4", "--quiet", "--history-size", "3")
    chat = Pty(*args, env=env)
    chat.until(b"> ")
    for line in (b"we walked along the river", b"/reset", b"and then?", b"/reset"):
        chat.send(line + b"\n")
        chat.until(b"> ")
    chat.send(b"\x04")  # Ctrl-D
    assert chat.wait() == 0
    history = tmp_path / "data" / "mtpstream" / "chat_history"
    assert history.read_text().splitlines() == ["/reset", "and then?", "/reset"]  # the last 3
    assert history.stat().st_mode & 0o777 == 0o600
    # the next session recalls them: up, up, Enter sends "and then?" again
    chat = Pty(*args, env=env)
    chat.until(b"> ")
    chat.send(b"\x1b[A\x1b[A\n")
    assert b"and then?" in chat.until(b"> ")
    chat.send(b"/exit\n")
    assert chat.wait() == 0
    assert history.read_text().splitlines() == ["/reset", "and then?", "/exit"]
    # --no-history: nothing written
    env["XDG_DATA_HOME"] = str(tmp_path / "other")
    chat = Pty(*args, "--no-history", env=env)
    chat.until(b"> ")
    chat.send(b"/exit\n")
    assert chat.wait() == 0
    assert not (tmp_path / "other").exists()


def test_chat_from_a_pipe_keeps_no_history(model_paths: dict[str, Path], tmp_path: Path) -> None:
    """Piped input (a script) is not typed: no readline, no history file."""
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path)}
    p = subprocess.run(
        [sys.executable, "-m", "mtpstream", "chat", str(model_paths["qwen35-oracle"]), "--quiet"],
        input="/reset\n/exit\n",
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert p.returncode == 0, p.stderr
    assert "(history cleared)" in p.stdout and ESC not in p.stdout
    assert not (tmp_path / "mtpstream").exists()
