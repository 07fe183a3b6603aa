"""A small, dependency-free GGUF header reader (metadata and tensor infos).

It reads only the header, decoding the values of the keys that are asked for
and skipping the rest, so it is fast even on files with large vocabularies.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_SCALARS: dict[int, tuple[str, int]] = {
    0: ("<B", 1),
    1: ("<b", 1),
    2: ("<H", 2),
    3: ("<h", 2),
    4: ("<I", 4),
    5: ("<i", 4),
    6: ("<f", 4),
    7: ("<?", 1),
    10: ("<Q", 8),
    11: ("<q", 8),
    12: ("<d", 8),
}
_NP_DTYPES: dict[int, str] = {
    0: "<u1",
    1: "<i1",
    2: "<u2",
    3: "<i2",
    4: "<u4",
    5: "<i4",
    6: "<f4",
    7: "<u1",
    10: "<u8",
    11: "<i8",
    12: "<f8",
}
_STRING = 8
_ARRAY = 9


@dataclass(frozen=True)
class TensorInfo:
    """Name, ggml shape (``ne``, fastest dimension first) and ggml type id."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int


@dataclass
class GGUFHeader:
    """Decoded metadata (only the requested keys) and all tensor infos."""

    version: int
    kv: dict[str, Any] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)
    tensors: list[TensorInfo] = field(default_factory=list)


class _Cursor:
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.pos = 0

    def scalar(self, fmt: str, size: int) -> Any:
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return v

    def u32(self) -> int:
        return int(self.scalar("<I", 4))

    def u64(self) -> int:
        return int(self.scalar("<Q", 8))

    def string(self) -> str:
        n = self.u64()
        s = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def skip_string(self) -> None:
        n = self.u64()
        self.pos += n

    def value(self, vtype: int, decode: bool) -> Any:
        if vtype in _SCALARS:
            fmt, size = _SCALARS[vtype]
            if not decode:
                self.pos += size
                return None
            v = self.scalar(fmt, size)
            return bool(v) if vtype == 7 else v
        if vtype == _STRING:
            if decode:
                return self.string()
            self.skip_string()
            return None
        if vtype == _ARRAY:
            etype = self.u32()
            count = self.u64()
            if etype in _SCALARS:
                size = _SCALARS[etype][1]
                if decode:
                    arr = np.frombuffer(self.buf, dtype=_NP_DTYPES[etype], count=count, offset=self.pos)
                    out: Any = arr.copy()
                else:
                    out = None
                self.pos += size * count
                return out
            items = [self.value(etype, decode) for _ in range(count)]
            return items if decode else None
        raise ValueError(f"unknown GGUF value type {vtype}")


def read_header(path: str | os.PathLike[str], want: Callable[[str], bool] | None = None) -> GGUFHeader:
    """Read the GGUF header of ``path``; decode keys for which ``want(key)`` is true."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 24:
            raise ValueError(f"{path}: not a GGUF file (too small)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if bytes(buf[:4]) != b"GGUF":
                raise ValueError(f"{path}: not a GGUF file (bad magic)")
            cur = _Cursor(buf)
            cur.pos = 4
            version = cur.u32()
            n_tensors = cur.u64()
            n_kv = cur.u64()
            hdr = GGUFHeader(version=version)
            for _ in range(n_kv):
                key = cur.string()
                vtype = cur.u32()
                decode = want is None or want(key)
                v = cur.value(vtype, decode)
                hdr.keys.append(key)
                if decode:
                    hdr.kv[key] = v
            for _ in range(n_tensors):
                name = cur.string()
                n_dims = cur.u32()
                shape = tuple(cur.u64() for _ in range(n_dims))
                ggml_type = cur.u32()
                cur.u64()  # offset
                hdr.tensors.append(TensorInfo(name=name, shape=shape, ggml_type=ggml_type))
            return hdr
