"""The llama.cpp source the pinned llama-cpp-python vendors (its sdist's
``vendor/llama.cpp``): llama.cpp's vocabularies and chat templates for the tests,
and the tree ``mtpstream bench --with-upstream`` builds ``llama-server`` from.

Where it is, in order:

1. ``$MTPSTREAM_LLAMA_CPP_SRC``: an unpacked tree, used as it is (never fetched into);
2. the cache: ``<cache>/upstream/llama_cpp_python-0.3.36/vendor/llama.cpp`` (``<cache>``
   is the parent of :func:`mtpstream.testing.default_cache_dir`, so
   ``$MTPSTREAM_CACHE_DIR`` moves it too);
3. :func:`fetch`: the sdist (~77 MB) from the package index's simple API
   (``$MTPSTREAM_INDEX_URL``, else ``$PIP_INDEX_URL``, else PyPI), which also gives its
   sha256: downloaded with urllib (timeouts, sha256 checked), its ``vendor/llama.cpp``
   extracted with tarfile's ``data`` filter into a temporary directory and renamed
   into the cache in one step, the archive deleted.

``python -m mtpstream.testing.llama_cpp_source`` fetches it when absent
(``scripts/dev.sh setup`` runs it) and prints where it is. For the tests and the bench.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "INDEX_ENV",
    "PACKAGE",
    "SRC_ENV",
    "VERSION",
    "SourceError",
    "cache_root",
    "fetch",
    "find",
    "source_dir",
]

PACKAGE = "llama-cpp-python"
VERSION = "0.3.36"
SRC_ENV = "MTPSTREAM_LLAMA_CPP_SRC"
INDEX_ENV = "MTPSTREAM_INDEX_URL"
_PYPI = "https://pypi.org/simple"
_SDIST_NAMES = (f"llama_cpp_python-{VERSION}.tar.gz", f"llama-cpp-python-{VERSION}.tar.gz")
_TOP = f"llama_cpp_python-{VERSION}"
_TREE = Path(_TOP, "vendor", "llama.cpp")
_TIMEOUT_S = 60.0  # per connect / read
_DOWNLOAD_LIMIT_S = 900.0  # the whole sdist
_ATTEMPTS = 3
_CHUNK = 1 << 20

Log = Callable[[str], None]


class SourceError(RuntimeError):
    """The llama.cpp source is not here and could not be fetched."""


def _quiet(_: str) -> None:
    pass


def cache_root() -> Path:
    """``<mtpstream cache>/upstream`` (what the bench has always used)."""
    from ._api import default_cache_dir

    return default_cache_dir().parent / "upstream"


def _complete(tree: Path) -> bool:
    return (tree / "CMakeLists.txt").is_file() and (tree / "models").is_dir()


def find() -> Path | None:
    """The tree without touching the network: ``$MTPSTREAM_LLAMA_CPP_SRC`` when set
    (whether it exists or not), else the cache's when complete, else None."""
    env = os.environ.get(SRC_ENV)
    if env:
        return Path(env)
    tree = cache_root() / _TREE
    return tree if _complete(tree) else None


def source_dir(log: Log = _quiet) -> Path:
    """:func:`find`, else :func:`fetch` into the cache.

    Raises:
        SourceError: ``$MTPSTREAM_LLAMA_CPP_SRC`` is not a llama.cpp tree, or the fetch
            failed.
    """
    tree = find()
    if tree is not None:
        if not _complete(tree):
            raise SourceError(f"{SRC_ENV}={tree} is not a llama.cpp source tree (no CMakeLists.txt, models/)")
        return tree
    return fetch(log=log)


def index_url() -> str:
    return (os.environ.get(INDEX_ENV) or os.environ.get("PIP_INDEX_URL") or _PYPI).rstrip("/")


def _open(url: str, accept: str) -> Any:  # urlopen's own return type is Any
    req = urllib.request.Request(
        url, headers={"Accept": accept, "User-Agent": f"mtpstream ({PACKAGE} sdist)"}
    )
    return urllib.request.urlopen(req, timeout=_TIMEOUT_S)


def _sdist_link(index: str) -> tuple[str, str]:
    """The sdist's URL and sha256 from the index's simple page (PEP 691 JSON, or the
    PEP 503 HTML page with ``#sha256=`` fragments)."""
    page = f"{index}/{PACKAGE}/"
    accept = "application/vnd.pypi.simple.v1+json, text/html;q=0.1"
    with _open(page, accept) as resp:
        kind = resp.headers.get("Content-Type", "")
        body = resp.read(32 << 20).decode("utf-8", "replace")
        base = resp.geturl()
    if "json" in kind:
        for f in json.loads(body).get("files", []):
            if f.get("filename") in _SDIST_NAMES and f.get("hashes", {}).get("sha256"):
                return urllib.parse.urljoin(base, f["url"]), str(f["hashes"]["sha256"]).lower()
    else:
        for href, text in re.findall(r'<a\s[^>]*href="([^"]+)"[^>]*>\s*([^<]+?)\s*</a>', body):
            url, _, frag = html.unescape(href).partition("#")
            if text in _SDIST_NAMES and frag.startswith("sha256="):
                return urllib.parse.urljoin(base, url), frag[len("sha256=") :].lower()
    raise SourceError(f"{page} lists no {_SDIST_NAMES[0]} with a sha256")


def _download(url: str, sha256: str, dest: Path) -> int:
    """``url`` into ``dest`` (a new file); its sha256 must be ``sha256``. Returns bytes."""
    digest = hashlib.sha256()
    size = 0
    deadline = time.monotonic() + _DOWNLOAD_LIMIT_S
    with _open(url, "*/*") as resp, dest.open("wb") as out:
        while chunk := resp.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
            if time.monotonic() > deadline:
                raise SourceError(f"downloading {url} took longer than {_DOWNLOAD_LIMIT_S:.0f} s")
    if digest.hexdigest() != sha256:
        raise SourceError(f"{url}: sha256 {digest.hexdigest()} differs from the index's {sha256}")
    return size


def _tree_members(tf: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    prefix = f"{_TREE.as_posix()}/"
    for member in tf:
        if member.name.startswith(prefix):
            yield member


def _extract(archive: Path, dest: Path) -> None:
    """The archive's ``vendor/llama.cpp`` into ``dest``, refusing unsafe members."""
    try:
        with tarfile.open(archive) as tf:
            if hasattr(tarfile, "data_filter"):
                tf.extractall(dest, members=_tree_members(tf), filter="data")
            else:  # pragma: no cover - Python without extraction filters
                members = list(_tree_members(tf))
                for m in members:
                    if not (m.isfile() or m.isdir()) or m.name.startswith("/") or ".." in Path(m.name).parts:
                        raise SourceError(f"unsafe member in {archive.name}: {m.name}")
                tf.extractall(dest, members=members)
    except tarfile.TarError as exc:  # FilterError (an unsafe member) included
        raise SourceError(f"{archive.name}: {exc}") from exc


def fetch(root: Path | None = None, index: str | None = None, log: Log = _quiet) -> Path:
    """Download and unpack the sdist's ``vendor/llama.cpp`` into ``root`` (default:
    :func:`cache_root`) unless it is there; returns the tree.

    Raises:
        SourceError: the index, the download or the archive failed (after retries
            for network errors).
    """
    root = cache_root() if root is None else root
    tree = root / _TREE
    if _complete(tree):
        return tree
    index = index_url() if index is None else index.rstrip("/")
    root.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for attempt in range(1, _ATTEMPTS + 1):
        work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=root))
        try:
            t0 = time.monotonic()
            url, sha256 = _sdist_link(index)
            log(f"fetching {url} (sha256 {sha256[:12]}...)")
            size = _download(url, sha256, work / _SDIST_NAMES[0])
            t1 = time.monotonic()
            _extract(work / _SDIST_NAMES[0], work)
            if not _complete(work / _TREE):
                raise SourceError(f"{url} holds no {_TREE.as_posix()}")
            try:
                (work / _TOP).rename(root / _TOP)  # one step: the tree is whole or absent
            except OSError:
                if not _complete(tree):  # not another process that was quicker
                    raise
            t2 = time.monotonic()
            log(f"{size / 1e6:.1f} MB downloaded in {t1 - t0:.1f} s, unpacked in {t2 - t1:.1f} s")
            return tree
        except (OSError, SourceError) as exc:  # urllib's errors are OSErrors
            last = exc
            if isinstance(exc, SourceError) or attempt == _ATTEMPTS:
                break
            log(f"attempt {attempt} failed ({exc}); retrying")
            time.sleep(2.0 * attempt)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    raise SourceError(f"could not fetch the {PACKAGE}=={VERSION} sdist from {index}: {last}") from last


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args:
        print("usage: python -m mtpstream.testing.llama_cpp_source", file=sys.stderr)
        return 2
    try:
        tree = source_dir(log=lambda m: print(f"   {m}", flush=True))
    except SourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(tree)
    return 0


if __name__ == "__main__":
    sys.exit(main())
