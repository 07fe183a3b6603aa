#!/usr/bin/env bash
# One entry point for a fresh machine:
#   bash scripts/dev.sh demo   set up (idempotent) and run the demo
#   bash scripts/dev.sh test   set up (idempotent) and run the whole test suite
#   bash scripts/dev.sh setup  set up only
#
# Setup makes .venv, installs llama-cpp-python==0.3.36 (compiled from its sdist
# once; pip's wheel cache makes later runs instant), then builds mtpstream's
# native extension against it without build isolation, so llama.cpp is never
# compiled twice. `setup` and `test` also fetch (once, into mtpstream's cache) the
# llama.cpp source vendored in llama-cpp-python's sdist (~77 MB): its real Qwen3.5
# vocabulary and chat template are what the tests of special tokens in chat messages
# use (under CI=true they fail without it rather than skip). For a GPU build,
# export llama-cpp-python's CMAKE_ARGS first, e.g. CMAKE_ARGS="-DGGML_CUDA=on" or
# CMAKE_ARGS="-DGGML_METAL=on".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MTPSTREAM_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
LLAMA_CPP_PYTHON="llama-cpp-python==0.3.36"

setup() {
    if [ ! -x "$PY" ]; then
        python3 -m venv "$VENV"
    fi
    "$PY" -m pip install --quiet --upgrade pip
    if ! "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('llama-cpp-python') != '0.3.36')" 2>/dev/null; then
        echo "==> installing $LLAMA_CPP_PYTHON (compiles llama.cpp once; ~5-10 min on 2 cores)"
        "$PY" -m pip install --quiet "$LLAMA_CPP_PYTHON"
    fi
    "$PY" -m pip install --quiet "scikit-build-core>=0.10" "nanobind>=2.4"
    echo "==> building mtpstream (native extension against llama-cpp-python's libllama)"
    "$PY" -m pip install --quiet --no-build-isolation -e "$ROOT[test]"
}

fetch_llama_cpp_source() {
    # idempotent: prints the cached tree at once when it is there
    echo "==> llama.cpp source of $LLAMA_CPP_PYTHON (its sdist, ~77 MB, fetched once)"
    if ! "$PY" -m mtpstream.testing.llama_cpp_source; then
        echo "warning: no llama.cpp source: the real-vocabulary tests skip (and fail under CI=true)" >&2
    fi
}

run_tests() {
    cd "$ROOT"
    "$VENV/bin/ruff" check src tests examples
    "$VENV/bin/mypy" --strict
    # pytest exits 5 when it collected no tests: that fails this script too
    "$PY" -m pytest -q "$@"
}

cmd="${1:-setup}"
shift || true
case "$cmd" in
    setup) setup && fetch_llama_cpp_source ;;
    demo) setup && "$VENV/bin/mtpstream" demo "$@" ;;
    test) setup && fetch_llama_cpp_source && run_tests "$@" ;;
    *) echo "usage: bash scripts/dev.sh {setup|demo|test} [args...]" >&2; exit 2 ;;
esac
