"""What the ``mtpstream`` subcommands share: the usage error, the load progress bar,
loading a model, the session arguments and building a session from them."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._console import progress_bar
from .model import Model, load_model
from .session import MTP, init

__all__ = ["UsageError", "add_repack_arg", "add_session_args", "load", "session"]


class UsageError(Exception):
    """A bad command line (exit code 2)."""


def load(path: str, quiet: bool = False, repack: bool | None = None, **load_options: Any) -> Model:
    """``load_model(path, repack=repack, **load_options)`` with a progress bar unless ``quiet``."""
    if quiet:
        return load_model(path, repack=repack, **load_options)
    progress, done = progress_bar("loading")
    try:
        return load_model(path, repack=repack, progress=progress, **load_options)
    finally:
        done()


def n_draft_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int or 'auto', not {text!r}") from None


def session(model: Model, args: argparse.Namespace, **context_options: Any) -> MTP:
    """The session the command line asks for (``context_options`` go to :func:`init`)."""
    n_draft = args.n_draft if model.has_mtp else 0
    if n_draft != args.n_draft:
        print(f"note: {model.path.name} has no MTP head; decoding without drafts", file=sys.stderr)
    budgets = {k: getattr(args, k) for k in ("grammar_budget", "grammar_step_budget") if hasattr(args, k)}
    if hasattr(args, "grammar_memory"):
        budgets["grammar_memory"] = args.grammar_memory * 2**20
    return init(
        model,
        n_draft=n_draft,
        n_ctx=args.n_ctx,
        n_seq=getattr(args, "n_seq", 1),
        rollback=args.rollback,
        **budgets,
        **context_options,
    )


def add_repack_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--repack",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="llama.cpp's repacked weight buffers (default: on, off on Intel AMX CPUs; see README)",
    )


def add_session_args(p: argparse.ArgumentParser, with_sampling: bool = True) -> None:
    p.add_argument("model", metavar="MODEL", help="a GGUF file")
    p.add_argument(
        "--n-draft", type=n_draft_arg, default=3, help="draft tokens per iteration, or 'auto' (default 3)"
    )
    p.add_argument("--n-ctx", type=int, default=4096, help="context size per sequence (default 4096)")
    p.add_argument(
        "--rollback",
        choices=("auto", "snapshots", "replay"),
        default="auto",
        help="how hybrid models drop rejected drafts (default: %(default)s; see README)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_repack_arg(p)
    if with_sampling:
        p.add_argument("--max-tokens", type=int, default=512)
        p.add_argument("--temp", type=float, default=0.0, help="0 (the default) is greedy")
        p.add_argument("--seed", type=int, default=None)
