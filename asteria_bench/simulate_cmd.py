"""``asteria-bench replay``: the simulator against a measured run, side by side."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from asteria_bench.errors import UserError
from simulator.replay import Fidelity, predict_run, replay_run
from simulator.workload import WorkloadError
from traces.io import TraceError, read_trace, write_trace


def _check_run(path: Path, option: str) -> None:
    if not (path / "metrics.parquet").is_file():
        raise UserError(f"{option}: {path} is not a finished run directory (no metrics.parquet)")


def fidelity_table(fidelity: Fidelity, title: str) -> Table:
    table = Table(title=title)
    for column in ("figure", "measured", "simulated", "error"):
        table.add_column(column, justify="right" if column != "figure" else "left")
    rows = [
        ("median step", "median_ms", "{:.2f} ms"),
        ("p99 step", "p99_ms", "{:.2f} ms"),
        ("visible optimizer overhead", "overhead", "{:.1%}"),
    ]
    for label, field, fmt in rows:
        table.add_row(
            label,
            fmt.format(getattr(fidelity.measured, field)),
            fmt.format(getattr(fidelity.simulated, field)),
            f"{fidelity.error(field):.1%}",
        )
    return table


def replay_command(run_dir: Path, *, calibrate_on: Path | None, out: Path | None) -> None:
    _check_run(run_dir, "RUN_DIR")
    if calibrate_on is not None:
        _check_run(calibrate_on, "--calibrate-on")
    try:
        if calibrate_on is None:
            fidelity, result = replay_run(run_dir)
            title = f"replay of {run_dir}"
        else:
            fidelity, result = predict_run(calibrate_on, run_dir)
            title = f"{run_dir} predicted from {calibrate_on}"
        measured = read_trace(run_dir)
    except (TraceError, WorkloadError) as exc:
        raise UserError(str(exc)) from None
    Console().print(fidelity_table(fidelity, title))
    if out is not None:
        metadata = replace(
            measured.metadata,
            kind="simulated",
            run_id=f"{measured.metadata.run_id}-replay",
            created_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        )
        out.mkdir(parents=True, exist_ok=True)
        write_trace(out, metadata, result.recorder.spans, result.recorder.counters)
        print(str(out))
