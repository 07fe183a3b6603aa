#!/usr/bin/env bash
# The extension built with AddressSanitizer + UndefinedBehaviorSanitizer (and libstdc++'s
# bounds-checked containers, -D_GLIBCXX_ASSERTIONS), and the fast
# tests run under it:
#   bash scripts/sanitize.sh            # all tests not marked slow
#   bash scripts/sanitize.sh -k hostile # pytest arguments pass through
#
# It uses its own virtualenv (.venv-asan) and build directory (build/asan), so the
# normal build stays as it is; llama-cpp-python comes from the wheel scripts/dev.sh
# setup built (llama.cpp itself is not sanitized). Python leaks by
# design at exit, so leak detection is off; any ASan or UBSan report fails the run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MTPSTREAM_ASAN_VENV:-$ROOT/.venv-asan}"
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
fi
"$PY" -m pip install --quiet --upgrade pip
# llama-cpp-python as scripts/dev.sh installs it (with the RPC backend, from its cached wheel)
MTPSTREAM_VENV="$VENV" bash "$ROOT/scripts/dev.sh" llama
"$PY" -m pip install --quiet "scikit-build-core>=0.10" "nanobind>=2.4"
echo "==> building mtpstream with -fsanitize=address,undefined (build/asan)"
"$PY" -m pip install --quiet --no-build-isolation -e "$ROOT[test]" \
    --config-settings=build-dir=build/asan \
    --config-settings=cmake.define.MTPSTREAM_SANITIZE=ON

ASAN_RT="$(gcc -print-file-name=libasan.so)"
UBSAN_RT="$(gcc -print-file-name=libubsan.so)"
cd "$ROOT"
echo "==> pytest under ASan + UBSan"
# allocator_may_return_null: an allocation no allocator can satisfy fails with NULL, as
# in the C library, instead of ending the process (ggml checks for NULL; a worker under
# `rpc-server --mem` refuses an allocation past its cap by asking for such a size)
LD_PRELOAD="$ASAN_RT:$UBSAN_RT" \
ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:verify_asan_link_order=0:handle_segv=1:allocator_may_return_null=1" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    "$PY" -m pytest -q -m "not slow" -p no:cacheprovider "$@"
