"""Public entry points: ``make_model``, ``load_model``, ``expected_acceptance``..."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._config import (
    ARCHS,
    KINDS,
    SIZES,
    WEIGHTS,
    Arch,
    Kind,
    ModelConfig,
    Size,
    Weights,
    model_config,
)
from ._gguf_read import read_header
from ._oracle import (
    HEAD_MODES,
    AcceptanceResult,
    HeadMode,
    OracleSpec,
    class_margins,
    oracle_layout,
    simulate_acceptance,
)
from ._soft import SoftSpec
from ._tokenizer import build_vocab
from ._writer import FORMAT_VERSION, META_PREFIX, ModelRequest, write_model

CACHE_ENV = "MTPSTREAM_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$MTPSTREAM_CACHE_DIR`` if set, else ``<user cache dir>/mtpstream/models``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("mtpstream")) / "models"


def _normalize(
    arch: str, weights: str, size: str, mtp_error_rate: float, seed: int, kind: str, head: str = "token"
) -> ModelRequest:
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if head not in HEAD_MODES:
        raise ValueError(f"head must be one of {HEAD_MODES}, got {head!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0 or seed >= 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    rate = float(mtp_error_rate)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"mtp_error_rate must be in [0, 1], got {mtp_error_rate!r}")
    if weights == "soft" and head != "token":
        raise ValueError(f"weights='soft' drafts from the input token only (head='token'), not {head!r}")
    if weights == "random" or kind == "plain":
        rate = 0.0  # irrelevant for these models; one file serves all values
        head = "token"
    cfg = model_config(arch, size)
    return ModelRequest(
        cfg=cfg,
        weights=weights,
        kind=kind,
        seed=int(seed),
        mtp_error_rate=rate,
        head=head,  # type: ignore[arg-type]
    )


def _file_name(req: ModelRequest) -> str:
    key = {
        "format_version": FORMAT_VERSION,
        "arch": req.cfg.arch,
        "size": req.cfg.size,
        "weights": req.weights,
        "kind": req.kind,
        "seed": req.seed,
        "mtp_error_rate": repr(req.mtp_error_rate),
        "head": req.head,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    rate = f"-e{req.mtp_error_rate:g}" if req.weights != "random" and req.kind != "plain" else ""
    head = "" if req.head == "token" else f"-{req.head}"
    stem = f"{req.cfg.arch}-{req.cfg.size}-{req.weights}-{req.kind}{head}{rate}-s{req.seed}"
    return f"{stem}-v{FORMAT_VERSION}-{digest}.gguf"


@contextlib.contextmanager
def _file_lock(lock_path: Path) -> Iterator[None]:
    """Exclusive inter-process lock (best effort where ``fcntl`` is unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def make_model(
    arch: Arch = "qwen35",
    weights: Weights = "oracle",
    size: Size = "tiny",
    mtp_error_rate: float = 0.25,
    seed: int = 0,
    kind: Kind = "mtp",
    cache_dir: str | os.PathLike[str] | None = None,
    head: HeadMode = "token",
) -> Path:
    """Return the path of a synthetic GGUF model, writing it into the cache if needed.

    Args:
        arch: ``"qwen35"`` (dense hybrid Gated-DeltaNet / attention) or
            ``"qwen35moe"`` (same hybrid with MoE FFN and a shared expert).
        weights: ``"random"`` (seeded normal weights), ``"oracle"`` (known
            greedy successor map, MTP head wrong on ``mtp_error_rate`` of the
            word classes; see :func:`load_spec`) or ``"soft"`` (target and head
            share a known next-token distribution, 0.5 / 0.3 / 0.2 over three
            successors at temperature 1, so acceptance at temperature > 0 has a
            known expectation; see :func:`load_soft_spec` and
            :class:`SoftSpec`; ``head="token"`` only).
        size: ``"tiny"`` (a few MB), ``"small"`` (the tiny shapes 32 layers deep)
            or ``"bench"`` (~0.6B parameters, Q8_0).
        mtp_error_rate: oracle: fraction of word classes on which the MTP head
            predicts a wrong token; soft: how far the head's distribution is from
            the target's, ``q = (1 - e) * (0.5, 0.3, 0.2) + e * (0.1, 0.1, 0.8)``
            (a draft is then kept with probability ``1 - 0.6 e`` at temperature 1
            under ``verify="rejection"``). Ignored for random weights and plain models.
        seed: seed of every random choice.
        kind: ``"mtp"`` (trunk + one NextN block), ``"plain"`` (no NextN
            block) or ``"sidecar"`` (MTP-only GGUF: embeddings, output norm,
            LM head and the NextN block of the matching ``"mtp"`` model).
        cache_dir: directory for the files; default :func:`default_cache_dir`.
        head: what the oracle MTP head drafts from: ``"token"`` (the input token
            alone), ``"hidden"`` (only the hidden row it is fed: the target's row
            at the first draft step, its own output row inside the chain) or
            ``"kv"`` (only the value its attention reads from its own KV entry at
            the previous position) or ``"kv2"`` (the same, two positions back:
            it sees entries fed before the newest). Real heads read all of these; the modes
            have the same expected acceptance when the engine feeds the head
            right, and a wrong row or a stale MTP KV lowers it only in the modes
            that read it. Ignored for random weights and plain models.

    The same arguments always give a byte-identical file.  Files are written to
    a temporary name and atomically renamed, under a per-file lock, so
    concurrent callers are safe.
    """
    req = _normalize(arch, weights, size, mtp_error_rate, seed, kind, head)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    path = root / _file_name(req)
    if path.exists():
        return path
    with _file_lock(root / (path.name + ".lock")):
        if path.exists():
            return path
        fd, tmp = tempfile.mkstemp(dir=root, prefix=".tmp-", suffix=".gguf")
        os.close(fd)
        try:
            write_model(req, tmp)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return path


@dataclass(frozen=True)
class SyntheticModel:
    """A synthetic model file and what is known about it (read from its metadata)."""

    path: Path
    arch: Arch
    size: Size
    weights: Weights
    kind: Kind
    seed: int
    mtp_error_rate: float
    format_version: int
    n_vocab: int
    n_embd: int
    n_layer: int
    """``block_count``: trunk layers plus the NextN block when present."""
    n_layer_nextn: int
    head: str
    """What the oracle MTP head reads: ``"token"``, ``"hidden"``, ``"kv"`` or ``"kv2"``."""
    spec: OracleSpec | None
    """Oracle behaviour (``None`` for random and soft weights)."""
    soft: SoftSpec | None = None
    """Soft-oracle behaviour (``None`` unless ``weights="soft"``)."""

    @property
    def config(self) -> ModelConfig:
        """Hyper-parameters of the model."""
        return model_config(self.arch, self.size)


def load_model(path: str | os.PathLike[str]) -> SyntheticModel:
    """Read a synthetic model's description (and oracle spec) from its GGUF metadata."""
    p = Path(path)
    hdr = read_header(
        p,
        want=lambda k: (
            k.startswith(META_PREFIX)
            or k == "general.architecture"
            or k.endswith((".embedding_length", ".block_count", ".nextn_predict_layers"))
            or k == "tokenizer.ggml.token_type"
        ),
    )
    kv = hdr.kv
    if META_PREFIX + "format_version" not in kv:
        raise ValueError(f"{p} was not written by mtpstream.testing")
    arch = str(kv["general.architecture"])
    m = META_PREFIX

    spec: OracleSpec | None = None
    if m + "succ" in kv:
        head_arr = kv.get(m + "head_map")
        spec = OracleSpec(
            succ=tuple(int(x) for x in kv[m + "succ"]),
            head=None if head_arr is None else tuple(int(x) for x in head_arr),
            eos_token_id=int(kv[m + "eos_token_id"]),
            stop_word=str(kv[m + "stop_word"]),
            stop_token_id=int(kv[m + "stop_token_id"]),
            chain_start=int(kv[m + "chain_start"]),
            mtp_error_rate=float(kv[m + "mtp_error_rate"]),
            head_mode=str(kv.get(m + "head", "token")),
        )
    return SyntheticModel(
        soft=_soft_spec(kv),
        path=p,
        arch=arch,  # type: ignore[arg-type]
        size=str(kv[m + "size"]),  # type: ignore[arg-type]
        weights=str(kv[m + "weights"]),  # type: ignore[arg-type]
        kind=str(kv[m + "kind"]),  # type: ignore[arg-type]
        seed=int(kv[m + "seed"]),
        mtp_error_rate=float(kv[m + "mtp_error_rate"]),
        format_version=int(kv[m + "format_version"]),
        n_vocab=len(kv["tokenizer.ggml.token_type"]),
        n_embd=int(kv[f"{arch}.embedding_length"]),
        n_layer=int(kv[f"{arch}.block_count"]),
        n_layer_nextn=int(kv.get(f"{arch}.nextn_predict_layers", 0)),
        head=str(kv.get(m + "head", "token")),
        spec=spec,
    )


def _soft_spec(kv: dict[str, Any]) -> SoftSpec | None:
    m = META_PREFIX
    if m + "soft_token_class" not in kv:
        return None
    succ = [int(x) for x in kv[m + "soft_successors"]]
    tl = [float(x) for x in kv[m + "soft_target_logits"]]
    hl = [float(x) for x in kv[m + "soft_head_logits"]]
    return SoftSpec(
        token_class=tuple(int(x) for x in kv[m + "soft_token_class"]),
        successors=tuple((succ[i], succ[i + 1], succ[i + 2]) for i in range(0, len(succ), 3)),
        target_logits=(tl[0], tl[1], tl[2]),
        head_logits=(hl[0], hl[1], hl[2]),
        mtp_error_rate=float(kv[m + "mtp_error_rate"]),
    )


def load_soft_spec(path: str | os.PathLike[str]) -> SoftSpec:
    """The :class:`SoftSpec` stored in a soft-oracle model file (``weights="soft"``).

    Raises:
        ValueError: the file has other weights, or was not written by mtpstream.testing.
    """
    spec = load_model(path).soft
    if spec is None:
        raise ValueError(f"{path} does not have soft-oracle weights (make_model(weights='soft'))")
    return spec


def load_spec(path: str | os.PathLike[str]) -> OracleSpec:
    """The :class:`OracleSpec` stored in an oracle model file."""
    spec = load_model(path).spec
    if spec is None:
        raise ValueError(f"{path} has no oracle spec (random or soft weights)")
    return spec


def build_spec(
    size: Size = "tiny",
    mtp_error_rate: float = 0.25,
    seed: int = 0,
    with_head: bool = True,
    head: HeadMode = "token",
) -> OracleSpec:
    """The oracle spec a model made with these arguments has, without writing it.

    The spec does not depend on ``arch``.
    """
    if not 0.0 <= mtp_error_rate <= 1.0:
        raise ValueError("mtp_error_rate must be in [0, 1]")
    vocab = build_vocab(model_config("qwen35", size).min_vocab)
    layout = oracle_layout(vocab, seed, mtp_error_rate)
    return layout.spec(mtp_error_rate, with_head=with_head, head_mode=head)


def oracle_margins(size: Size = "tiny", seed: int = 0, mtp_error_rate: float = 0.25) -> np.ndarray:
    """Per word class, the logit margin of the oracle's correct token (target and head).

    Both heads place each class vector at a distinct row, so the margins are
    the same for the target LM head and the MTP head.
    """
    cfg = model_config("qwen35", size)
    vocab = build_vocab(cfg.min_vocab)
    layout = oracle_layout(vocab, seed, mtp_error_rate)
    return class_margins(layout.class_vectors(seed, cfg.n_embd))


def _as_spec(src: str | os.PathLike[str] | OracleSpec | SyntheticModel) -> OracleSpec:
    if isinstance(src, OracleSpec):
        return src
    if isinstance(src, SyntheticModel):
        if src.spec is None:
            raise ValueError("model has random weights; it has no oracle spec")
        return src.spec
    return load_spec(src)


def expected_acceptance(
    path_or_spec: str | os.PathLike[str] | OracleSpec | SyntheticModel,
    prompt_tokens: Sequence[int],
    n_draft: int,
    n_tokens: int,
    rollback: Literal["snapshots", "replay"] = "snapshots",
) -> AcceptanceResult:
    """Simulate MTP speculative decoding of an oracle model exactly.

    As the engine does: the first token is the target's successor of the last
    prompt token (sampled from the prompt's logits, no drafting, no
    iteration). Then each iteration drafts ``k = min(n_draft, n_tokens -
    emitted - 1)`` tokens by chaining the head map from the last token
    (``k == 0`` is a plain single-token step, still one iteration), accepts
    the longest prefix that equals the target's ``succ`` chain, and emits the
    accepted drafts plus one target token. It stops once ``n_tokens`` tokens
    are emitted or EOS is emitted; EOS is included in ``tokens`` and counts
    towards ``n_tokens`` (the engine sends no TokenEvent for it). A draft equal
    to EOS is not counted as accepted: EOS is the target's token.

    ``rollback`` is the one the session uses (:attr:`mtpstream.MTP.rollback`; with
    ``rollback="auto"`` at :func:`mtpstream.init` that is ``"snapshots"`` with one
    sequence and a measured choice with several): ``"snapshots"`` (the default here)
    always drafts ``n_draft``; with ``"replay"`` an iteration after a rejection
    drafts as many tokens fewer as it decodes again.

    Raises:
        ValueError: no MTP head, an empty prompt, a token out of range, a
            negative count, or an unknown ``rollback``.
    """
    return simulate_acceptance(_as_spec(path_or_spec), prompt_tokens, n_draft, n_tokens, rollback)


def describe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON-able summary of any GGUF file (metadata scalars and tensor list)."""
    hdr = read_header(Path(path), want=lambda k: True)
    kv: dict[str, Any] = {}
    for k, v in hdr.kv.items():
        if isinstance(v, np.ndarray):
            kv[k] = f"<array {v.dtype} x{v.size}>" if v.size > 8 else v.tolist()
        elif isinstance(v, list):
            kv[k] = f"<array x{len(v)}>" if len(v) > 8 else v
        else:
            kv[k] = v
    return {
        "path": str(path),
        "size_bytes": os.path.getsize(path),
        "gguf_version": hdr.version,
        "metadata": kv,
        "tensors": [{"name": t.name, "shape": list(t.shape), "type": t.ggml_type} for t in hdr.tensors],
    }
