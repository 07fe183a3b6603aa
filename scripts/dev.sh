#!/usr/bin/env bash
# One entry point for a fresh machine:
#   bash scripts/dev.sh demo   set up (idempotent) and run the demo
#   bash scripts/dev.sh test   set up (idempotent) and run the whole test suite
#   bash scripts/dev.sh setup  set up only
#
# Setup makes .venv, installs llama-cpp-python==0.3.36 with llama.cpp's RPC
# backend on (-DGGML_RPC=on appended to CMAKE_ARGS; compiled from its sdist once
# into a wheel kept in mtpstream's cache under a hash of the effective CMAKE_ARGS,
# so later runs are instant and a wheel built with other options is never reused),
# then builds mtpstream's native extension against it without build isolation, so
# llama.cpp is never compiled twice. `setup` and `test` also fetch (once, into mtpstream's cache) the
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

cache_root() {
    # mtpstream's cache (the parent of mtpstream.testing.default_cache_dir())
    if [ -n "${MTPSTREAM_CACHE_DIR:-}" ]; then
        dirname "$MTPSTREAM_CACHE_DIR"
    elif [ "$(uname)" = Darwin ]; then
        echo "$HOME/Library/Caches/mtpstream"
    else
        echo "${XDG_CACHE_HOME:-$HOME/.cache}/mtpstream"
    fi
}

effective_cmake_args() {
    # the user's CMAKE_ARGS with the RPC backend on, added exactly once
    local args="${CMAKE_ARGS:-}"
    case " $args " in
        *" -DGGML_RPC=on "* | *" -DGGML_RPC=ON "*) ;;
        *) args="${args:+$args }-DGGML_RPC=on" ;;
    esac
    echo "$args"
}

install_llama_cpp_python() {
    # llama-cpp-python is built by `pip wheel --no-cache-dir` (pip's own wheel cache
    # ignores CMAKE_ARGS) into a directory keyed by the version, the interpreter and
    # the effective CMAKE_ARGS, and installed from that file. The key, written next
    # to the venv's copy, and libggml-rpc in llama_cpp/lib tell whether the installed
    # copy is the one wanted; a copy without the RPC backend is replaced.
    local args key wheels marker lib
    args="$(effective_cmake_args)"
    key="$("$PY" -c 'import hashlib, sys, sysconfig
parts = [sys.argv[1], sys.implementation.cache_tag, sysconfig.get_platform(), sys.argv[2]]
print(hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16])' "$LLAMA_CPP_PYTHON" "$args")"
    marker="$VENV/.mtpstream-llama-cpp-python"
    lib="$("$PY" -c "import importlib.util, pathlib; s = importlib.util.find_spec('llama_cpp'); print(pathlib.Path(s.origin).parent / 'lib')" 2>/dev/null || true)"
    if [ -n "$lib" ] && [ "$(cat "$marker" 2>/dev/null)" = "$key" ] && compgen -G "$lib/*ggml-rpc*" >/dev/null; then
        return 0
    fi
    wheels="$(cache_root)/wheels/llama-cpp-python-0.3.36-$key"
    if ! compgen -G "$wheels/llama_cpp_python-*.whl" >/dev/null; then
        echo "==> building $LLAMA_CPP_PYTHON with CMAKE_ARGS=\"$args\" (compiles llama.cpp once; ~5-10 min on 2 cores)"
        local tmp
        tmp="$(mktemp -d)"
        CMAKE_ARGS="$args" "$PY" -m pip wheel --quiet --no-deps --no-cache-dir --no-binary llama-cpp-python \
            -w "$tmp" "$LLAMA_CPP_PYTHON"
        mkdir -p "$(dirname "$wheels")"
        rm -rf "$wheels.partial"
        mv "$tmp" "$wheels.partial"
        mv "$wheels.partial" "$wheels"
    fi
    echo "==> installing $LLAMA_CPP_PYTHON from $wheels"
    local wheel
    wheel="$(compgen -G "$wheels/llama_cpp_python-*.whl" | head -n1)"
    "$PY" -m pip install --quiet --no-deps --force-reinstall "$wheel"
    "$PY" -m pip install --quiet "$wheel"  # its dependencies
    lib="$("$PY" -c "import importlib.util, pathlib; s = importlib.util.find_spec('llama_cpp'); print(pathlib.Path(s.origin).parent / 'lib')")"
    if ! compgen -G "$lib/*ggml-rpc*" >/dev/null; then
        echo "error: $wheel has no ggml-rpc library in llama_cpp/lib (CMAKE_ARGS=\"$args\")" >&2
        return 1
    fi
    echo "$key" >"$marker"
}

setup() {
    if [ ! -x "$PY" ]; then
        python3 -m venv "$VENV"
    fi
    "$PY" -m pip install --quiet --upgrade pip
    install_llama_cpp_python
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
    # llama-cpp-python alone, into $MTPSTREAM_VENV (the sanitizer job's venv uses it)
    llama) [ -x "$PY" ] || python3 -m venv "$VENV"; install_llama_cpp_python ;;
    *) echo "usage: bash scripts/dev.sh {setup|demo|test|llama} [args...]" >&2; exit 2 ;;
esac
