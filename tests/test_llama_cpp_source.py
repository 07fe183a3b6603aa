"""``mtpstream.testing.llama_cpp_source.fetch`` against a real package index on 127.0.0.1
(PEP 691 JSON and PEP 503 HTML pages, a small sdist): the tree lands whole and once,
a wrong sha256 or an unsafe member leaves nothing behind."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtpstream.testing import llama_cpp_source as src

SDIST = f"llama_cpp_python-{src.VERSION}.tar.gz"
TOP = f"llama_cpp_python-{src.VERSION}"


def _sdist(extra: dict[str, bytes] | None = None, link: str | None = None) -> bytes:
    files = {
        f"{TOP}/PKG-INFO": b"Name: llama_cpp_python\n",
        f"{TOP}/vendor/llama.cpp/CMakeLists.txt": b"project(llama.cpp)\n",
        f"{TOP}/vendor/llama.cpp/models/templates/Qwen3.5-4B.jinja": b"{{ messages }}",
        **(extra or {}),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if link is not None:
            info = tarfile.TarInfo(f"{TOP}/vendor/llama.cpp/models/evil")
            info.type, info.linkname = tarfile.SYMTYPE, link
            tf.addfile(info)
    return buf.getvalue()


class Index:
    """A simple index serving one sdist; ``requests`` lists the paths asked for."""

    def __init__(self, archive: bytes, sha256: str | None = None, html: bool = False) -> None:
        self.archive, self.html, self.requests = archive, html, list[str]()
        self.sha256 = sha256 or hashlib.sha256(archive).hexdigest()
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                index.requests.append(self.path)
                if self.path == f"/simple/{src.PACKAGE}/":
                    body, kind = index.page()
                elif self.path == f"/files/{SDIST}":
                    body, kind = index.archive, "application/octet-stream"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def page(self) -> tuple[bytes, str]:
        if self.html:
            link = f'<a href="../../files/{SDIST}#sha256={self.sha256}">{SDIST}</a>'
            return f"<html><body>\n{link}<br/>\n</body></html>".encode(), "text/html"
        files = [
            {"filename": f"llama_cpp_python-{src.VERSION}-py3-none-any.whl", "url": "/x.whl", "hashes": {}},
            {"filename": SDIST, "url": f"/files/{SDIST}", "hashes": {"sha256": self.sha256}},
        ]
        return json.dumps({"files": files}).encode(), "application/vnd.pypi.simple.v1+json"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def index() -> Iterator[Index]:
    idx = Index(_sdist({f"{TOP}/vendor/other/x.c": b"int x;\n"}))
    yield idx
    idx.close()


def test_fetch_unpacks_the_tree_once(index: Index, tmp_path: Path) -> None:
    tree = src.fetch(tmp_path, index.url)
    assert tree == tmp_path / TOP / "vendor" / "llama.cpp"
    assert (tree / "CMakeLists.txt").read_bytes() == b"project(llama.cpp)\n"
    assert (tree / "models" / "templates" / "Qwen3.5-4B.jinja").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [TOP]  # no archive, no temporary
    assert not (tmp_path / TOP / "vendor" / "other").exists()  # vendor/llama.cpp only
    assert index.requests == [f"/simple/{src.PACKAGE}/", f"/files/{SDIST}"]
    assert src.fetch(tmp_path, index.url) == tree
    assert len(index.requests) == 2  # there already: nothing asked


def test_fetch_reads_an_html_index(tmp_path: Path) -> None:
    idx = Index(_sdist(), html=True)
    try:
        assert (src.fetch(tmp_path, idx.url) / "CMakeLists.txt").is_file()
    finally:
        idx.close()


@pytest.mark.parametrize("case", ["sha256", "symlink", "traversal"])
def test_a_bad_sdist_leaves_nothing(case: str, tmp_path: Path) -> None:
    if case == "sha256":
        idx = Index(_sdist(), sha256="0" * 64)
    elif case == "symlink":
        idx = Index(_sdist(link="/etc/passwd"))
    else:
        idx = Index(_sdist({f"{TOP}/vendor/llama.cpp/../../../../escaped": b"x"}))
    try:
        with pytest.raises(src.SourceError):
            src.fetch(tmp_path / "cache", idx.url)
    finally:
        idx.close()
    assert list((tmp_path / "cache").iterdir()) == []
    assert not (tmp_path / "escaped").exists()
    assert len(idx.requests) == 2  # not retried: the archive itself is wrong


def test_an_unreachable_index_is_a_source_error(tmp_path: Path) -> None:
    idx = Index(b"")
    url = idx.url
    idx.close()  # the port is closed now: connection refused
    with pytest.raises(src.SourceError, match="could not fetch"):
        src.fetch(tmp_path, url)
    assert list(tmp_path.iterdir()) == []
