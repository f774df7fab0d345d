"""One ``asteria-bench run``: stage a run directory, train with progress, write it out.

Output files (all under the run directory):
``config.json`` (the full resolved configuration), ``trace/`` (schema in
``traces/SCHEMA.md``, plus ``trace.perfetto.json``), ``metrics.parquet`` (one
row per step) and ``summary.md``. They are written into ``<out>.incomplete/``
and the folder is renamed only when all are in place.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from asteria_bench.config import RunConfig
from asteria_bench.rundir import RunDirectory
from asteria_bench.train import STEP_METRIC_COLUMNS, StepMetrics, TrainResult, train
from reports.summary import run_figures, summary_markdown
from traces.atomic import atomic_write_bytes, atomic_write_text
from traces.io import TRACE_DIRNAME, read_trace, write_trace
from traces.perfetto import PERFETTO_FILENAME, export_chrome_trace
from traces.schema import RunMetadata

SCHEDULE_FILENAME = "staleness_schedule.json"
"""An adaptive run's τ choices; rerun with ``--staleness replay:<run>/staleness_schedule.json``."""


def default_out(config: RunConfig) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.optim.name}-s{config.train.seed}-{stamp}"


def metrics_frame(rows: list[StepMetrics]) -> pd.DataFrame:
    frame = pd.DataFrame([asdict(r) for r in rows], columns=list(STEP_METRIC_COLUMNS))
    return frame.astype(
        {
            "step": "int64",
            "loss": "float64",
            "val_loss": "float64",
            "lr": "float64",
            "step_time_ns": "int64",
            "forward_ns": "int64",
            "backward_ns": "int64",
            "optimizer_ns": "int64",
            "refresh_ns": "int64",
            "wait_ns": "int64",
            "transfer_ns": "int64",
            "optimizer_state_bytes": "int64",
        }
    )


def write_metrics(path: Path, frame: pd.DataFrame) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def build_metadata(config: RunConfig, result: TrainResult, run_id: str) -> RunMetadata:
    from asteria_bench import __version__
    from runtime.telemetry import collect_hardware, collect_software, git_revision

    return RunMetadata(
        run_id=run_id,
        kind="measured",
        created_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        hardware=collect_hardware(),
        software=collect_software(__version__),
        optimizer=config.optim.name,
        hyperparameters=result.hyperparameters,
        model=result.model_shape,
        policies=result.policies,
        seed=config.train.seed,
        git_revision=git_revision(Path(__file__).resolve().parent),
        device=result.device,
        config=config.to_dict(),
    )


def staleness_figures(result: TrainResult) -> tuple[float, float, int] | None:
    taus = [c.value for c in result.recorder.counters if c.name == "staleness"]
    if not taus:
        return None
    return (sum(taus) / len(taus), max(taus), len(taus))


def tier_figures(result: TrainResult) -> dict[str, tuple[int, int]] | None:
    series: dict[str, list[float]] = {}
    for c in result.recorder.counters:
        if c.name == "state_bytes" and c.key is not None:
            series.setdefault(c.key, []).append(c.value)
    if len(series) <= 1:
        return None
    return {tier: (int(values[-1]), int(max(values))) for tier, values in series.items()}


def write_run(staging: Path, config: RunConfig, result: TrainResult, run_id: str) -> None:
    atomic_write_text(
        staging / "config.json", json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"
    )
    frame = metrics_frame(result.metrics)
    write_metrics(staging / "metrics.parquet", frame)
    metadata = build_metadata(config, result, run_id)
    if result.staleness_schedule:
        from runtime.policies.staleness import schedule_to_json

        atomic_write_text(staging / SCHEDULE_FILENAME, schedule_to_json(result.staleness_schedule))
    write_trace(staging, metadata, result.recorder.spans, result.recorder.counters)
    export_chrome_trace(read_trace(staging), staging / TRACE_DIRNAME / PERFETTO_FILENAME)
    if not frame.empty:
        figures = run_figures(frame)
        note = f"Stopped early: {result.stopped_early}." if result.stopped_early else None
        text = summary_markdown(
            figures,
            title=f"Run {run_id}",
            optimizer=config.optim.name,
            device=result.device,
            model=result.model_shape,
            policies=result.policies,
            note=note,
            staleness=staleness_figures(result),
            tier_bytes=tier_figures(result),
        )
        atomic_write_text(staging / "summary.md", text)


def run_job(config: RunConfig, *, out: Path | None, overwrite: bool, quiet: bool) -> Path:
    out = out if out is not None else default_out(config)
    rundir = RunDirectory(out, overwrite=overwrite)
    console = Console(stderr=True, quiet=quiet)
    staging = rundir.create()
    rows: list[StepMetrics] = []
    progress = Progress(
        TextColumn("[bold]{task.fields[name]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}  step {task.fields[step_ms]:.1f} ms"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=quiet,
    )
    try:
        with progress:
            task = progress.add_task(
                "train",
                total=config.train.steps,
                name=config.optim.name,
                loss=float("nan"),
                step_ms=0.0,
            )

            def on_step(row: StepMetrics) -> None:
                rows.append(row)
                progress.update(task, advance=1, loss=row.loss, step_ms=row.step_time_ns / 1e6)

            result = train(config, progress=on_step)
        write_run(staging, config, result, out.name)
        if result.stopped_early:
            rundir.mark_incomplete(f"stopped early: {result.stopped_early}")
            print(
                f"asteria-bench: run stopped early ({result.stopped_early}); see {staging}",
                file=sys.stderr,
            )
            raise SystemExit(1)
    except KeyboardInterrupt:
        rundir.mark_incomplete(f"interrupted after {len(rows)} of {config.train.steps} steps")
        raise
    except BaseException as exc:
        if not isinstance(exc, SystemExit):
            rundir.mark_incomplete(f"failed after {len(rows)} steps: {type(exc).__name__}: {exc}")
        raise
    final = rundir.finish()
    if not quiet:
        console.print((final / "summary.md").read_text())
    print(str(final))
    return final
