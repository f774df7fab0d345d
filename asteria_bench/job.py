"""One ``asteria-bench run``: stage a run directory, train with progress, write it out.

Output files (all under the run directory):
``config.json`` (the full resolved configuration), ``trace/`` (schema in
``traces/SCHEMA.md``, plus ``trace.perfetto.json``), ``metrics.parquet`` (one
row per step) and ``summary.md``. They are written into ``<out>.incomplete/``
and the folder is renamed only when all are in place.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from asteria_bench.checkpointing import (
    CheckpointPlan,
    Interrupted,
    StopRequest,
    checkpoint_folder,
)
from asteria_bench.config import RunConfig
from asteria_bench.errors import UserError
from asteria_bench.rundir import RunDirectory
from asteria_bench.train import StepMetrics, TrainResult, TrainStart, train
from reports.derive import write_derived
from reports.ranks import RANKS_DIRNAME
from runtime.checkpoint import CheckpointManager
from runtime.distributed import DistContext, DistError
from runtime.spill.errors import SpillError
from traces.atomic import atomic_write_text
from traces.io import write_trace
from traces.recorder import Recorder
from traces.schema import RunMetadata
from traces.stream import TraceStream

SCHEDULE_FILENAME = "staleness_schedule.json"
"""An adaptive run's τ choices; rerun with ``--staleness replay:<run>/staleness_schedule.json``."""


def default_out(config: RunConfig) -> Path:
    """``runs/<optimizer>-s<seed>-<time>``; a second run started within the same second
    (or beside an unfinished one of that name) gets ``-2``, ``-3``, ... instead of a refusal."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{config.optim.name}-s{config.train.seed}-{stamp}"
    out, n = base, 1
    while out.exists() or out.with_name(out.name + ".incomplete").exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def build_metadata(
    config: RunConfig,
    result: TrainResult | TrainStart,
    run_id: str,
    dist: DistContext | None = None,
) -> RunMetadata:
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
        config=resolved(config, result),
        rank=0 if dist is None else dist.rank,
        world_size=1 if dist is None else dist.world_size,
    )


def resolved(config: RunConfig, run: TrainResult | TrainStart) -> dict[str, Any]:
    """The run's full configuration as used (``config.json``, the trace's metadata)."""
    from asteria_bench.config import resolved_config

    kind = run.device.split(":")[0]  # "cuda:0" ran as --device cuda
    return resolved_config(
        config, device=kind, torch_threads=run.torch_threads, stagger=run.stagger
    )


def _write_trace_of(
    folder: Path, metadata: RunMetadata, result: TrainResult, stream: TraceStream | None
) -> None:
    """Consolidate a streamed trace, or write an in-memory one (runs made by ``train`` alone)."""
    if stream is not None:
        stream.finish(result.recorder, metadata)
    else:
        write_trace(folder, metadata, result.recorder.spans, result.recorder.counters)


def trace_folder(staging: Path, dist: DistContext | None) -> Path:
    """Where a rank's trace lives: ``trace/`` for rank 0, ``ranks/<r>/trace/`` for the others."""
    if dist is None or dist.is_leader:
        return staging
    return staging / RANKS_DIRNAME / str(dist.rank)


def write_rank_trace(
    staging: Path,
    config: RunConfig,
    result: TrainResult,
    run_id: str,
    dist: DistContext,
    stream: TraceStream | None = None,
) -> None:
    """A non-leader rank's trace, beside the leader's ``trace/``."""
    metadata = build_metadata(config, result, run_id, dist)
    folder = trace_folder(staging, dist)
    folder.mkdir(parents=True, exist_ok=True)
    _write_trace_of(folder, metadata, result, stream)


def write_run(
    staging: Path,
    config: RunConfig,
    result: TrainResult,
    run_id: str,
    dist: DistContext | None = None,
    stream: TraceStream | None = None,
) -> None:
    atomic_write_text(
        staging / "config.json",
        json.dumps(resolved(config, result), indent=2, sort_keys=True) + "\n",
    )
    metadata = build_metadata(config, result, run_id, dist)
    if result.staleness_schedule:
        from runtime.policies.staleness import schedule_to_json

        atomic_write_text(staging / SCHEDULE_FILENAME, schedule_to_json(result.staleness_schedule))
    _write_trace_of(staging, metadata, result, stream)
    note = f"Stopped early: {result.stopped_early}." if result.stopped_early else None
    write_derived(staging, note=note)  # metrics.parquet, summary.md, Perfetto: from the trace


class Terminated(BaseException):
    """SIGTERM arrived (torchrun stopping the other ranks of a failed run, a scheduler, kill)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(f"terminated by signal {signum}")


def run_job(
    config: RunConfig,
    *,
    out: Path | None,
    overwrite: bool,
    quiet: bool,
    resume: Path | None = None,
) -> None:
    """Train and write the run directory; under torchrun, every rank calls this.

    Rank 0 (the leader) owns the run directory: it stages it, shares its path
    through the rendezvous store, and writes every shared file once each rank
    has written its own trace under ``ranks/<r>/``. A failure on any rank
    leaves the folder ``*.incomplete``, never one that looks finished.

    With ``resume`` (an unfinished run's folder) the run continues in that
    folder from its newest good checkpoint, with the configuration it saved.
    """
    dist = start_distributed(config)
    leader = dist is None or dist.is_leader
    if resume is not None:
        out = RunDirectory.final_name(resume)
    out = out if out is not None else default_out(config)
    if dist is not None:
        out = Path(dist.share("out", str(out)))
    rundir = _leader_run_directory(out, overwrite, dist, resume) if leader else None
    console = Console(stderr=True, quiet=quiet or not leader)
    stop = StopRequest()
    previous = signal.getsignal(signal.SIGTERM)  # put back once the run is over
    if dist is None:
        stop.install()  # SIGTERM / Ctrl-C: finish the step, checkpoint, then stop
    else:  # torchrun tears a failed job down with SIGTERM: stop at once (Ctrl-C checkpoints)
        signal.signal(signal.SIGTERM, _raise_terminated)
        stop.install_sigint()
    staging: Path | None = None
    rows: list[StepMetrics] = []
    recorder = Recorder(enabled=True)
    stream: TraceStream | None = None
    try:
        if rundir is not None:
            staging = rundir.create() if resume is None else rundir.reopen()
        if dist is not None:
            shared = dist.share("staging", str(staging) if staging else "")
            if shared.startswith("!"):  # the leader refused --out; say what it said
                raise UserError(shared[1:])
            staging = Path(shared)
        assert staging is not None
        stream = TraceStream(trace_folder(staging, dist))
        run_stream = stream

        def started(info: TrainStart) -> None:
            run_stream.begin(build_metadata(config, info, out.name, dist))
            if leader:  # written now, so that an unfinished run can be resumed
                atomic_write_text(
                    run_staging / "config.json",
                    json.dumps(resolved(config, info), indent=2, sort_keys=True) + "\n",
                )

        run_staging = staging
        plan = CheckpointPlan(
            checkpoint_folder(staging),
            every=config.train.checkpoint_every,
            keep=config.train.keep_checkpoints,
            resume=resume is not None,
        )
        result = _train_with_progress(
            config, console, quiet or not leader, rows, dist, recorder, stream, started, plan, stop
        )
        if dist is not None and not leader:
            write_rank_trace(staging, config, result, out.name, dist, stream)
        if dist is not None:
            dist.barrier()  # every rank's trace is in place
        if leader:
            write_run(staging, config, result, out.name, dist, stream)
        if result.stopped_early:
            if rundir is not None:
                rundir.mark_incomplete(f"stopped early: {result.stopped_early}")
            print(
                f"asteria-bench: run stopped early ({result.stopped_early}); see {staging}",
                file=sys.stderr,
            )
            raise SystemExit(1)
    except Interrupted as exc:
        _keep_trace(stream, recorder)
        how = (
            f"resume with: asteria-bench run --resume {staging}"
            if exc.path is not None
            else "no checkpoint could be written"
        )
        if rundir is not None:
            rundir.mark_incomplete(f"interrupted by {exc.signal_name} after step {exc.step}; {how}")
        if leader:
            print(
                f"asteria-bench: interrupted by {exc.signal_name} after step {exc.step}; {how}",
                file=sys.stderr,
            )
        raise SystemExit(128 + signal.Signals[exc.signal_name].value) from None
    except KeyboardInterrupt:
        _keep_trace(stream, recorder)
        if rundir is not None:
            rundir.mark_incomplete(f"interrupted after {len(rows)} of {config.train.steps} steps")
        raise
    except BaseException as exc:
        _keep_trace(stream, recorder)
        if rundir is not None and isinstance(exc, UserError) and not rows and resume is None:
            rundir.discard()  # refused input before any step: leave nothing behind
        elif rundir is not None and not isinstance(exc, SystemExit):
            rundir.mark_incomplete(f"failed after {len(rows)} steps: {type(exc).__name__}: {exc}")
        if isinstance(exc, (DistError, Terminated, SpillError)):
            print(f"asteria-bench: {exc}{_resume_hint(staging)}", file=sys.stderr)
            raise SystemExit(1) from None
        raise
    finally:
        stop.restore()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if dist is not None:
            dist.close()
    if rundir is None:
        return
    final = rundir.finish()
    if not quiet and (final / "summary.md").is_file():
        # Markdown as written: no markup, no wrapping at the console's width (a table stays whole).
        console.print(
            (final / "summary.md").read_text(), markup=False, highlight=False, soft_wrap=True
        )
    print(str(final))


def _resume_hint(staging: Path | None) -> str:
    """How to continue a failed run, when it has a checkpoint to continue from."""
    if staging is None or not CheckpointManager(checkpoint_folder(staging)).checkpoints():
        return ""
    return f"; resume with: asteria-bench run --resume {staging}"


def _leader_run_directory(
    out: Path, overwrite: bool, dist: DistContext | None, resume: Path | None = None
) -> RunDirectory:
    """The run directory (rank 0 only); a refused ``--out`` is told to the other ranks too."""
    try:
        if resume is not None:
            return RunDirectory.unfinished(resume)
        return RunDirectory(out, overwrite=overwrite)
    except UserError as exc:
        if dist is not None:
            dist.share("staging", "!" + str(exc))
        raise


def _keep_trace(stream: TraceStream | None, recorder: Recorder) -> None:
    """On the way out of a failed run, flush what the recorder holds: every finished step stays."""
    if stream is None:
        return
    with contextlib.suppress(Exception):
        stream.flush(recorder)


def start_distributed(config: RunConfig) -> DistContext | None:
    """Join torchrun's process group (None outside torchrun); bad settings are one line."""
    from asteria_bench.train import resolve_device
    from runtime.distributed import init_distributed

    r = config.runtime
    device = resolve_device(config.train.device)
    try:
        return init_distributed(
            device_type=device.type, timeout_s=r.dist_timeout, ranks_per_node=r.ranks_per_node
        )
    except ValueError as exc:
        raise UserError(f"--ranks-per-node: {exc}") from None


def _train_with_progress(
    config: RunConfig,
    console: Console,
    quiet: bool,
    rows: list[StepMetrics],
    dist: DistContext | None,
    recorder: Recorder,
    stream: TraceStream,
    started: Callable[[TrainStart], None],
    checkpoints: CheckpointPlan,
    stop: StopRequest,
) -> TrainResult:
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

        return train(
            config,
            progress=on_step,
            dist=dist,
            recorder=recorder,
            stream=stream,
            started=started,
            checkpoints=checkpoints,
            stop=stop,
        )
