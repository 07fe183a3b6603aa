"""Limits and settings of ``mtpstream serve`` (:class:`ServerLimits`), the API key's
sources and the Host allow-list.

Every limit has a default that is safe on an untrusted network; ``mtpstream serve``
exposes them as flags (``--max-body-bytes``, ``--stream-idle-timeout``, ...).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "API_KEY_ENV",
    "LOOPBACK_HOSTS",
    "ServerLimits",
    "allowed_hosts",
    "host_name",
    "resolve_api_keys",
]

API_KEY_ENV = "MTPSTREAM_API_KEY"
"""The environment variable ``mtpstream serve`` reads the API key from (kept out of ``ps``)."""

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")
_WILDCARD_BINDS = ("", "0.0.0.0", "::", "[::]")


@dataclass(frozen=True)
class ServerLimits:
    """What one client may cost the server.

    ``max_queue``: calls waiting for a sequence beyond ``n_seq`` (``None``: no limit);
    more get 429, counted atomically for every endpoint.
    ``max_body_bytes``: request bodies above this get 413 (checked on ``Content-Length``
    and while the body arrives). ``max_json_depth``: deeper JSON gets 400.
    ``header_timeout``: the request line and headers must arrive within this many
    seconds of the connection opening (or of the previous response); ``body_timeout``:
    the body within this many seconds of the headers (408 otherwise).
    ``stream_idle_timeout``: a response the client reads nothing of for this long is
    dropped (its generation cancelled, its sequence freed). ``keep_alive_timeout``: an
    idle keep-alive connection is closed after this. ``max_connections``: connections
    beyond this get 503 at once. ``shutdown_grace``: on SIGINT/SIGTERM running calls get
    this long to finish, then they end with a ``shutting_down`` error.
    ``allowed_hosts``: the ``Host`` names accepted when no API key is set (``"*"``:
    any; see :func:`allowed_hosts`), against DNS rebinding. ``report_cached_tokens``:
    report ``usage.prompt_tokens_details.cached_tokens`` (off by default: the prompt
    cache is shared, so it would tell a client whether another one sent the same
    prompt prefix). ``cors_origins``: the web origins (``scheme://host[:port]``, ``"*"``:
    any) whose pages a browser lets call the server (CORS; a preflight from one of them
    is answered without the API key, with the CORS headers; other origins get none).
    ``"*"`` on a server without an API key lets any web page the user visits use it.
    """

    max_queue: int | None = None
    max_body_bytes: int = 4 * 2**20
    max_json_depth: int = 64
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    stream_idle_timeout: float = 30.0
    keep_alive_timeout: float = 5.0
    max_connections: int = 256
    max_header_bytes: int = 16 * 1024
    shutdown_grace: float = 3.0
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    report_cached_tokens: bool = False
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_queue is not None and self.max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        for name in ("max_body_bytes", "max_json_depth", "max_connections", "max_header_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("header_timeout", "body_timeout", "stream_idle_timeout", "keep_alive_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if not self.shutdown_grace >= 0:
            raise ValueError("shutdown_grace must be >= 0")


def resolve_api_keys(
    keys: Sequence[str] | None, key_file: str | None, environ: Mapping[str, str] | None = None
) -> tuple[str, ...]:
    """The API keys the server accepts: every ``--api-key`` (each may hold several,
    comma-separated, as llama-server takes them) and every line of ``--api-key-file``
    (blank lines and ``#`` comments skipped); when neither is given,
    ``$MTPSTREAM_API_KEY`` (comma-separated too). Empty when none is set.

    Raises:
        ValueError: an empty key, an unreadable file, or a file without a key.
    """
    found: list[str] = []
    for key in keys or ():
        found += _split_keys(key, "--api-key")
    if key_file is not None:
        try:
            lines = Path(key_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the API key file {key_file!r}: {exc}") from None
        in_file = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        if not in_file:
            raise ValueError(f"the API key file {key_file!r} is empty")
        found += in_file
    if keys is None and key_file is None:
        env = (os.environ if environ is None else environ).get(API_KEY_ENV)
        if env is not None:
            found += _split_keys(env, API_KEY_ENV)
    return tuple(dict.fromkeys(found))


def _split_keys(text: str, source: str) -> list[str]:
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise ValueError(f"the API key is empty (in {source})")
    return parts


def allowed_hosts(bound_host: str, extra: tuple[str, ...] = ()) -> frozenset[str]:
    """The ``Host`` names a key-less server accepts: loopback names, the bound address
    (unless it is a wildcard) and ``extra`` (``"*"`` accepts any)."""
    names = set(LOOPBACK_HOSTS)
    if bound_host not in _WILDCARD_BINDS:
        names.add(bound_host)
        if ":" in bound_host and not bound_host.startswith("["):
            names.add(f"[{bound_host}]")
    names.update(h.strip() for h in extra if h.strip())
    return frozenset(n.lower() for n in names)


def host_name(header: str) -> str:
    """The name of a ``Host`` header without its port, lowercased."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        return header[: end + 1] if end > 0 else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header
