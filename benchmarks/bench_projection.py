"""Roofline projection to another model size, calibrated on a measured run, against a measured run.

The simulator projects a model it never saw by timing every op as its roofline
on the hardware divided by an efficiency, and the efficiencies are calibrated
on a recorded run (``simulator.calibration``). This script checks that chain
on this machine, in one run:

1. Profiles the machine (``asteria-bench profile``'s measurements, or
   --profile FILE).
2. Records SOAP (synchronous) on the default GPT (the calibration run) and on
   a larger GPT (the target: 6 layers, width 256, 8 heads, context 256, about
   6x the parameters and 4x the tokens per step).
3. Calibrates the efficiencies on the first run only, projects the second
   run's model and batch on the profile, simulates its steps, and compares
   with what the second run measured: forward+backward, optimizer hot path,
   one round of refreshes, and the median step. The target's own efficiencies
   are printed beside the calibrated ones: their gap is the error of the
   "same fraction of the roofline at every size" assumption.

    python benchmarks/bench_projection.py            # ~3 minutes on 2 cores
    python benchmarks/bench_projection.py --quick    # seconds, tiny models
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import environment_line, load_average, set_threads
from simulator.calibration import RunShape

CALIBRATION = ["--n-layer", "4", "--n-embd", "128", "--n-head", "4", "--context", "64"]
TARGET = ["--n-layer", "6", "--n-embd", "256", "--n-head", "8", "--context", "256"]
QUICK_CALIBRATION = ["--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--context", "16"]
QUICK_TARGET = ["--n-layer", "2", "--n-embd", "64", "--n-head", "2", "--context", "32"]


def record(out: Path, steps: int, model: list[str], quick: bool) -> Path:
    from asteria_bench.cli import main

    args = ["run", "--optimizer", "soap", "--steps", str(steps), "--out", str(out), "--quiet"]
    args += ["--torch-threads", "1", "--eval-every", str(steps), "--eval-batches", "1"]
    if quick:
        args += ["--batch-size", "4", "--corpus-bytes", "20000", "--precondition-frequency", "3"]
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the run directory's path
            main([*args, *model])
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise SystemExit(f"recording {out.name} failed (exit {exc.code})") from None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--profile", type=Path, default=None, help="this machine's profile (.toml)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    steps = 8 if args.quick else args.steps
    set_threads(1)
    print(environment_line())

    from runtime.probe import measure
    from simulator.calibration import calibrate, run_shape
    from simulator.engine import SimConfig, simulate
    from simulator.profiles import load_profile
    from simulator.projection import Deployment, project
    from simulator.workload import workload_from_trace
    from traces.io import read_trace

    if args.profile is not None:
        profile = load_profile(args.profile)
        source = str(args.profile)
    else:
        from asteria_bench.profile_cmd import to_profile

        profile = to_profile(measure(None, quick=args.quick), "local")
        source = "measured now (GEMM, memory; no disk)"
    print(
        f"profile: {source}; peak {profile.gpu.bf16_dense_flops.value / 1e9:.1f} GFLOP/s,"
        f" memory {profile.gpu.memory_bandwidth.value / 1e9:.1f} GB/s"
    )

    with tempfile.TemporaryDirectory() as root:
        small = CALIBRATION if not args.quick else QUICK_CALIBRATION
        large = TARGET if not args.quick else QUICK_TARGET
        calibration_dir = record(Path(root) / "calibration", steps, small, args.quick)
        target_dir = record(Path(root) / "target", steps, large, args.quick)
        calibration_trace = read_trace(calibration_dir)
        calibration = calibrate(calibration_trace, profile)
        source_run = run_shape(calibration_trace)
        target_trace = read_trace(target_dir)
        own = calibrate(target_trace, profile)
        run = run_shape(target_trace)
        deploy = Deployment(
            optimizer="soap",
            block_size=run.block_size,
            precondition_frequency=int(
                target_trace.metadata.hyperparameters["precondition_frequency"]
            ),
            tokens_per_rank=run.tokens_per_step,
            root_device="device",
            workers=1,
        )
        projected = project(run.shape, profile, deploy, calibration.efficiency).model
        measured = workload_from_trace(target_trace)
        simulated = simulate(projected, SimConfig(steps=steps))
        metrics = pd.read_parquet(target_dir / "metrics.parquet")

    print(
        f"calibration run: {describe(source_run)}; target: {describe(run)}; SOAP sync, {steps} steps each"
    )
    print()
    print("| op | calibrated efficiency | target's own efficiency |")
    print("|----|-----------------------|-------------------------|")
    own_fits = {f.op: f.efficiency for f in own.fits}
    for fit in calibration.fits:
        print(f"| {fit.op} | {fit.efficiency:.3f} | {own_fits.get(fit.op, float('nan')):.3f} |")
    rows = [
        (
            "forward+backward",
            measured.step.forward_ns + measured.step.backward_ns,
            projected.step.forward_ns + projected.step.backward_ns,
        ),
        ("optimizer hot path", measured.hot_ns, projected.hot_ns),
        (
            "refreshes (one round)",
            sum(b.refresh_ns for b in measured.blocks),
            sum(b.refresh_ns for b in projected.blocks),
        ),
        (
            "median step",
            float(np.median(metrics["step_time_ns"].to_numpy()[1:])),
            float(np.median(simulated.step_ns[1:])),
        ),
    ]
    print()
    print("| target figure | measured ms | projected ms | error |")
    print("|---------------|-------------|--------------|-------|")
    for label, m, p in rows:
        error = f"{(p - m) / m:+.1%}" if m else "-"
        print(f"| {label} | {m / 1e6:.2f} | {p / 1e6:.2f} | {error} |")
    print()
    print(f"load average at end: {load_average()}")


def describe(run: RunShape) -> str:
    s = run.shape
    return (
        f"GPT {s.n_layer} layers x width {s.hidden} ({s.parameters():,} parameters),"
        f" {run.tokens_per_step} tokens/step"
    )


if __name__ == "__main__":
    main()
