"""``mtpstream chat``'s line editing and history: readline (where Python has it) on a
terminal, the history kept in a file between sessions (default: ``chat_history`` in
mtpstream's user data directory), at most ``--history-size`` lines, private to the
user (mode 0600)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["DEFAULT_HISTORY_SIZE", "add_history_args", "default_history_path", "line_editing"]

DEFAULT_HISTORY_SIZE = 1000


def default_history_path() -> Path:
    """``chat_history`` in mtpstream's user data directory (platformdirs)."""
    import platformdirs

    return Path(platformdirs.user_data_dir("mtpstream")) / "chat_history"


def _size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return value


def add_history_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--history",
        type=Path,
        default=None,
        metavar="PATH",
        help="the file that keeps what you typed between sessions (default: chat_history in "
        "mtpstream's user data directory)",
    )
    p.add_argument("--no-history", action="store_true", help="keep no history file")
    p.add_argument(
        "--history-size",
        type=_size,
        default=DEFAULT_HISTORY_SIZE,
        metavar="N",
        help=f"lines the history file keeps, the latest (default {DEFAULT_HISTORY_SIZE})",
    )


def history_path(args: argparse.Namespace) -> Path | None:
    """The history file the arguments ask for (None: no file)."""
    if args.no_history or args.history_size == 0:
        return None
    return args.history if args.history is not None else default_history_path()


@contextlib.contextmanager
def line_editing(path: Path | None, size: int) -> Iterator[bool]:
    """Within: ``input()`` edits lines with readline and recalls earlier ones (yields
    True), when stdin and stdout are terminals and Python has readline (else yields
    False and changes nothing). ``path``: the history read at entry and written at exit,
    cut to its last ``size`` lines (None: no file). A history file that cannot be read or
    written is skipped with a note on stderr, never an error."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        yield False
        return
    try:
        import readline
    except ImportError:  # Windows without pyreadline
        yield False
        return
    readline.set_history_length(size)
    if path is not None and path.exists():
        try:
            readline.read_history_file(path)
        except OSError as exc:
            print(f"note: chat history not read from {path}: {exc}", file=sys.stderr)
    try:
        yield True
    finally:
        if path is not None:
            _write(path)


def _write(path: Path) -> None:
    import readline

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)  # created private
        os.close(fd)
        readline.write_history_file(str(path))
    except OSError as exc:
        print(f"note: chat history not written to {path}: {exc}", file=sys.stderr)
