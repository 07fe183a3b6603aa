"""Server request vs in-process call latency: python scripts/server_timing.py {tiny|small} [TOKENS]."""

import json
import socket
import statistics as st
import subprocess
import sys
import time
import urllib.request

import openai

import mtpstream
from mtpstream.testing import make_model

path = make_model(arch="qwen35", weights="oracle", size=sys.argv[1], mtp_error_rate=0.25, head="hidden")
MSG = [{"role": "user", "content": "we walked along the river"}]
N = int(sys.argv[2]) if len(sys.argv) > 2 else 64
s = socket.socket()
s.bind(("127.0.0.1", 0))
port = s.getsockname()[1]
s.close()
proc = subprocess.Popen(
    [
        sys.executable,
        "-m",
        "mtpstream",
        "serve",
        str(path),
        "--port",
        str(port),
        "--n-seq",
        "1",
        "--quiet",
        "--n-ctx",
        "2048",
    ],
    stderr=subprocess.DEVNULL,
)
for _ in range(200):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
        break
    except Exception:
        time.sleep(0.1)
client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
model = mtpstream.load_model(path)
mtp = mtpstream.init(model, n_draft=3, n_ctx=2048, prompt_cache=False)


def local():
    t = time.perf_counter()
    r = mtp.chat_sync(MSG, max_tokens=N, cache_prompt=False)
    return time.perf_counter() - t, r.choices[0].message.content


def remote():
    t = time.perf_counter()
    r = client.chat.completions.create(
        model="m", messages=MSG, max_tokens=N, extra_body={"cache_prompt": False}
    )
    return time.perf_counter() - t, r.choices[0].message.content


def remote_stream():
    t = time.perf_counter()
    first = None
    parts = []
    for c in client.chat.completions.create(
        model="m", messages=MSG, max_tokens=N, stream=True, extra_body={"cache_prompt": False}
    ):
        d = c.choices[0].delta.content
        if d and first is None:
            first = time.perf_counter() - t
        parts.append(d or "")
    return time.perf_counter() - t, "".join(parts)


local()
remote()
remote_stream()
L, R, S = [], [], []
for i in range(15):
    for f, acc in ((local, L), (remote, R), (remote_stream, S))[:: 1 if i % 2 == 0 else -1]:
        dt, text = f()
        acc.append((dt, text))
assert len({t for _, t in L + R + S}) == 1, "answers differ"
ml, mr, ms = (st.median(d for d, _ in x) * 1000 for x in (L, R, S))
print(
    json.dumps(
        {
            "size": sys.argv[1],
            "tokens": N,
            "in_process_ms": round(ml, 2),
            "server_ms": round(mr, 2),
            "server_stream_ms": round(ms, 2),
            "overhead_ms": round(mr - ml, 2),
            "stream_overhead_ms": round(ms - ml, 2),
        }
    )
)
proc.terminate()
proc.wait()
