"""Loading GGUF models (with their MTP head) and the vocabulary helpers."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Literal

from . import _bridge, _rpc
from ._gguf_checks import check_hyperparameters
from ._gguf_meta import GGUFFormatError, read_gguf_header
from .errors import InvalidOptionError, ModelLoadError, SessionClosedError

__all__ = ["Model", "load_model"]

_GGUF_MAGIC = b"GGUF"


# "auto" reads the weights into memory when the file takes at most this share of
# the memory available right now, and maps the file otherwise
_IN_MEMORY_SHARE = 0.5


def _available_memory_bytes() -> int | None:
    """Memory the system can give without swapping (``MemAvailable``), if known."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _choose_mmap(file_bytes: int, available_bytes: int | None) -> bool:
    """The ``use_mmap=None`` ("auto") policy: map the file unless it fits in memory with room.

    Neither way decodes faster everywhere (README, "Performance"). A file that
    takes at most half of the available memory is read in (no page faults while
    decoding); a larger one,
    or any file when the available memory is unknown, is mapped (llama.cpp's
    default), which lets models larger than memory run and shares the pages
    between processes.
    """
    if available_bytes is None:
        return True
    return file_bytes > _IN_MEMORY_SHARE * available_bytes


@dataclass(frozen=True)
class _FileInfo:
    arch: str
    file_bytes: int
    tensor_names: frozenset[str]
    block_count: int
    nextn_layers: int


def _inspect_file(path: Path) -> _FileInfo:
    """Check that `path` is a readable, complete GGUF and read what llama.cpp doesn't tell."""
    if not path.exists():
        raise ModelLoadError(f"model file not found: '{path}'")
    if path.is_dir():
        raise ModelLoadError(f"'{path}' is a directory, not a GGUF file")
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(f"'{path}' is empty (0 bytes)")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != _GGUF_MAGIC:
        raise ModelLoadError(f"'{path}' is not a GGUF file (magic {magic!r}, expected b'GGUF')")
    try:
        header = read_gguf_header(path)
    except (GGUFFormatError, OSError) as exc:
        raise ModelLoadError(f"'{path}' is a truncated or corrupt GGUF file: {exc}") from exc
    names = frozenset(t.name for t in header.tensors)
    for t in header.tensors:
        if t.data_offset + t.n_bytes > size:
            raise ModelLoadError(f"'{path}' is truncated: tensor '{t.name}' extends past the end of the file")

    def field(key: str) -> Any:
        return header.kv.get(key)

    arch = field("general.architecture")
    if not isinstance(arch, str):
        raise ModelLoadError(f"'{path}' has no general.architecture key")
    try:
        check_hyperparameters(path.name, field, arch)
    except ModelLoadError:
        raise
    except Exception as exc:  # a value the gguf package cannot even decode
        raise ModelLoadError(f"'{path}' has corrupt metadata: {exc!r}") from exc
    block_count = field(f"{arch}.block_count")
    nextn = field(f"{arch}.nextn_predict_layers")
    return _FileInfo(
        arch=arch,
        file_bytes=size,
        tensor_names=names,
        block_count=int(block_count) if isinstance(block_count, int) else 0,
        nextn_layers=int(nextn) if isinstance(nextn, int) else 0,
    )


class Model:
    """A loaded GGUF model. Create it with :func:`load_model`.

    A ``Model`` can back several sessions at once. Closing it (or letting it be
    collected) releases this handle; sessions that use it keep the weights alive
    until they are closed.
    """

    def __init__(
        self,
        native: _bridge.NativeModel,
        info: _FileInfo,
        path: Path,
        uses_mmap: bool,
        placement: tuple[int | None, int | Literal["all"]] = (None, 0),
        rpc: tuple[str, ...] = (),
    ) -> None:
        self._rpc = rpc
        self._native: _bridge.NativeModel | None = native
        self._info = info
        self._path = path
        self._uses_mmap = uses_mmap
        self._n_gpu_layers, self._n_cpu_moe = placement
        self._metadata: Mapping[str, str] | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Release this handle (idempotent)."""
        self._native = None

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._native is None

    def __enter__(self) -> Model:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.n_params / 1e6:.1f}M params"
        return f"<mtpstream.Model {self._info.arch} '{self._path.name}' {state}>"

    @property
    def native(self) -> _bridge.NativeModel:
        """The native model (mtpstream's own layers use it; sessions hold it, so the
        weights outlive :meth:`close`). Raises :class:`SessionClosedError` once closed."""
        native = self._native
        if native is None:
            raise SessionClosedError("the model is closed")
        return native

    # ------------------------------------------------------------------ facts
    @property
    def path(self) -> Path:
        """The GGUF file."""
        return self._path

    @property
    def uses_mmap(self) -> bool:
        """Whether the weights are mapped from the file (else read into memory)."""
        return self._uses_mmap

    @property
    def n_gpu_layers(self) -> int | None:
        """``load_model``'s ``n_gpu_layers`` (None: llama.cpp's default)."""
        return self._n_gpu_layers

    @property
    def rpc(self) -> tuple[str, ...]:
        """``load_model``'s RPC workers (``"host:port"``), in device order; empty: none."""
        return self._rpc

    @property
    def rpc_loss(self) -> str | None:
        """Why the model is unusable when an RPC worker holding part of it was lost
        (``"lost the RPC worker host:port (connection reset...)"``), else None.

        A lost worker takes its share of the weights with it: the calls that ran on it
        ended with :class:`GenerationError` naming it, and every later call on the model
        does too. Load the model again once the worker is back. Raises
        :class:`SessionClosedError` once the model is closed."""
        return self.native.rpc_loss or None

    @property
    def n_cpu_moe(self) -> int | Literal["all"]:
        """``load_model``'s ``n_cpu_moe``: the blocks whose MoE experts stay in CPU memory."""
        return self._n_cpu_moe

    @property
    def mtp_local(self) -> bool:
        """Whether the MTP blocks and the output layer run on this host's CPU over RPC
        (``load_model(mtp_local=True)`` with workers and no local accelerator)."""
        return bool(self.native.host_tail)

    @property
    def repack(self) -> bool:
        """Whether llama.cpp's extra weight buffers (repacked layouts, AMX) are in use."""
        return bool(self.native.repack)

    @property
    def arch(self) -> str:
        """``general.architecture`` (e.g. ``"qwen35"``)."""
        return self._info.arch

    @property
    def description(self) -> str:
        """llama.cpp's one-line description (type, size, quantization)."""
        return str(self.native.description)

    @property
    def size_bytes(self) -> int:
        """Total size of the tensors in bytes."""
        return int(self.native.size_bytes)

    @property
    def n_params(self) -> int:
        """Number of parameters."""
        return int(self.native.n_params)

    @property
    def n_ctx_train(self) -> int:
        """Context length the model was trained with."""
        return int(self.native.n_ctx_train)

    @property
    def n_embd(self) -> int:
        """Hidden width."""
        return int(self.native.n_embd)

    @property
    def n_vocab(self) -> int:
        """Vocabulary size."""
        return int(self.native.n_vocab)

    @property
    def n_layer(self) -> int:
        """Number of blocks, including NextN (MTP) blocks."""
        return int(self.native.n_layer)

    @property
    def n_layer_nextn(self) -> int:
        """NextN (MTP) layers the file declares."""
        return int(self.native.n_layer_nextn)

    @property
    def load_mtp(self) -> bool:
        """Whether the MTP layers were requested at load time."""
        return bool(self.native.load_mtp)

    @property
    def has_mtp(self) -> bool:
        """True only when NextN layers exist in the file *and* were loaded."""
        return self.load_mtp and self.n_layer_nextn > 0 and self._has_nextn_tensors()

    @property
    def llama_model_address(self) -> int:
        """The address of this model's ``llama_model``, for llama-cpp-python's low-level
        API (one libllama in the process): ``llama_cpp.llama_init_from_model(
        ctypes.c_void_p(model.llama_model_address), params)`` makes a context on it that
        :meth:`mtpstream.Context.adopt` takes over. Raises :class:`SessionClosedError`
        once closed."""
        return int(self.native.address)

    @property
    def is_sidecar(self) -> bool:
        """True for an MTP-only GGUF: a NextN block but no trunk (usable only as ``draft_model``)."""
        nextn_index = self._info.block_count - 1
        if not self._has_nextn_tensors():
            return False
        return not any(
            name.startswith("blk.") and name.split(".")[1] != str(nextn_index)
            for name in self._info.tensor_names
        )

    def _has_nextn_tensors(self) -> bool:
        return any(".nextn." in name for name in self._info.tensor_names)

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template stored in the file, if any."""
        tmpl = str(self.native.chat_template)
        return tmpl or None

    @property
    def metadata(self) -> Mapping[str, str]:
        """All GGUF key/values as llama.cpp renders them (long arrays are abbreviated)."""
        with self._lock:
            if self._metadata is None:
                self._metadata = MappingProxyType(dict(self.native.metadata()))
            return self._metadata

    @property
    def bos(self) -> int | None:
        """Beginning-of-sequence token id (None if the vocabulary has none)."""
        t = int(self.native.bos)
        return t if t >= 0 else None

    @property
    def eos(self) -> int | None:
        """End-of-sequence token id (None if the vocabulary has none)."""
        t = int(self.native.eos)
        return t if t >= 0 else None

    def is_eog(self, token_id: int) -> bool:
        """Whether ``token_id`` ends generation (EOS, EOT, ...)."""
        self._check_token(token_id)
        return bool(self.native.is_eog(token_id))

    # ------------------------------------------------------------------ vocabulary
    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of ``text`` (``add_special`` adds BOS where the model wants one).

        With the defaults this is exactly how a text prompt is tokenized:
        special-token text such as ``<|im_start|>`` becomes that special token;
        ``parse_special=False`` tokenizes it as plain text.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be str, not {type(text).__name__}")
        return list(self.native.tokenize(text, add_special, parse_special))

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of a token sequence (invalid UTF-8 is replaced)."""
        ids = list(ids)
        for t in ids:
            self._check_token(t)
        return bytes(self.native.detokenize(ids)).decode("utf-8", errors="replace")

    def token_text(self, token_id: int) -> str:
        """The vocabulary's text of a token, special tokens included (``"<|im_end|>"``)."""
        self._check_token(token_id)
        return str(self.native.token_text(token_id))

    def token_to_piece(self, token_id: int, special: bool = False) -> bytes:
        """The raw bytes of one token as generation renders it (a control token renders
        empty; with ``special=True``, as its text, as llama-server's ``/tokenize`` shows it)."""
        self._check_token(token_id)
        return bytes(self.native.token_to_piece(token_id, special))

    def _check_token(self, token_id: object) -> None:
        if isinstance(token_id, bool) or not isinstance(token_id, int):
            raise TypeError(f"token ids must be int, not {type(token_id).__name__}")
        n = self.n_vocab
        if not 0 <= token_id < n:
            raise ValueError(f"token id {token_id} is out of range for a vocabulary of {n} tokens")


def cpu_offers_amx_buffer() -> bool:
    """Whether llama.cpp offers its AMX weight buffer here (built with AMX, on a CPU
    that has it): where it does, ``load_model(repack=None)`` leaves repacking off."""
    return _bridge.cpu_offers_amx_buffer()


def load_model(
    path: str | os.PathLike[str],
    *,
    n_gpu_layers: int | None = None,
    load_mtp: bool = True,
    use_mmap: bool | None = True,
    repack: bool | None = None,
    n_cpu_moe: int | Literal["all"] = 0,
    progress: Callable[[float], object] | None = None,
    rpc: str | Sequence[str] | None = None,
    tensor_split: Sequence[float] | None = None,
    rpc_timeout: float = 300.0,
    mtp_local: bool = False,
) -> Model:
    """Load a GGUF model, with its MTP (NextN) layers unless ``load_mtp=False``.

    ``n_gpu_layers=None`` keeps llama.cpp's default (offload what the build
    supports); an int overrides it. ``use_mmap=True`` (the default, as in llama.cpp
    and llama-server) maps the file, ``False`` reads the weights into memory,
    ``None`` ("auto") reads them in when the file takes at most half of the
    available memory and maps it otherwise (:attr:`Model.uses_mmap` tells which).
    Neither is faster everywhere (measurements: README, "Performance").
    ``repack`` is llama-server's ``--repack``/``--no-repack``: llama.cpp's extra
    weight buffers (weights repacked for the CPU's SIMD kernels, Intel AMX tiles).
    ``None`` (the default) turns them on except on a CPU where llama.cpp offers its
    AMX buffer: that kernel multiplies a batched activation wrongly (a hybrid
    model's ``ssm_out`` over a ubatch of several sequences) and gives wrong tokens
    or a crash (README, "AMX CPUs"). :attr:`Model.repack` tells which was used.
    ``n_cpu_moe`` is llama-server's ``--n-cpu-moe``/``--cpu-moe``: the MoE expert
    weights (``ffn_*_exps``) of the first ``n_cpu_moe`` blocks, or of every block
    (``"all"``), stay in CPU memory while the rest goes where ``n_gpu_layers`` puts it
    (llama.cpp's tensor buffer-type overrides; a CPU-only build keeps everything there
    anyway). ``progress`` receives values in 0..1 while loading; returning ``False``
    aborts the load.

    ``rpc`` (``"host:port"`` strings, or one comma-separated string) offloads layers to
    ``mtpstream rpc-server`` workers through llama.cpp's RPC backend, as
    ``llama-server --rpc`` does: their devices come first, then the local accelerators;
    ``n_gpu_layers`` counts the layers offloaded to all of them (the rest stay on the
    local CPU) and ``tensor_split`` their shares, one per device in that order
    (default: by each device's free memory). The MTP head's layers and the draft
    context go where llama.cpp puts them, like the rest. A worker is checked before
    llama.cpp sees it, so an unreachable one fails the load in bounded time
    (``_rpc.CONNECT_TIMEOUT_S`` per worker) instead of ending the process. A worker
    lost later (its connection reset or closed, no reply within ``rpc_timeout``
    seconds, or a silent host) ends the calls that ran on it with
    :class:`WorkerLostError`, not the process (README, "Over several machines"); the
    model is unusable from then on (:attr:`Model.rpc_loss`). ``rpc_timeout`` must
    cover the longest graph a worker computes (a prompt chunk of ``n_batch`` tokens);
    a connection to a worker that an earlier model opened keeps that model's value.
    The RPC protocol has no authentication: use workers on a trusted network only.

    ``mtp_local=True`` (with ``rpc``, on a host without an accelerator of its own)
    keeps the model's tail on this host's CPU: the MTP blocks and the output layer,
    which llama.cpp would give the last worker. Every draft step then runs here, with
    no round trip, and the last worker keeps the target's graph cached between
    verifies (ggml's RPC client caches one graph per device); this host computes the
    output layer and the MTP head and holds their weights. It pays where this CPU is
    about as fast as the workers (README, "Over several machines": measured both
    ways); with a local accelerator llama.cpp puts the tail there anyway and the
    option changes nothing. :attr:`Model.mtp_local` tells whether it applied.

    Raises:
        ModelLoadError: the file is missing, not a GGUF, truncated, or llama.cpp cannot load it;
            an RPC worker is unreachable or lost during the load (naming it), or this llama.cpp
            build has no RPC backend (naming ``-DGGML_RPC=on``).
        InvalidOptionError: ``n_cpu_moe`` is not a count >= 0 or ``"all"`` (``field="n_cpu_moe"``);
            ``rpc`` is not a list of ``host:port`` (``field="rpc"``); ``tensor_split`` is not a
            list of numbers >= 0 (``field="tensor_split"``); ``rpc_timeout`` is not a number of
            seconds from 0.1 to 86400 (``field="rpc_timeout"``).
        TypeError: ``n_gpu_layers``, ``use_mmap``, ``repack`` or ``mtp_local`` of the wrong type.
    """
    if n_gpu_layers is not None and (isinstance(n_gpu_layers, bool) or not isinstance(n_gpu_layers, int)):
        raise TypeError("n_gpu_layers must be an int or None")
    if use_mmap is not None and not isinstance(use_mmap, bool):
        raise TypeError(f"use_mmap must be True, False or None (auto), not {use_mmap!r}")
    if repack is not None and not isinstance(repack, bool):
        raise TypeError(f"repack must be True, False or None (auto), not {repack!r}")
    if not isinstance(mtp_local, bool):
        raise TypeError(f"mtp_local must be True or False, not {mtp_local!r}")
    _check_n_cpu_moe(n_cpu_moe)
    endpoints = _rpc.parse_endpoints(rpc) if rpc is not None else ()
    split = _check_tensor_split(tensor_split)
    if (
        isinstance(rpc_timeout, bool)
        or not isinstance(rpc_timeout, (int, float))
        or not 0.1 <= rpc_timeout <= 86400
    ):
        raise InvalidOptionError(
            f"rpc_timeout must be a number of seconds from 0.1 to 86400 (got {rpc_timeout!r})",
            field="rpc_timeout",
        )
    p = Path(os.fspath(path)).expanduser()
    info = _inspect_file(p)
    if endpoints:
        _rpc.check_endpoints(endpoints)
        _rpc.mark_used(endpoints)
    mmap = _choose_mmap(info.file_bytes, _available_memory_bytes()) if use_mmap is None else use_mmap
    # one override pattern per block at most (llama.cpp takes up to 4096)
    n_cpu = -1 if n_cpu_moe == "all" else min(int(n_cpu_moe), max(info.block_count, 1))
    native = _bridge.load_model(
        str(p),
        n_gpu_layers,
        bool(load_mtp),
        mmap,
        repack,
        n_cpu,
        progress,
        info.arch,
        endpoints,
        split,
        rpc_timeout,
        (info.block_count - info.nextn_layers, info.block_count) if mtp_local and endpoints else (-1, 0),
    )
    return Model(native, info, p, mmap, (n_gpu_layers, n_cpu_moe), endpoints)


def _check_tensor_split(value: Sequence[float] | None) -> tuple[float, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0 for x in value
    ):
        raise InvalidOptionError(
            f"tensor_split must be a list of shares >= 0, one per device (got {value!r})",
            field="tensor_split",
        )
    return tuple(float(x) for x in value)


def _check_n_cpu_moe(value: object) -> None:
    if value == "all" and isinstance(value, str):
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidOptionError(
            f"n_cpu_moe must be a count of blocks >= 0 or 'all' (got {value!r})", field="n_cpu_moe"
        )
