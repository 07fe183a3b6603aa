"""The ``mtpstream`` command, run as a user runs it (subprocesses; chat in a pseudo-terminal)."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mtpstream

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]")


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mtpstream", *args], capture_output=True, text=True, timeout=timeout
    )


def test_generate_streams_to_stdout_with_stats_on_stderr(model_paths: dict[str, Path]) -> None:
    path = model_paths["qwen35-oracle"]
    p = run("generate", str(path), "we walked along", "--max-tokens", "20", "--quiet")
    assert p.returncode == 0, p.stderr
    with mtpstream.load_model(path) as model, mtpstream.init(model, n_draft=3) as mtp:
        expected = mtp.generate_sync("we walked along", max_tokens=20)
    assert p.stdout == expected + "\n"
    assert "20 generated tokens" in p.stderr and "acceptance" in p.stderr
    auto = run("generate", str(path), "we walked along", "--max-tokens", "20", "--n-draft", "auto", "--quiet")
    assert auto.returncode == 0 and auto.stdout == p.stdout
    snap = run("generate", str(path), "we walked along", "--max-tokens", "20", "--rollback", "snapshots")
    assert snap.returncode == 0 and snap.stdout == p.stdout


def test_info_and_make_model(model_paths: dict[str, Path], tmp_path: Path) -> None:
    p = run("info", str(model_paths["qwen35-oracle"]))
    assert p.returncode == 0, p.stderr
    assert "qwen35" in p.stdout and "mtp head       yes" in p.stdout and "chat template  yes" in p.stdout
    side = run("info", str(model_paths["qwen35-sidecar"]))
    assert "sidecar        yes" in side.stdout
    made = run("make-model", "--size", "tiny", "--head", "kv", "--cache-dir", str(tmp_path))
    assert made.returncode == 0, made.stderr
    out = Path(made.stdout.strip())
    assert out.parent == tmp_path and out.exists()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("info", "/nonexistent/model.gguf"), 1, "error:"),
        (("generate", "MODEL", "x", "--n-draft", "lots"), 2, "must be an int or 'auto'"),
        (("generate", "MODEL", "x", "--max-tokens", "0"), 2, "max_tokens"),
        (("generate", "MODEL", "x", "--rollback", "undo"), 2, "invalid choice: 'undo'"),
        (("demo", "--n-draft", "0"), 2, "--n-draft must be >= 1"),
    ],
)
def test_errors_are_one_line_without_traceback(
    model_paths: dict[str, Path], args: tuple[str, ...], code: int, message: str
) -> None:
    args = tuple(str(model_paths["qwen35-oracle"]) if a == "MODEL" else a for a in args)
    p = run(*args)
    assert p.returncode == code, p.stderr
    assert message in p.stderr
    assert "Traceback" not in p.stderr
    # the error is one line (argparse puts its usage text before it)
    assert [ln for ln in p.stderr.splitlines() if "error" in ln] == [p.stderr.strip().splitlines()[-1]]
    debug = run("--debug", *args)
    if code == 1:
        assert "Traceback" in debug.stderr


def test_chat_in_a_pseudo_terminal(model_paths: dict[str, Path]) -> None:
    path = model_paths["qwen35-oracle"]
    pid, fd = pty.fork()
    if pid == 0:  # the child: the chat, on the pty
        os.execv(
            sys.executable,
            [
                sys.executable,
                "-m",
                "mtpstream",
                "chat",
                str(path),
                "--max-tokens",
                "12",
                "--quiet",
                "--no-history",
            ],
        )
    out = b""

    def read_until(marker: bytes, timeout: float = 60) -> bytes:
        nonlocal out
        deadline = time.monotonic() + timeout
        while marker not in ANSI.sub(b"", out):
            left = deadline - time.monotonic()
            assert left > 0, out.decode(errors="replace")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                try:
                    out += os.read(fd, 4096)
                except OSError:
                    break
        head, _, rest = ANSI.sub(b"", out).partition(marker)  # readline's terminal modes removed
        out = rest
        return head

    try:
        read_until(b"> ")
        os.write(fd, b"we walked along the river\n")
        first = read_until(b"> ")
        os.write(fd, b"and then?\n")
        second = read_until(b"> ")
        os.write(fd, b"/reset\n")
        assert b"history cleared" in read_until(b"> ")
        os.write(fd, b"we walked along the river\n")
        again = read_until(b"> ")
        os.write(fd, b"/exit\n")
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    answer = first.split(b"river", 1)[1].strip()
    assert answer and again.split(b"river", 1)[1].strip() == answer  # /reset: the same as the first turn
    assert second.split(b"then?", 1)[1].strip()  # the second turn answered (with the history)
    with mtpstream.load_model(path) as model, mtpstream.init(model, n_draft=3, n_ctx=4096) as mtp:
        r = mtp.chat_sync([{"role": "user", "content": "we walked along the river"}], max_tokens=12)
    assert answer.decode().replace("\r\n", "\n") == r.choices[0].message.content.strip()


def test_demo_reports_a_paired_ratio(model_paths: dict[str, Path]) -> None:
    """The README's demo on its default model (the 0.6B bench size, written once into
    the cache): identical output and a paired ratio (how fast is the benchmark's job)."""
    p = run("demo", "--max-tokens", "24", "--rounds", "3", timeout=600)
    assert p.returncode == 0, p.stderr
    assert "qwen35-bench-oracle" in p.stdout and "n_embd=1024 n_layer=24" in p.stdout
    assert "median of 3 paired, interleaved rounds" in p.stdout
    assert "plain decoding (n_draft=0)" in p.stdout
    assert "identical to plain greedy decoding: yes" in p.stdout
    assert "note: on a model this small" not in p.stdout


def test_demo_on_the_tiny_model_says_why_it_is_not_faster(model_paths: dict[str, Path]) -> None:
    p = run("demo", "--size", "tiny", "--max-tokens", "24", "--rounds", "3")
    assert p.returncode == 0, p.stderr
    assert "identical to plain greedy decoding: yes" in p.stdout
    assert "note: on a model this small" in p.stdout
