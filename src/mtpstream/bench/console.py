"""``mtpstream bench`` on a terminal: the summary's tables as rich tables, PASS and
FAIL in colour, progress lines with a dim time stamp. Off a terminal (or with
``NO_COLOR``) the summary is :func:`.report.format_summary`'s plain text, unchanged.

Private to :mod:`mtpstream.bench`.
"""

from __future__ import annotations

import logging
import re
import time
from typing import IO, Any

from .._console import console, styled
from .report import format_summary

__all__ = ["level_cells", "print_summary", "progress_handler"]

LEVEL_HEADER = (
    "n_draft", "tok/s", "min-max", "speedup", "ideal", "effic.", "accept", "tok/it",
    "verify us", "V/plain", "draft us", "flat", "sess MB",
)  # fmt: skip
_TARGET = re.compile(r"^(\s*)\[(PASS|FAIL|n/a )\](.*)$")
_FLAG_STYLE = {"PASS": "bold green", "FAIL": "bold red", "n/a ": "dim"}


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def level_cells(lv: dict[str, Any]) -> list[list[str]]:
    """The cells of a level's table (as :data:`LEVEL_HEADER` names them)."""
    rss = lv.get("session_anon_rss_bytes", {})
    rows = []
    for k, r in lv["rows"].items():
        t = r["tokens_per_sec"]
        mb = rss[k] / 2**20 if rss.get(k) is not None else None
        rows.append(
            [
                k,
                _fmt(t["median"], ".1f"),
                f"{_fmt(t['min'], '.1f')}-{_fmt(t['max'], '.1f')}",
                _fmt(r["speedup"], ".2f"),
                _fmt(r["ideal_speedup"], ".2f"),
                _fmt(r["efficiency"], ".2f"),
                _fmt(r["acceptance_rate"], ".3f"),
                _fmt(r["tokens_per_iter"], ".2f"),
                _fmt(r["verify_batch_us"], ".0f"),
                _fmt(r["verify_over_plain_step"], ".2f"),
                _fmt(r["draft_step_us"], ".0f"),
                _fmt(r["ideal_speedup_flat_verify"], ".2f"),
                _fmt(mb, ".0f"),
            ]
        )
    return rows


def _table(title: str | None, header: list[str], rows: list[list[str]]) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAVY, title_justify="left", title_style="bold")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right", header_style="bold cyan")
    for row in rows:
        table.add_row(*(row + [""] * (len(header) - len(row)))[: len(header)])
    return table


def _markdown_table(lines: list[str]) -> Any:
    """A table we wrote as Markdown (``| a | b |`` lines, the second the separator)."""
    cells = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    body = [row for row in cells[1:] if not all(set(c) <= set("-:") for c in row)]
    return _table(None, cells[0], body)


def _text_line(line: str) -> Any:
    from rich.text import Text

    m = _TARGET.match(line)
    if m is None:
        return Text(line)
    indent, flag, rest = m.groups()
    return Text.assemble(indent, (f"[{flag}]", _FLAG_STYLE[flag]), rest)


def _renderables(result: dict[str, Any]) -> list[Any]:
    """The summary's lines, its tables as rich tables."""
    lines = format_summary(result).splitlines()
    titles = {f"{lv['name']}  (nominal acceptance {lv['nominal_acceptance']}; times in us)": lv
              for lv in result.get("levels") or ()}  # fmt: skip
    out: list[Any] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        lv = titles.get(line)
        if lv is not None and not any(result.get(k) for k in ("chat", "streams", "temps", "upstream_only")):
            out.append(_table(line, list(LEVEL_HEADER), level_cells(lv)))
            i += 2 + len(lv["rows"])  # the title, the header, a line per row
            continue
        if line.startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            out.append(_markdown_table(lines[i:j]))
            i = j
            continue
        out.append(_text_line(line))
        i += 1
    return out


def print_summary(result: dict[str, Any], stream: IO[str]) -> None:
    """The end-of-run summary on ``stream``: rich when it is a terminal, else plain."""
    if not styled(stream):
        print(format_summary(result), file=stream)
        return
    con = console(stream)
    for item in _renderables(result):
        con.print(item)


class _Elapsed(logging.Formatter):
    """A progress line stamped with the seconds since the formatter was made."""

    def __init__(self) -> None:
        super().__init__()
        self.t0 = time.perf_counter()

    def format(self, record: logging.LogRecord) -> str:
        return f"[{time.perf_counter() - self.t0:7.1f}s] {record.getMessage()}"


class _RichProgress(logging.Handler):
    """Progress lines through rich: a dim time stamp, warnings in yellow."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__()
        self.console = console(stream)
        self.t0 = time.perf_counter()

    def emit(self, record: logging.LogRecord) -> None:
        from rich.text import Text

        style = "yellow" if record.levelno >= logging.WARNING else ""
        stamp = f"[{time.perf_counter() - self.t0:7.1f}s] "
        self.console.print(Text.assemble((stamp, "dim"), (record.getMessage(), style)))


def progress_handler(stream: IO[str]) -> logging.Handler:
    """The handler of the bench's progress lines on ``stream``."""
    if styled(stream):
        return _RichProgress(stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_Elapsed())
    return handler
