"""``asteria-bench compare RUN ...``: one table of the figures that decide, any kind of run."""

from __future__ import annotations

import math
import textwrap
from enum import Enum
from pathlib import Path

from asteria_bench.errors import UserError
from reports.compare import (
    COLUMN_KEYS,
    COLUMNS,
    TABLE_WIDTH,
    Column,
    compare,
    csv_text,
    fitting_columns,
    json_text,
    markdown_table,
    text_table,
)
from reports.runs import LoadedRun, load_runs
from traces.io import TraceError


class CompareFormat(str, Enum):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"
    MD = "md"


def read_runs(paths: list[Path], option: str = "RUN") -> list[LoadedRun]:
    """The runs, or one line naming the one that cannot be read."""
    if not paths:
        raise UserError(f"{option}: expected at least one run directory")
    try:
        runs = load_runs(paths)
    except TraceError as exc:
        raise UserError(f"{option}: {exc}") from None
    for run in runs:
        if len(run.metrics) == 0:
            raise UserError(f"{option}: {run.path}: the run has no finished step to compare")
    return runs


def pick_columns(text: str) -> list[Column]:
    """``--columns a,b``: the named columns, in the order given; ``run`` is always first."""
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in COLUMN_KEYS]
    if unknown or not keys:
        raise UserError(
            f"--columns: unknown column {unknown[0]!r}; expected a comma-separated list of "
            + ", ".join(COLUMN_KEYS)
            if unknown
            else "--columns: expected at least one column name"
        )
    by_key = {c.key: c for c in COLUMNS}
    ordered = ["run", *(k for k in dict.fromkeys(keys) if k != "run")]
    return [by_key[k] for k in ordered]


def compare_command(
    runs: list[Path],
    *,
    target_loss: float | None,
    columns: str | None,
    wide: bool,
    fmt: str,
) -> None:
    try:
        output = CompareFormat(fmt.strip().lower())
    except ValueError:
        choices = ", ".join(f.value for f in CompareFormat)
        raise UserError(f"--format: expected one of {choices}, got {fmt!r}") from None
    if target_loss is not None and not math.isfinite(target_loss):
        raise UserError(f"--target-loss: expected a finite loss, got {target_loss}")
    chosen = pick_columns(columns) if columns is not None else None
    comparison = compare(read_runs(runs), target_loss)
    rows = comparison.rows
    if output is CompareFormat.CSV:
        print(csv_text(rows, chosen or list(COLUMNS)), end="")
        return
    if output is CompareFormat.JSON:
        print(json_text(comparison, chosen or list(COLUMNS)), end="")
        return
    left_out: list[str] = []
    if chosen is None:
        chosen, left_out = (list(COLUMNS), []) if wide else fitting_columns(rows, TABLE_WIDTH)
    notes = comparison.notes()
    if left_out:
        notes.append(f"Left out to fit {TABLE_WIDTH} columns: {', '.join(left_out)} (--wide).")
    if output is CompareFormat.MD:
        print(markdown_table(rows, chosen))
        print()
        print("\n".join(notes))
        return
    print(text_table(rows, chosen))
    print()
    print("\n".join(textwrap.fill(note, TABLE_WIDTH) for note in notes))
