"""A fast, defensive GGUF header reader for the pre-load checks.

``gguf.GGUFReader`` builds a numpy view per array element, which takes ~10 s on a
150k-token vocabulary; this reads the header with ``struct`` and bulk numpy, so a
real vocabulary takes a fraction of a second. Every count and length is checked
against the bytes that remain, so a corrupt header raises :class:`GGUFFormatError`
instead of allocating or looping without bound.

String values are decoded with ``surrogateescape``: distinct byte strings stay
distinct (the duplicate-token check compares what llama.cpp compares: bytes).
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["GGUFFormatError", "GGUFHeader", "TensorEntry", "read_gguf_header"]

_SCALARS: dict[int, tuple[str, str, int]] = {
    # type id: (struct format, numpy dtype, size)
    0: ("<B", "<u1", 1),
    1: ("<b", "<i1", 1),
    2: ("<H", "<u2", 2),
    3: ("<h", "<i2", 2),
    4: ("<I", "<u4", 4),
    5: ("<i", "<i4", 4),
    6: ("<f", "<f4", 4),
    7: ("<?", "<u1", 1),
    10: ("<Q", "<u8", 8),
    11: ("<q", "<i8", 8),
    12: ("<d", "<f8", 8),
}
_STRING = 8
_ARRAY = 9
_MAX_DIMS = 4  # GGML_MAX_DIMS
_DEFAULT_ALIGNMENT = 32


class GGUFFormatError(ValueError):
    """The header is truncated or malformed."""


@dataclass(frozen=True)
class TensorEntry:
    """A tensor info: name, ggml shape, type id and where its data lies in the file."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    data_offset: int
    n_bytes: int


@dataclass
class GGUFHeader:
    """All key/values (numbers as Python scalars, arrays as lists) and tensor infos.

    ``types[key]`` is the GGUF value type id (for arrays: ``(9, element type)``).
    """

    version: int
    kv: dict[str, Any] = field(default_factory=dict)
    types: dict[str, tuple[int, ...]] = field(default_factory=dict)
    tensors: list[TensorEntry] = field(default_factory=list)


class _Cursor:
    def __init__(self, buf: mmap.mmap | bytes, size: int) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GGUFFormatError(f"truncated header: {what} needs {n} bytes at offset {self.pos}")

    def scalar(self, vtype: int) -> Any:
        fmt, _, size = _SCALARS[vtype]
        self.need(size, "a value")
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return bool(v) if vtype == 7 else v

    def u32(self) -> int:
        return int(self.scalar(4))

    def u64(self) -> int:
        return int(self.scalar(10))

    def raw_string(self) -> bytes:
        n = self.u64()
        self.need(n, "a string")
        s = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return s

    def string(self) -> str:
        return self.raw_string().decode("utf-8", errors="surrogateescape")

    def strings(self, count: int) -> list[str]:
        # each string takes at least its 8-byte length
        self.need(count * 8, f"an array of {count} strings")
        buf, pos, size = self.buf, self.pos, self.size
        unpack = struct.Struct("<Q").unpack_from
        out: list[str] = []
        append = out.append
        for _ in range(count):
            if pos + 8 > size:
                raise GGUFFormatError(f"truncated header: string array ends at offset {pos}")
            (n,) = unpack(buf, pos)
            pos += 8
            if pos + n > size:
                raise GGUFFormatError(f"truncated header: a string of {n} bytes at offset {pos}")
            append(bytes(buf[pos : pos + n]).decode("utf-8", errors="surrogateescape"))
            pos += n
        self.pos = pos
        return out

    def value(self, vtype: int, depth: int = 0) -> tuple[Any, tuple[int, ...]]:
        if vtype in _SCALARS:
            return self.scalar(vtype), (vtype,)
        if vtype == _STRING:
            return self.string(), (vtype,)
        if vtype != _ARRAY or depth > 0:
            raise GGUFFormatError(f"unknown or nested GGUF value type {vtype}")
        etype = self.u32()
        count = self.u64()
        if etype in _SCALARS:
            _, dtype, size = _SCALARS[etype]
            self.need(count * size, f"an array of {count} values")
            arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
            self.pos += count * size
            values = arr.astype(bool).tolist() if etype == 7 else arr.tolist()
            return values, (vtype, etype)
        if etype == _STRING:
            return self.strings(count), (vtype, etype)
        raise GGUFFormatError(f"unsupported GGUF array element type {etype}")


def _type_sizes() -> dict[int, tuple[int, int]]:
    from gguf.constants import GGML_QUANT_SIZES

    return {int(t): (int(b), int(s)) for t, (b, s) in GGML_QUANT_SIZES.items()}


def _tensor_infos(cur: _Cursor, n_tensors: int) -> list[tuple[str, tuple[int, ...], int, int]]:
    cur.need(n_tensors * 24, f"{n_tensors} tensor infos")  # name length, n_dims, type, offset
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.u32()
        if not 1 <= n_dims <= _MAX_DIMS:
            raise GGUFFormatError(f"tensor '{name}' has {n_dims} dimensions")
        shape = tuple(cur.u64() for _ in range(n_dims))
        ggml_type = cur.u32()
        offset = cur.u64()
        infos.append((name, shape, ggml_type, offset))
    return infos


def _parse(buf: mmap.mmap | bytes, size: int) -> GGUFHeader:
    if size < 24 or bytes(buf[:4]) != b"GGUF":
        raise GGUFFormatError("not a GGUF file")
    cur = _Cursor(buf, size)
    cur.pos = 4
    hdr = GGUFHeader(version=cur.u32())
    n_tensors = cur.u64()
    n_kv = cur.u64()
    cur.need(n_kv * 12, f"{n_kv} key/values")  # key length + value type
    for _ in range(n_kv):
        key = cur.string()
        value, types = cur.value(cur.u32())
        if key in hdr.kv:
            raise GGUFFormatError(f"duplicate key '{key}'")
        hdr.kv[key] = value
        hdr.types[key] = types
    infos = _tensor_infos(cur, n_tensors)
    alignment = hdr.kv.get("general.alignment", _DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GGUFFormatError(f"invalid general.alignment {alignment!r}")
    data_start = -(-cur.pos // alignment) * alignment
    sizes = _type_sizes()
    for name, shape, ggml_type, offset in infos:
        if ggml_type not in sizes:
            raise GGUFFormatError(f"tensor '{name}' has unknown type {ggml_type}")
        block, type_size = sizes[ggml_type]
        n = 1
        for d in shape:
            n *= d
        if shape[0] % block:
            raise GGUFFormatError(f"tensor '{name}': row of {shape[0]} is not a multiple of {block}")
        entry = TensorEntry(name, shape, ggml_type, data_start + offset, n // block * type_size)
        hdr.tensors.append(entry)
    return hdr


def read_gguf_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Parse the header (key/values and tensor infos) of the GGUF file ``path``.

    Raises:
        GGUFFormatError: truncated or malformed header.
        OSError: the file cannot be read.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 24:
            raise GGUFFormatError("not a GGUF file (too small)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                return _parse(buf, size)
            except (struct.error, OverflowError, MemoryError) as exc:
                raise GGUFFormatError(f"malformed header ({type(exc).__name__}: {exc})") from None
