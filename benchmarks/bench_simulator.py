"""Simulator fidelity and speed, printed side by side in one run.

1. Records two runs of the default GPT here, with the real runtime: SOAP
   synchronous, and SOAP bounded:4 with one refresh worker (or takes run
   directories given with --runs).
2. Replay: each run simulated on its own measured costs; measured vs
   simulated median / p99 step time and visible optimizer overhead (targets:
   5 %, 10 %, 10 %).
3. Held-out: the model calibrated on the synchronous run only predicts the
   bounded run (target: median within 10 %).
4. Speed: 1000 steps of a 7B model on 8 nodes x 4 GH200 (sync and bounded:4);
   the ratio of simulated to wall time (target: under 60 s of wall time).

    python benchmarks/bench_simulator.py            # ~4 minutes on 2 cores
    python benchmarks/bench_simulator.py --quick    # seconds, tiny runs
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import environment_line, load_average, set_threads
from simulator.replay import Fidelity, predict_run, replay_run
from simulator.whatif import WhatIf, run_whatif


def record(out: Path, steps: int, quick: bool, extra: list[str]) -> Path:
    from asteria_bench.cli import main

    args = [
        "run",
        "--optimizer",
        "soap",
        "--steps",
        str(steps),
        "--out",
        str(out),
        "--quiet",
        "--torch-threads",
        "1",
        "--eval-every",
        str(max(steps, 1)),
    ]
    if quick:
        args += [
            "--n-layer",
            "1",
            "--n-embd",
            "32",
            "--n-head",
            "2",
            "--context",
            "16",
            "--batch-size",
            "4",
            "--corpus-bytes",
            "20000",
            "--eval-batches",
            "1",
        ]
    try:
        main([*args, *extra])
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    return out


def fidelity_rows(name: str, f: Fidelity) -> list[str]:
    rows = []
    for label, field, unit in (
        ("median step", "median_ms", "ms"),
        ("p99 step", "p99_ms", "ms"),
        ("visible optimizer overhead", "overhead", ""),
    ):
        m, s = getattr(f.measured, field), getattr(f.simulated, field)
        fmt = "{:.3f}" if unit == "" else "{:.2f} ms"
        rows.append(
            f"| {name:<28} | {label:<26} | {fmt.format(m):>11} | {fmt.format(s):>11} | {100 * f.error(field):6.1f} % |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=200, help="steps of each recorded run (default 200)"
    )
    parser.add_argument(
        "--runs",
        nargs=2,
        type=Path,
        metavar=("SYNC_RUN", "BOUNDED_RUN"),
        help="use these run directories instead of recording new ones",
    )
    parser.add_argument(
        "--sim-steps", type=int, default=1000, help="steps of the 7B speed test (default 1000)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny runs and a short speed test")
    args = parser.parse_args()
    set_threads(1)
    steps = 20 if args.quick else args.steps
    sim_steps = 50 if args.quick else args.sim_steps
    print(environment_line())
    with tempfile.TemporaryDirectory() as tmp:
        if args.runs:
            sync_run, bounded_run = args.runs
        else:
            print(
                f"recording 2 runs of {steps} steps (SOAP sync; SOAP bounded:4, 1 worker) ...",
                flush=True,
            )
            sync_run = record(Path(tmp) / "sync", steps, args.quick, [])
            bounded_run = record(
                Path(tmp) / "bounded",
                steps,
                args.quick,
                ["--staleness", "bounded:4", "--workers", "1"],
            )
        replay_sync, _ = replay_run(sync_run)
        replay_bounded, _ = replay_run(bounded_run)
        from runtime.probe import worker_interference

        interference = worker_interference(seconds=0.3 if args.quick else 1.0)
        held_out_plain, _ = predict_run(sync_run, bounded_run)
        held_out, _ = predict_run(sync_run, bounded_run, worker_interference=interference)
    print()
    print("Fidelity (targets: replay median 5 %, p99 10 %, overhead 10 %; held-out median 10 %)")
    print(
        "| case                         | figure                     |    measured |   simulated |    error |"
    )
    print(
        "|------------------------------|----------------------------|-------------|-------------|----------|"
    )
    for row in (
        *fidelity_rows("replay, sync", replay_sync),
        *fidelity_rows("replay, bounded:4", replay_bounded),
        *fidelity_rows("held-out, no interference", held_out_plain),
        *fidelity_rows(f"held-out, interference {interference:.2f}", held_out),
    ):
        print(row)
    print()
    print(
        f"Speed: {sim_steps} steps of 7b on 8 nodes x 4 GH200 (target: each under 60 s of wall time)"
    )
    print("| configuration                 | wall s | simulated s | simulated / wall |")
    print("|-------------------------------|--------|-------------|------------------|")
    for staleness, root in (("sync", "device"), ("bounded:4", "host")):
        w = WhatIf(
            hardware="gh200",
            model="7b",
            optimizer="soap",
            staleness=staleness,
            root_device=root,
            nodes=8,
            gpus_per_node=4,
            steps=sim_steps,
        )
        start = time.perf_counter()
        result = run_whatif(w)
        wall = time.perf_counter() - start
        simulated = float(result.simulated.step_ns.sum()) / 1e9
        print(
            f"| soap {staleness:<9} {root:<6} roots   | {wall:6.2f} | {simulated:11.1f} | {simulated / wall:15.0f}x |"
        )
    print(f"\nload average at end {load_average()}")


if __name__ == "__main__":
    main()
