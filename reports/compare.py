"""``asteria-bench compare``: the figures that decide between runs, one row a run.

Runs of any kind (measured, simulated, replayed, imported) are aligned by
step: each is cut to the number of steps every run has, so a 60-step
measurement and a 200-step projection are compared on their first 60 steps. Every figure comes from
the trace (``reports.runs``), none from a file a run may lack.

The terminal table fits ``TABLE_WIDTH`` columns: the columns are taken in
the order of ``PRIORITY`` (the ones that decide first) while they fit, and
the table says which it left out. ``--columns`` picks, ``--wide`` shows all.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from reports.facts import LINKS, link_bytes, peak_device_bytes, staleness
from reports.runs import LoadedRun, aligned, common_steps
from traces.io import TraceError

TABLE_WIDTH = 100
SPIKE_FACTOR = 1.5
"""A spike is a step at least this many times the run's median step."""


@dataclass(frozen=True)
class RunRow:
    """One run's figures over the aligned steps (NaN: the trace does not hold it)."""

    run: str
    kind: str
    optimizer: str
    staleness: str
    placement: str
    steps: int
    median_step_ms: float
    p99_step_ms: float
    max_step_ms: float
    overhead_pct: float  # mean optimizer time / mean forward+backward, in %
    spikes: int
    wait_ms: float  # the training thread waiting (late refreshes, copies), all steps
    wait_steps: int
    staleness_mean: float
    staleness_max: float
    peak_device_mib: float  # optimizer state resident on the device, at its peak
    h2d_mb_per_step: float
    d2h_mb_per_step: float
    nvme_mb_per_step: float
    network_mb_per_step: float
    link_mb_per_step: float  # the four links together
    final_val_loss: float
    best_val_loss: float
    time_to_target_s: float  # training time (sum of step times) to the first eval at the target


@dataclass(frozen=True)
class Column:
    key: str  # a RunRow field
    header: str
    fmt: Callable[[Any], str]
    numeric: bool = True


def _num(digits: int) -> Callable[[Any], str]:
    def fmt(value: Any) -> str:
        if isinstance(value, float) and math.isnan(value):
            return "-"
        return f"{value:,.{digits}f}"

    return fmt


def _text(value: Any) -> str:
    return str(value)


COLUMNS = (
    Column("run", "run", _text, numeric=False),
    Column("kind", "kind", _text, numeric=False),
    Column("optimizer", "optimizer", _text, numeric=False),
    Column("staleness", "staleness", _text, numeric=False),
    Column("placement", "placement", _text, numeric=False),
    Column("steps", "steps", _num(0)),
    Column("median_step_ms", "median ms", _num(2)),
    Column("p99_step_ms", "p99 ms", _num(2)),
    Column("max_step_ms", "max ms", _num(2)),
    Column("overhead_pct", "opt ovh %", _num(1)),
    Column("spikes", "spikes", _num(0)),
    Column("wait_ms", "wait ms", _num(1)),
    Column("wait_steps", "wait steps", _num(0)),
    Column("staleness_mean", "τ mean", _num(2)),
    Column("staleness_max", "τ max", _num(0)),
    Column("peak_device_mib", "dev MiB", _num(1)),
    Column("h2d_mb_per_step", "h2d MB/st", _num(2)),
    Column("d2h_mb_per_step", "d2h MB/st", _num(2)),
    Column("nvme_mb_per_step", "nvme MB/st", _num(2)),
    Column("network_mb_per_step", "net MB/st", _num(2)),
    Column("link_mb_per_step", "link MB/st", _num(2)),
    Column("final_val_loss", "val final", _num(4)),
    Column("best_val_loss", "val best", _num(4)),
    Column("time_to_target_s", "to target s", _num(2)),
)
COLUMN_KEYS = tuple(c.key for c in COLUMNS)

PRIORITY = (
    "run",
    "median_step_ms",
    "p99_step_ms",
    "overhead_pct",
    "time_to_target_s",
    "best_val_loss",
    "wait_ms",
    "staleness_max",
    "peak_device_mib",
    "link_mb_per_step",
    "spikes",
    "max_step_ms",
    "staleness",
    "placement",
    "kind",
    "staleness_mean",
    "final_val_loss",
)
"""The default table's columns, the deciding ones first; they are shown in ``COLUMNS`` order."""


def default_target(runs: list[LoadedRun]) -> float | None:
    """The best validation loss of the run that did worst: a loss every evaluated run reached."""
    bests = [
        float(r.metrics["val_loss"].min()) for r in runs if r.metrics["val_loss"].notna().any()
    ]
    return max(bests) if bests else None


def _time_to_target(metrics: Any, target: float | None) -> float:
    if target is None:
        return math.nan
    reached = metrics.index[metrics["val_loss"] <= target]
    if len(reached) == 0:
        return math.nan
    elapsed = metrics["step_time_ns"].cumsum()
    return float(elapsed.loc[reached[0]]) / 1e9


def run_row(run: LoadedRun, target: float | None) -> RunRow:
    m = run.metrics
    step_ms = m["step_time_ns"].to_numpy(dtype=np.float64) / 1e6
    compute = float((m["forward_ns"] + m["backward_ns"]).mean())
    median = float(np.median(step_ms))
    tau = staleness(run.trace.counters)
    peak = peak_device_bytes(run.trace.counters)
    steps = len(m)
    per_step = {k: v / 1e6 / steps for k, v in link_bytes(run.trace.spans).items()}
    val = m["val_loss"].dropna()
    return RunRow(
        run=run.label,
        kind=run.kind,
        optimizer=run.trace.metadata.optimizer,
        staleness=run.policy("staleness"),
        placement=run.policy("placement"),
        steps=steps,
        median_step_ms=median,
        p99_step_ms=float(np.percentile(step_ms, 99)),
        max_step_ms=float(step_ms.max()),
        overhead_pct=100 * float(m["optimizer_ns"].mean()) / compute if compute else math.nan,
        spikes=int((step_ms >= SPIKE_FACTOR * median).sum()),
        wait_ms=float(m["wait_ns"].sum()) / 1e6,
        wait_steps=int((m["wait_ns"] > 0).sum()),
        staleness_mean=tau.mean if tau else math.nan,
        staleness_max=tau.max if tau else math.nan,
        peak_device_mib=peak / 2**20 if peak is not None else math.nan,
        h2d_mb_per_step=per_step["h2d"],
        d2h_mb_per_step=per_step["d2h"],
        nvme_mb_per_step=per_step["nvme"],
        network_mb_per_step=per_step["network"],
        link_mb_per_step=sum(per_step[k] for k in LINKS),
        final_val_loss=float(val.iloc[-1]) if len(val) else math.nan,
        best_val_loss=float(val.min()) if len(val) else math.nan,
        time_to_target_s=_time_to_target(m, target),
    )


@dataclass(frozen=True)
class Comparison:
    rows: list[RunRow]
    steps: int  # each run's first this many steps are compared
    cut: bool  # some run had more steps than that
    target_loss: float | None
    target_given: bool

    def notes(self) -> list[str]:
        lines = []
        if self.cut:
            lines.append(
                f"Runs aligned on their first {self.steps} steps, the count every run has."
            )
        if self.target_loss is not None:
            source = "" if self.target_given else " (the worst run's best; --target-loss sets it)"
            lines.append(
                f"Target: validation loss <= {self.target_loss:.4f}{source};"
                " time = sum of step times until the first evaluation at or below it."
            )
        lines.append(
            f"Spikes: steps >= {SPIKE_FACTOR}x the run's median; opt ovh: mean optimizer time"
            " over mean forward+backward; τ: staleness of installed refreshes, in steps."
        )
        return lines


def compare(runs: list[LoadedRun], target_loss: float | None = None) -> Comparison:
    count = common_steps(runs)
    if count == 0:
        empty = next(r for r in runs if len(r.metrics) == 0)
        raise TraceError(f"{empty.path}: the run has no finished step to compare")
    cut = any(len(r.metrics) > count for r in runs)
    same = [aligned(r, count) for r in runs]
    target = target_loss if target_loss is not None else default_target(same)
    rows = [run_row(r, target) for r in same]
    return Comparison(rows, count, cut, target, target_loss is not None)


# --- output -------------------------------------------------------------------

GAP = 2


def _cells(rows: list[RunRow], columns: list[Column]) -> list[list[str]]:
    return [[c.fmt(getattr(row, c.key)) for c in columns] for row in rows]


def _width(rows: list[RunRow], columns: list[Column]) -> int:
    cells = _cells(rows, columns)
    widths = [max(len(c.header), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    return sum(widths) + GAP * (len(columns) - 1)


def _informative(rows: list[RunRow], column: Column) -> bool:
    """A column worth a place: not missing everywhere (a dash or zero in every row)."""
    texts = {column.fmt(getattr(row, column.key)) for row in rows}
    return column.key == "run" or bool(texts - {"-", "0", "0.00", "0.0"})


def fitting_columns(rows: list[RunRow], width: int = TABLE_WIDTH) -> tuple[list[Column], list[str]]:
    """The default columns that fit ``width``, and the keys of those that did not."""
    by_key = {c.key: c for c in COLUMNS}
    chosen: list[str] = []
    left_out: list[str] = []
    for key in PRIORITY:
        if not _informative(rows, by_key[key]):
            continue
        trial = [c for c in COLUMNS if c.key in (*chosen, key)]
        if _width(rows, trial) <= width:
            chosen.append(key)
        else:
            left_out.append(key)
    return [c for c in COLUMNS if c.key in chosen], left_out


def text_table(rows: list[RunRow], columns: list[Column]) -> str:
    """Plain aligned text: numbers right-aligned, nothing cut, one line a run."""
    cells = _cells(rows, columns)
    widths = [max(len(c.header), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(w) if c.numeric else v.ljust(w)
            for v, w, c in zip(values, widths, columns, strict=True)
        ]
        return (" " * GAP).join(parts).rstrip()

    rule = (" " * GAP).join("-" * w for w in widths)
    return "\n".join([line([c.header for c in columns]), rule, *(line(r) for r in cells)])


def markdown_table(rows: list[RunRow], columns: list[Column]) -> str:
    head = "| " + " | ".join(c.header for c in columns) + " |"
    rule = "|" + "|".join("---:" if c.numeric else "---" for c in columns) + "|"
    body = ["| " + " | ".join(r) + " |" for r in _cells(rows, columns)]
    return "\n".join([head, rule, *body])


def csv_text(rows: list[RunRow], columns: list[Column]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([c.key for c in columns])
    for row in rows:
        writer.writerow(["" if _missing(v) else v for v in (getattr(row, c.key) for c in columns)])
    return out.getvalue()


def _missing(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def json_text(comparison: Comparison, columns: list[Column]) -> str:
    keys = [c.key for c in columns]
    runs = [
        {k: (None if _missing(v) else v) for k, v in asdict(row).items() if k in keys}
        for row in comparison.rows
    ]
    document = {
        "aligned_steps": comparison.steps,
        "target_loss": comparison.target_loss,
        "spike_factor": SPIKE_FACTOR,
        "runs": runs,
    }
    return json.dumps(document, indent=2, allow_nan=False) + "\n"
