"""Copy a GGUF file with some metadata changed (for tests with corrupted models)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gguf

DELETE = object()
"""A change value that drops the key."""


def copy_with(src: Path, dst: Path, changes: Mapping[str, Any]) -> Path:
    """Write ``dst``: ``src`` with each key in ``changes`` set to the given value
    (same GGUF type as before; a list for arrays) or removed (:data:`DELETE`)."""
    reader = gguf.GGUFReader(str(src), "r")
    arch = str(reader.get_field("general.architecture").contents())
    writer = gguf.GGUFWriter(str(dst), arch)
    try:
        _copy(reader, writer, changes)
    finally:
        writer.close()
    return dst


def _copy(reader: gguf.GGUFReader, writer: gguf.GGUFWriter, changes: Mapping[str, Any]) -> None:
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = changes.get(key, f.contents())
        if value is DELETE:
            continue
        vtype = f.types[0]
        sub = f.types[1] if vtype == gguf.GGUFValueType.ARRAY and len(f.types) > 1 else None
        writer.add_key_value(key, value, vtype, sub_type=sub)
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
