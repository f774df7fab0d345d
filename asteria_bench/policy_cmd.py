"""``replay RUN --staleness POLICY``: a run's workload under another refresh policy.

Prints the measured figures, the run simulated as it ran, and the same
workload under the new policy (``simulator.policy_whatif``); the change is
read between the two simulations, so the model's own error cancels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from asteria_bench.errors import UserError
from asteria_bench.tables import Column, OutputFormat, ResultTable, Row, Show, emit
from simulator.policy_whatif import PolicyChange, PolicyWhatIf, policy_whatif
from simulator.workload import WorkloadError
from traces.io import TraceError

_FIELDS = (
    ("median step", "median_ms", "{:.2f} ms"),
    ("p99 step", "p99_ms", "{:.2f} ms"),
    ("visible optimizer overhead", "overhead", "{:.1%}"),
)


def _cell(key: str) -> Any:
    def text(row: Row) -> str:
        value = row[key]
        return "-" if value is None or value != value else row["fmt"].format(value)

    return text


def _change(row: Row) -> str:
    value = row["change"]
    return "-" if value is None or value != value else f"{value:+.1%}"


COLUMNS = (
    Column("figure", "figure", numeric=False),
    Column("field", "field", show=Show.NEVER),
    Column("measured", "measured", cell=_cell("measured")),
    Column("simulated_as_run", "simulated as run", cell=_cell("simulated_as_run")),
    Column("projected", "projected", cell=_cell("projected")),
    Column("change", "change", cell=_change),
    Column("fmt", "", show=Show.NEVER, data=False),
)


def whatif_table(w: PolicyWhatIf, run_dir: Path) -> ResultTable:
    rows: list[Row] = []
    for label, field, fmt in _FIELDS:
        before, after = getattr(w.as_run, field), getattr(w.changed, field)
        rows.append(
            {
                "figure": label,
                "field": field,
                "measured": getattr(w.measured, field),
                "simulated_as_run": before,
                "projected": after,
                "change": (after - before) / before if before else None,
                "fmt": fmt,
            }
        )
    before, after = w.as_run_wait_ms, w.changed_wait_ms
    rows.append(
        {
            "figure": "wait for refreshes per step",
            "field": "wait_ms_per_step",
            "measured": None,
            "simulated_as_run": before,
            "projected": after,
            "change": (after - before) / before if before else None,
            "fmt": "{:.2f} ms",
        }
    )
    title = f"{run_dir} under {w.change.describe()}"
    notes = (
        "change: projected over simulated as run (the same workload model, so its own error"
        " cancels). Refresh jobs take the trace's refresh time divided by --worker-speed.",
    )
    return ResultTable(title, COLUMNS, rows, notes=notes)


def policy_command(
    run_dir: Path,
    change: PolicyChange,
    fmt: OutputFormat,
    wide: bool,
) -> None:
    from runtime.policies.staleness import parse_staleness

    if not (run_dir / "metrics.parquet").is_file():
        raise UserError(f"RUN_DIR: {run_dir} is not a finished run directory (no metrics.parquet)")
    try:
        parse_staleness(change.staleness)
    except ValueError:
        raise UserError(
            f"--staleness: expected sync, bounded:TAU or adaptive:TAU_MAX, got {change.staleness!r}"
        ) from None
    if change.workers < 1:
        raise UserError(f"--workers: expected a positive integer, got {change.workers}")
    if change.root_device not in ("host", "device"):
        raise UserError(f"--root-device: expected host or device, got {change.root_device!r}")
    if not change.worker_speed > 0 or change.worker_speed == float("inf"):
        raise UserError(f"--worker-speed: expected a positive number, got {change.worker_speed}")
    try:
        result = policy_whatif(run_dir, change)
    except (TraceError, WorkloadError, ValueError) as exc:
        raise UserError(f"RUN_DIR: {exc}") from None
    emit([whatif_table(result, run_dir)], fmt, wide=wide)
