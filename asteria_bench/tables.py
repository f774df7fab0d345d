"""Result tables of the CLI: one definition, printed to fit a terminal or written as data.

A command builds a ``ResultTable`` (a title, its ``Column`` definitions and one
row of raw values per line) and hands it to ``emit`` with the user's
``--format`` and ``--wide``. The terminal form shows the compact columns by
default, so that it fits ``TABLE_WIDTH`` columns without cutting a number;
``--wide`` shows every column. The data forms (CSV, JSON) always carry every
column, with raw numbers rather than the rounded text of the table, so a script
never parses ``12.3 %``. Markdown is the table's text form for notes and issues.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from asteria_bench.errors import UserError

TABLE_WIDTH = 100
"""Columns a default table must fit in (the width of a split terminal or a CI log)."""

WIDE_WIDTH = 240
"""Columns ``--wide`` may use when the output is not a terminal."""


class OutputFormat(str, Enum):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"
    MD = "md"


def parse_format(text: str, option: str = "--format") -> OutputFormat:
    try:
        return OutputFormat(text.strip().lower())
    except ValueError:
        choices = ", ".join(f.value for f in OutputFormat)
        raise UserError(f"{option}: expected one of {choices}, got {text!r}") from None


def _plain(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return str(value)


class Show(str, Enum):
    """When a column is printed (CSV and JSON carry every column with ``data`` set)."""

    ALWAYS = "always"  # in the compact table, unless every value is missing
    VARIES = "varies"  # in the compact table when its values differ between rows
    WIDE = "wide"  # only with --wide
    NEVER = "never"  # data only: CSV and JSON


Row = dict[str, Any]


@dataclass(frozen=True)
class Column:
    """One column: ``key`` names its raw value in CSV and JSON, ``header`` the printed column.

    ``fmt`` turns the raw value into the cell (units, rounding); ``cell``, when
    given, builds the cell from the whole row instead (a value with its flag).
    A column with ``data = False`` is printed only (its figures are in others).
    """

    key: str
    header: str
    fmt: Callable[[Any], str] = _plain
    show: Show = Show.ALWAYS
    numeric: bool = True
    data: bool = True
    cell: Callable[[Row], str] | None = None
    nowrap: bool = False  # cells stay on one line (a number with its unit)

    def text(self, row: Row) -> str:
        return self.cell(row) if self.cell is not None else self.fmt(row.get(self.key))


@dataclass(frozen=True)
class ResultTable:
    title: str
    columns: tuple[Column, ...]
    rows: list[Row] = field(default_factory=list)
    notes: tuple[str, ...] = ()
    """Lines printed under the terminal table (sources, assumptions); not in CSV / JSON."""

    def shown(self, wide: bool) -> tuple[Column, ...]:
        """The printed columns: every one but data-only ones with ``wide``, else the compact set."""
        if wide:
            return tuple(c for c in self.columns if c.show is not Show.NEVER)
        return tuple(c for c in self.columns if self._in_compact(c))

    def _in_compact(self, c: Column) -> bool:
        texts = {c.text(row) for row in self.rows}
        if c.show is Show.ALWAYS:
            return bool(texts - {"-", ""})
        return c.show is Show.VARIES and len(texts) > 1

    def constant(self) -> list[str]:
        """``header value`` of the VARIES columns left out because every row has the same value."""
        shown = self.shown(False)
        same = []
        for c in self.columns:
            if c.show is Show.VARIES and c not in shown and self.rows:
                same.append(f"{c.header} {c.text(self.rows[0])}")
        return same

    def data_columns(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.data)

    def cells(self, wide: bool) -> list[list[str]]:
        shown = self.shown(wide)
        return [[c.text(row) for c in shown] for row in self.rows]

    def heading(self, wide: bool) -> str:
        same = [] if wide else self.constant()
        return self.title + (f" ({', '.join(same)})" if same else "")

    def rich(self, wide: bool = False, width: int = TABLE_WIDTH) -> Table:
        """The terminal table in ``width`` columns: cells wrap between words, no number is cut.

        Column widths are chosen here rather than by rich, whose last resort
        shrinks every column evenly and cuts numbers: each column starts as wide
        as its longest cell and the one with the most room to wrap gives way
        first, one character at a time, never below its longest word (header
        included; in a text column, words past ``_LONG_WORD`` characters such as
        URLs fold). A table whose longest words alone do not fit is printed
        wider than ``width``.
        """
        shown = self.shown(wide)
        cells = self.cells(wide)
        longest, words = self._extents(wide)
        widths = fit_widths(
            longest, words, width - _GAP * (len(shown) - 1), [c.numeric for c in shown]
        )
        table = Table(
            title=self.heading(wide),
            title_justify="left",
            box=box.SIMPLE_HEAD,
            show_edge=False,
            padding=(0, 0, 0, _GAP - 1),
            pad_edge=False,
        )
        for c, w in zip(shown, widths, strict=True):
            table.add_column(
                c.header, justify="right" if c.numeric else "left", overflow="fold", width=w
            )
        for row in cells:
            table.add_row(*row)
        return table

    def _extents(self, wide: bool) -> tuple[list[int], list[int]]:
        """Per printed column: its widest cell, and the least it may get (its longest word)."""
        shown = self.shown(wide)
        cells = self.cells(wide)
        texts = [[c.header, *(row[i] for row in cells)] for i, c in enumerate(shown)]
        longest = [max(len(t) for t in column) for column in texts]
        words = [
            max(len(t) for t in column[1:])
            if c.nowrap and len(column) > 1
            else min(
                max(len(w) for t in column for w in [*t.split(), ""]) or 1,
                10**6 if c.numeric else _LONG_WORD,
            )
            for c, column in zip(shown, texts, strict=True)
        ]
        return longest, words

    def least_width(self, wide: bool = False) -> int:
        """The narrowest terminal the table fits without cutting a word."""
        _, words = self._extents(wide)
        return sum(words) + _GAP * (len(words) - 1)

    def csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        columns = self.data_columns()
        writer.writerow([c.key for c in columns])
        for row in self.rows:
            writer.writerow(["" if _missing(row.get(c.key)) else row.get(c.key) for c in columns])
        return buffer.getvalue()

    def data(self) -> dict[str, Any]:
        """The JSON form: the title and every column of every row (missing values as null)."""
        columns = self.data_columns()
        rows = [{c.key: _json_value(row.get(c.key)) for c in columns} for row in self.rows]
        return {"title": self.title, "rows": rows}

    def markdown(self, wide: bool = False) -> str:
        shown = self.shown(wide)
        lines = [f"**{self.heading(wide)}**", ""]
        lines.append("| " + " | ".join(c.header for c in shown) + " |")
        lines.append("|" + "|".join("---:" if c.numeric else "---" for c in shown) + "|")
        for cells in self.cells(wide):
            lines.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |")
        return "\n".join(lines) + "\n"


_LONG_WORD = 24
"""A text cell's word longer than this (a URL, a path) may be folded across lines."""

_GAP = 2
"""Characters between two columns: one of padding, one of the (blank) column rule."""


def fit_widths(
    longest: Sequence[int], words: Sequence[int], room: int, first: Sequence[bool] = ()
) -> list[int]:
    """Column widths summing to at most ``room``; the column with the most slack gives way.

    ``longest`` is each column's widest cell, ``words`` its longest word, the
    least it may get. Columns flagged in ``first`` (numbers, whose headers wrap
    at no cost) give way before the others. Where the words alone exceed
    ``room``, they are returned.
    """
    widths = [max(a, b) for a, b in zip(longest, words, strict=True)]
    flags = list(first) or [False] * len(widths)
    for phase in (True, False):
        while sum(widths) > room:
            slack = [
                (w - words[i], w, i)
                for i, w in enumerate(widths)
                if w > words[i] and (flags[i] or not phase)
            ]
            if not slack:
                break
            _, _, i = max(slack)
            widths[i] -= 1
    return widths


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def _json_value(value: Any) -> Any:
    if _missing(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def console(wide: bool = False) -> Console:
    """A terminal's own width; ``TABLE_WIDTH`` (``WIDE_WIDTH`` with ``--wide``) when piped."""
    if sys.stdout.isatty():
        return Console()
    return Console(width=WIDE_WIDTH if wide else TABLE_WIDTH)


def emit(
    tables: Sequence[ResultTable], fmt: OutputFormat, *, wide: bool = False, out: Any = None
) -> None:
    """Print ``tables`` on stdout in ``fmt``; data formats get one document for all tables."""
    stream = out if out is not None else sys.stdout
    if fmt is OutputFormat.TABLE:
        term = console(wide) if out is None else Console(file=out, width=TABLE_WIDTH)
        for table in tables:
            # Too many columns for the terminal: print wider (the terminal wraps lines)
            # rather than let rich cut numbers to fit.
            width = max(term.width, table.least_width(wide))
            wider = term if width == term.width else Console(file=term.file, width=width)
            wider.print(table.rich(wide, width))
            for note in table.notes:
                term.print(note, highlight=False, markup=False)
        return
    if fmt is OutputFormat.MD:
        stream.write("\n".join(t.markdown(wide) for t in tables))
        return
    if fmt is OutputFormat.CSV:
        stream.write("\n".join(t.csv() for t in tables))
        return
    documents = [t.data() for t in tables]
    payload = documents[0] if len(documents) == 1 else documents
    stream.write(json.dumps(payload, indent=2, allow_nan=False) + "\n")
