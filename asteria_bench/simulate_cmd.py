"""``asteria-bench replay`` and ``simulate``: the simulator from the command line."""

from __future__ import annotations

import datetime as dt
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
from rich.console import Console

from asteria_bench.errors import UserError
from asteria_bench.outputs import check_out_folder, write_out_folder
from asteria_bench.sim_tables import fidelity_table, simulate_table
from asteria_bench.tables import OutputFormat, emit
from reports.derive import write_derived
from simulator.calibration import Calibration
from simulator.convergence import (
    DEFAULT_FILE,
    ConvergenceError,
    StepsRatio,
    load_ratios,
)
from simulator.replay import predict_run, replay_run
from simulator.whatif import WhatIf, WhatIfResult
from simulator.workload import WorkloadError
from traces.io import TraceError, read_trace, write_trace


def _check_run(path: Path, option: str) -> None:
    if not (path / "metrics.parquet").is_file():
        raise UserError(f"{option}: {path} is not a finished run directory (no metrics.parquet)")


def replay_command(
    run_dir: Path,
    *,
    calibrate_on: Path | None,
    out: Path | None,
    overwrite: bool = False,
    fmt: OutputFormat = OutputFormat.TABLE,
    wide: bool = False,
) -> None:
    _check_run(run_dir, "RUN_DIR")
    check_out_folder(out, overwrite=overwrite)
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
    except (TraceError, WorkloadError, ValueError) as exc:
        raise UserError(str(exc)) from None
    emit([fidelity_table(fidelity, title)], fmt, wide=wide)
    if out is not None:
        metadata = replace(
            measured.metadata,
            kind="simulated",
            run_id=f"{measured.metadata.run_id}-replay",
            created_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        )
        spans, counters = result.recorder.spans, result.recorder.counters

        def write(folder: Path) -> None:
            write_trace(folder, metadata, spans, counters)
            write_derived(folder)

        write_out_folder(out, "replay", write)
        _say(str(out), fmt)


# ------------------------------------------------------------------ simulate
SWEEPABLE = (
    "hardware",
    "model",
    "optimizer",
    "staleness",
    "root_device",
    "nodes",
    "gpus_per_node",
    "steps",
    "block_size",
    "precondition_frequency",
    "tokens_per_rank",
    "workers",
    "placement",
    "device_budget",
    "host_budget",
    "update_mode",
    "seq_len",
    "micro_batch",
    "grad_accum",
    "recompute",
    "precision",
    "data_parallel",
)
SIZES = ("device_budget", "host_budget")
MAX_RANKS = 65536
"""The largest data-parallel job a what-if describes (the projection holds per-rank arrays)."""
MAX_STEPS = 10_000_000
"""More simulated steps than any run would take; beyond it a typo, not a question."""
MAX_SEQ_LEN = 2**24
MAX_MICRO_BATCHES = 2**16
"""Bounds on --seq-len, --micro-batch and --grad-accum: beyond them a typo, not a model."""


def expand_sweep(values: dict[str, str]) -> list[WhatIf]:
    """Comma-separated values of any option become a cartesian sweep."""
    import itertools

    from asteria_bench.config import parse_bytes
    from simulator.whatif import WhatIf

    ints = {
        "nodes",
        "gpus_per_node",
        "steps",
        "precondition_frequency",
        "tokens_per_rank",
        "workers",
        "seq_len",
        "micro_batch",
        "grad_accum",
    }
    axes: list[list[tuple[str, object]]] = []
    for name, text in values.items():
        options: list[tuple[str, object]] = []
        for raw in text.split(","):
            item = raw.strip()
            option = f"--{name.replace('_', '-')}"
            if name in ints or name == "block_size":
                if name == "block_size" and item.lower() == "none":
                    options.append((name, None))
                    continue
                if not item.isdigit() or int(item) < 1:
                    raise UserError(f"{option}: expected positive integers, got {item!r}")
                options.append((name, int(item)))
            elif name in SIZES:
                options.append((name, parse_bytes(item, option)))
            else:
                options.append((name, item))
        axes.append(options)
    return [WhatIf(**dict(combo)) for combo in itertools.product(*axes)]  # type: ignore[arg-type]


def validate_whatif(w: WhatIf) -> None:
    from runtime.policies.placement import parse_placement
    from runtime.policies.staleness import parse_staleness
    from simulator.model_config import ModelConfigError, load_model
    from simulator.profiles import ProfileError, load_profile

    try:
        profile = load_profile(w.hardware)
    except ProfileError as exc:
        raise UserError(f"--hardware: {exc}") from None
    try:
        shape = load_model(w.model)
    except ModelConfigError as exc:
        raise UserError(f"--model: {exc}") from None
    _validate_training(w, shape.context, profile.gpu.fp8_dense_flops is not None, profile.name)
    if w.optimizer not in ("adamw", "shampoo", "soap", "kl-shampoo"):
        raise UserError(
            f"--optimizer: expected adamw, shampoo, soap or kl-shampoo, got {w.optimizer!r}"
        )
    try:
        parse_staleness(w.staleness)
    except ValueError:
        raise UserError(
            f"--staleness: expected sync, bounded:TAU or adaptive:TAU_MAX, got {w.staleness!r}"
        ) from None
    if w.root_device not in ("host", "device"):
        raise UserError(f"--root-device: expected host or device, got {w.root_device!r}")
    if w.nodes * w.gpus_per_node > MAX_RANKS:
        raise UserError(
            f"--nodes/--gpus-per-node: at most {MAX_RANKS} ranks, got {w.nodes} x {w.gpus_per_node}"
        )
    if w.steps > MAX_STEPS:
        raise UserError(f"--steps: at most {MAX_STEPS} simulated steps, got {w.steps}")
    if w.update_mode not in ("sharded", "replicated"):
        raise UserError(f"--update-mode: expected sharded or replicated, got {w.update_mode!r}")
    try:
        parse_placement(w.placement)
    except ValueError:
        raise UserError(
            "--placement: expected device, host, lifecycle, pressure or"
            f" pressure:LOW_MiB:HIGH_MiB, got {w.placement!r}"
        ) from None


def _validate_training(w: WhatIf, context: int, has_fp8: bool, profile: str) -> None:
    """The LLM step's options: sizes in range, names known, tokens cut into whole micro-batches."""
    if w.seq_len is not None and w.seq_len > MAX_SEQ_LEN:
        raise UserError(f"--seq-len: at most {MAX_SEQ_LEN}, got {w.seq_len}")
    for option, value in (("--micro-batch", w.micro_batch), ("--grad-accum", w.grad_accum)):
        if value is not None and value > MAX_MICRO_BATCHES:
            raise UserError(f"{option}: at most {MAX_MICRO_BATCHES}, got {value}")
    choices = {
        "recompute": ("none", "selective", "full"),
        "precision": ("bf16", "fp8"),
        "data_parallel": ("ddp", "zero1", "zero2", "zero3", "fsdp"),
    }
    for name, known in choices.items():
        if getattr(w, name) not in known:
            option = f"--{name.replace('_', '-')}"
            raise UserError(f"{option}: expected {', '.join(known)}, got {getattr(w, name)!r}")
    if w.precision == "fp8" and not has_fp8:
        raise UserError(f"--precision: profile {profile} states no fp8 rate (gpu.fp8_dense_flops)")
    if w.update_mode == "replicated" and w.data_parallel in ("zero2", "zero3", "fsdp"):
        raise UserError(
            f"--update-mode: replicated keeps the whole state on every rank; --data-parallel"
            f" {w.data_parallel} shards it (use ddp or zero1)"
        )
    seq = w.seq_len or context
    if w.micro_batch is None and w.tokens_per_rank % (seq * w.grad_accum):
        raise UserError(
            f"--tokens-per-rank: {w.tokens_per_rank} is not a whole number of micro-batches of"
            f" {seq} tokens x {w.grad_accum} (give --micro-batch, or a multiple)"
        )


def results_frame(results: list[WhatIfResult]) -> pd.DataFrame:
    rows = []
    for r in results:
        row = {name: getattr(r.whatif, name) for name in SWEEPABLE}
        row.update(
            label=r.whatif.describe(),
            median_ms=r.median_ms,
            mean_ms=r.mean_ms,
            p99_ms=r.p99_ms,
            max_ms=r.max_ms,
            overhead=r.overhead,
            wait_ms_per_step=r.wait_ms_per_step,
            state_gib_per_rank=r.state_gib_per_rank,
            peak_device_state_gib=r.peak_device_state_gib,
            device_budget_gib=r.device_gib,
            fits=r.fits,
            memory_gib_per_rank=r.memory.total / 2**30,
            training_device_gib=r.training_device_gib,
            tokens_per_rank=r.tokens_per_step,  # as resolved from --micro-batch
            tokens_per_s_per_gpu=r.tokens_per_s_per_gpu,
            event_steps=r.event_steps,
            link_gb_per_step=r.link_gb_per_step,
            transfer_wait_ms_per_step=r.transfer_wait_ms_per_step,
            worker_utilisation=r.worker_utilisation,
            lower_bound_ms=r.lower_bound_ms,
            publish_gb_per_step=r.projection.publish_bytes_per_step / 1e9,
            allreduce_ms=r.projection.allreduce_ns / 1e6,
        )
        rows.append(row)
    return pd.DataFrame(rows)


def simulate_command(
    values: dict[str, str],
    *,
    scenario: str | None,
    out: Path | None,
    convergence: Path | None = None,
    calibrate_on: Path | None = None,
    calibration_profile: str | None = None,
    overwrite: bool = False,
    fmt: OutputFormat = OutputFormat.TABLE,
    wide: bool = False,
) -> None:
    import time

    from rich.progress import Progress

    from simulator.whatif import SCENARIOS, BudgetError, run_whatif

    if scenario is not None:
        if scenario not in SCENARIOS:
            raise UserError(
                f"--scenario: expected one of {', '.join(sorted(SCENARIOS))}, got {scenario!r}"
            )
        summary, whatifs = SCENARIOS[scenario]
        title = f"scenario {scenario}: {summary}"
    else:
        whatifs = expand_sweep(values)
        title = (
            "simulated what-if"
            if len(whatifs) == 1
            else f"simulated sweep of {len(whatifs)} configurations"
        )
    for w in whatifs:
        validate_whatif(w)
    check_out_folder(out, overwrite=overwrite)
    ratios: list[StepsRatio] = []
    source = convergence if convergence is not None else DEFAULT_FILE
    if convergence is not None or DEFAULT_FILE.exists():
        try:
            ratios = load_ratios(source)
        except ConvergenceError as exc:
            raise UserError(f"--convergence: {exc}") from None
    calibration = _calibration(calibrate_on, calibration_profile)
    efficiency = calibration.efficiency if calibration is not None else None
    results = []
    started = time.perf_counter()
    console = Console(stderr=True)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("simulating", total=len(whatifs))
        for w in whatifs:
            try:
                results.append(run_whatif(w, efficiency))
            except BudgetError as exc:
                raise UserError(f"--device-budget: {exc}") from None
            progress.advance(task)
    wall = time.perf_counter() - started
    simulated_s = sum(float(r.simulated.step_ns.sum()) for r in results) / 1e9
    notes = []
    if ratios:
        notes.append(
            f"Time to target = measured steps ratio ({source.name}: the default GPT on CPU, one seed)"
            " x simulated mean step time; ± is the interpolation error of the loss curves."
            " That the steps ratio carries over to this model size is an assumption."
        )
    if calibration is None:
        efficiencies = (
            "the profiles' [training] efficiencies (forward/backward) and assumed ones"
            " (simulator/projection.py, Efficiency)"
        )
        notes.append(
            "Forward and backward are rooflines at each profile's [training] efficiencies, fitted"
            " to published training throughput (benchmarks/bench_fidelity.py); the optimizer,"
            " refreshes, copies and collectives at assumed ones; --calibrate-on measures them on"
            " a run. Profile numbers marked 'assumed' are estimates."
        )
    else:
        efficiencies = calibration.describe()
        notes.append(
            f"Op times are rooflines divided by efficiencies {efficiencies}; other ops keep their"
            " assumed efficiency. On other hardware each op is assumed to reach the same"
            " fraction of its roofline."
        )
    frame = results_frame(results)
    emit([simulate_table(results, frame, title, ratios, tuple(notes))], fmt, wide=wide)
    _say(
        f"simulated {simulated_s:.1f} s of training in {wall:.1f} s of wall time"
        f" ({simulated_s / wall:.0f}x)",
        fmt,
    )
    if out is not None:
        from asteria_bench.simulated_runs import write_simulated_runs
        from traces.atomic import atomic_write_text

        def write(folder: Path) -> None:
            atomic_write_text(folder / "simulate.csv", frame.to_csv(index=False))
            write_simulated_runs(results, folder, efficiencies)

        write_out_folder(out, "simulate", write)
        _say(f"{out / 'simulate.csv'} and {len(results)} simulated run(s) under {out}", fmt)


def _say(line: str, fmt: OutputFormat) -> None:
    """A status line: on stdout under a table, on stderr when stdout carries data."""
    print(line, file=sys.stdout if fmt is OutputFormat.TABLE else sys.stderr)


def _calibration(run_dir: Path | None, profile: str | None) -> Calibration | None:
    """Efficiencies measured on ``run_dir`` with ``profile``, the machine it ran on."""
    from simulator.calibration import calibrate
    from simulator.profiles import ProfileError, load_profile

    if run_dir is None:
        if profile is not None:
            raise UserError("--calibration-profile: given without --calibrate-on RUN_DIR")
        return None
    _check_run(run_dir, "--calibrate-on")
    if profile is None:
        raise UserError(
            "--calibration-profile: needed with --calibrate-on (the profile of the machine the"
            " run was measured on; `asteria-bench profile` writes one)"
        )
    try:
        machine = load_profile(profile)
    except ProfileError as exc:
        raise UserError(f"--calibration-profile: {exc}") from None
    try:
        return calibrate(read_trace(run_dir), machine)
    except (TraceError, WorkloadError) as exc:
        raise UserError(f"--calibrate-on: {exc}") from None
