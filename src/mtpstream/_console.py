"""The command line's look: rich tables, colour and the load progress bar on a
terminal; plain text (no escape codes) when the stream is not a terminal, ``NO_COLOR``
is set or ``TERM=dumb``, so logs, pipes and tests read what they always read.
``FORCE_COLOR`` asks for the rich output on any stream."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import IO, Any

__all__ = ["Field", "console", "print_fields", "progress_bar", "styled"]

# (label, value): one line of a key-value listing (``info``, the ``serve`` banner)
Field = tuple[str, str]


def styled(stream: IO[str]) -> bool:
    """True when ``stream`` gets rich output: ``NO_COLOR`` (any non-empty value) says no,
    then ``FORCE_COLOR`` says yes, then ``TERM=dumb`` says no, else a terminal says yes."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    if os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def console(stream: IO[str]) -> Any:
    """A ``rich.console.Console`` writing to ``stream`` (call it when :func:`styled`)."""
    from rich.console import Console

    return Console(file=stream, force_terminal=True, highlight=False, soft_wrap=False)


def print_fields(fields: Sequence[Field], stream: IO[str] | None = None, title: str | None = None) -> None:
    """``fields`` as a two-column table: a rich one when :func:`styled`, else one
    ``label value`` line each, the values aligned at column 15 (a multi-line value's
    further lines aligned under its first)."""
    out = stream if stream is not None else sys.stdout
    if not styled(out):
        if title:
            print(title, file=out)
        for label, value in fields:
            first, *rest = value.split("\n")
            print(f"{label:<14} {first}".rstrip(), file=out)
            for line in rest:
                print(f"{'':<14} {line}", file=out)
        out.flush()
        return
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.ROUNDED, show_header=False, title_justify="left", title_style="bold")
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column(overflow="fold")
    for label, value in fields:
        table.add_row(label, value)
    console(out).print(table)


def progress_bar(label: str) -> tuple[Callable[[float], bool], Callable[[], None]]:
    """A load progress callback (``p`` in 0..1, returns True: go on) and the function
    that ends the bar; on stderr, rich when :func:`styled`, else ``label [###   ] pct%``
    (on a non-terminal only 0% and 100%, so a log gets two lines, not a hundred)."""
    if styled(sys.stderr):
        return _rich_bar(label)
    state = {"shown": -1}
    tty = sys.stderr.isatty()

    def progress(p: float) -> bool:
        pct = int(p * 100)
        if pct != state["shown"] and (tty or pct in (0, 100)):
            state["shown"] = pct
            bar = "#" * (pct // 4)
            sys.stderr.write(f"\r{label} [{bar:<25}] {pct:3d}%")
            sys.stderr.flush()
        return True

    def done() -> None:
        sys.stderr.write("\n")

    return progress, done


def _rich_bar(label: str) -> tuple[Callable[[float], bool], Callable[[], None]]:
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    # no refresh thread: llama.cpp calls back from the loading thread; each new percent
    # redraws the bar there
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console(sys.stderr),
        auto_refresh=False,
    )
    task = bar.add_task(label, total=100)
    state = {"shown": -1}
    bar.start()

    def progress(p: float) -> bool:
        pct = int(p * 100)
        if pct != state["shown"]:
            state["shown"] = pct
            bar.update(task, completed=pct)
            bar.refresh()
        return True

    return progress, bar.stop
