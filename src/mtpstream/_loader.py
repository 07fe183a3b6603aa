"""Loads the native extension against the libllama that ``llama_cpp`` loads.

llama-cpp-python installs two byte-identical copies of libllama
(``site-packages/lib`` and ``site-packages/llama_cpp/lib``) and dlopens its own
copy by path. Importing ``llama_cpp`` first makes that copy (soname
``libllama.so.0``) the one our extension binds to, whatever order the user
imports things in: one llama.cpp per process, so a ``llama_model *`` is valid in
both.
"""

from __future__ import annotations

import llama_cpp  # noqa: F401  (must precede _native: see the docstring)

from . import _native as _native

__all__ = ["_native"]
