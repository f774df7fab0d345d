"""Validation loss under bounded staleness τ, relative to the synchronous reference.

Every run is ``asteria_bench.train.train`` on the default workload
(``RunConfig()``: default GPT, embedded corpus, 300 steps, warm-up then cosine
decay) with the optimizer's preset from ``asteria_bench.config.OPTIMIZER_PRESETS``.
For SOAP (and KL-Shampoo or Shampoo with ``--optimizers``) it runs the sync
reference and ``bounded:τ`` for every τ of ``--taus`` (default 2, 4, 8, 16) and
prints the final validation loss relative to sync. Goal: every τ <= 8 within 1%
(no more than 1% above the sync loss).

Bounded staleness installs the refresh of version v at exactly step v + τ
whatever the workers' speed (a late result makes the step wait), so these
losses are deterministic and one run per τ suffices. Asynchronous runs use
``--workers`` refresh threads and staggering as configured by ``--stagger``
(default auto: on for asynchronous policies, off for sync, which is what a user
gets; the stagger of every run is printed).

It also prints a **projected** wall-clock time to AdamW's final validation
loss per run: AdamW runs once in the same script at its own preset learning
rate (each optimizer uses its own preset rate, printed at the top), its final validation
loss is the target, and a run's steps-to-target (first point of its val-loss
curve at or below the target, evaluated every ``--eval-every`` = 10 steps,
linearly interpolated between the two evaluations that bracket it; see
``bench_convergence.steps_to_target``) is multiplied by the run's median step
time (steps after the first ``--drop``). The step times are measured on this
machine under its load at the time; the product is a projection, not a
measured time-to-target.

Run ``python benchmarks/bench_staleness.py --help``; ``--quick`` is a
seconds-long smoke run on a tiny model.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asteria_bench.config import RunConfig
from benchmarks._common import (
    DEFAULT_THREADS,
    environment_line,
    fmt,
    format_table,
    load_average,
    median,
    set_threads,
)
from benchmarks.bench_convergence import steps_to_target
from benchmarks.bench_spikes import (
    Run,
    make_config,
    optimizer_list,
    preset_line,
    run_training,
    thread_split_line,
)

DEFAULT_TAUS = (2, 4, 8, 16)
GOAL_TAU = 8
GOAL_WITHIN = 0.01
"""Every τ <= GOAL_TAU should end no more than 1% above the sync validation loss."""


def median_step_ms(run: Run, drop: int) -> float:
    return median(run.step_ms[drop:])


def projected_s(run: Run, target: float, drop: int) -> tuple[float | None, float | None]:
    """(steps to target, projected seconds = steps x median step time), None if not reached."""
    if not math.isfinite(target):
        return None, None
    steps = steps_to_target(run.curve, target)
    if steps is None:
        return None, None
    return steps, steps * median_step_ms(run, drop) / 1000.0


def staleness_table(
    adamw: Run, groups: dict[str, list[Run]], target: float, drop: int
) -> tuple[str, dict[str, list[tuple[int, float]]]]:
    """The table, and per optimizer the (τ, relative difference vs sync) of its async runs."""
    headers = [
        "optimizer",
        "staleness",
        "stagger",
        "final val loss",
        "ratio vs sync",
        "diff vs sync %",
        "within 1%",
        "median step ms",
        "wait ms total",
        "steps to AdamW's final loss",
        "projected s to target",
    ]
    rows = []
    steps, seconds = projected_s(adamw, target, drop)
    rows.append(
        [
            "adamw",
            "-",
            "-",
            fmt(adamw.final_val_loss, 4),
            "-",
            "-",
            "-",
            fmt(median_step_ms(adamw, drop), 1),
            "-",
            fmt(steps, 1) if steps is not None else "not reached",
            fmt(seconds, 1) if seconds is not None else "n/a",
        ]
    )
    diffs: dict[str, list[tuple[int, float]]] = {}
    for name, runs in groups.items():
        sync = runs[0].final_val_loss
        for run in runs:
            ratio = run.final_val_loss / sync if math.isfinite(sync) else math.nan
            diff = ratio - 1.0
            is_sync = run.staleness == "sync"
            if not is_sync:
                diffs.setdefault(name, []).append((int(run.staleness.split(":")[1]), diff))
            steps, seconds = projected_s(run, target, drop)
            rows.append(
                [
                    name,
                    run.staleness,
                    run.stagger,
                    fmt(run.final_val_loss, 4),
                    fmt(ratio, 4),
                    f"{100 * diff:+.2f}" if math.isfinite(diff) else "n/a",
                    "-" if is_sync else ("yes" if diff <= GOAL_WITHIN else "no"),
                    fmt(median_step_ms(run, drop), 1),
                    fmt(sum(run.wait_ms), 1),
                    fmt(steps, 1) if steps is not None else "not reached",
                    fmt(seconds, 1) if seconds is not None else "n/a",
                ]
            )
    return format_table(headers, rows), diffs


def _tau_list(text: str) -> list[int]:
    try:
        taus = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not taus or any(t < 1 for t in taus):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return sorted(set(taus))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Final validation loss for bounded staleness τ vs the sync reference.",
    )
    parser.add_argument(
        "--optimizers",
        type=optimizer_list,
        default=["soap"],
        help="comma-separated, any of soap, kl-shampoo, shampoo (default soap)",
    )
    parser.add_argument(
        "--taus",
        type=_tau_list,
        default=list(DEFAULT_TAUS),
        help="comma-separated bounded staleness values (default 2,4,8,16)",
    )
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 300)")
    parser.add_argument("--eval-every", type=int, default=None, help="eval interval (default 10)")
    parser.add_argument(
        "--drop",
        type=int,
        default=None,
        help="first steps left out of the median step time (default 10)",
    )
    parser.add_argument(
        "--stagger",
        choices=("auto", "on", "off"),
        default="auto",
        help="stagger blocks' refreshes (default auto: on for async runs, off for sync)",
    )
    parser.add_argument("--workers", type=int, default=1, help="refresh worker threads (default 1)")
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help=f"training thread's torch intra-op threads (default {DEFAULT_THREADS}; 0: torch's default)",
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument(
        "--quick", action="store_true", help="tiny model, 30 steps, eval every 5: a smoke run"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = args.steps or 30
        args.eval_every = args.eval_every or 5
        args.drop = 5 if args.drop is None else args.drop
    args.steps = args.steps or RunConfig().train.steps
    args.eval_every = args.eval_every or 10
    args.drop = 10 if args.drop is None else args.drop
    for name in ("steps", "eval_every", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")
    if not 0 <= args.drop < args.steps:
        parser.error("--drop must be a non-negative integer below --steps")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads or None)  # train() sets the same again per run
    stagger = {"auto": None, "on": True, "off": False}[args.stagger]
    print(environment_line())
    print(thread_split_line(args.threads, args.workers))
    print(
        f"workload: RunConfig() defaults{' (--quick: tiny model)' if args.quick else ' (default GPT)'}"
        f", {args.steps} steps, eval every {args.eval_every}, seed {args.seed}; sync and "
        f"bounded:{{{','.join(map(str, args.taus))}}}, stagger {args.stagger}; one run per "
        f"configuration (bounded staleness is deterministic); median step time over steps "
        f"{args.drop + 1}-{args.steps}"
    )
    print("optimizer presets (asteria_bench.config.OPTIMIZER_PRESETS):")
    for name in ["adamw", *args.optimizers]:
        print(preset_line(name, None))
    print(flush=True)

    plan = [("adamw", "sync")]
    for name in args.optimizers:
        plan += [(name, "sync")] + [(name, f"bounded:{tau}") for tau in args.taus]
    started = time.perf_counter()
    runs: list[Run] = []
    for optimizer, staleness in plan:
        config = make_config(
            optimizer,
            staleness=staleness,
            steps=args.steps,
            threads=args.threads,
            workers=args.workers,
            stagger=stagger,
            eval_every=args.eval_every,
            seed=args.seed,
            quick=args.quick,
        )
        runs.append(run_training(config, f"[{len(runs) + 1}/{len(plan)}]"))
    elapsed = time.perf_counter() - started

    adamw = runs[0]
    target = adamw.final_val_loss
    groups: dict[str, list[Run]] = {}
    for run in runs[1:]:
        groups.setdefault(run.optimizer, []).append(run)
    table, diffs = staleness_table(adamw, groups, target, args.drop)
    print()
    print(
        f"Final validation loss after {args.steps} steps, relative to sync; target for the "
        f"projection = AdamW's final val loss {fmt(target, 4)} (AdamW at its preset lr)"
    )
    print(table)
    print(
        "projected s to target = steps to AdamW's final loss (linear interpolation between "
        f"evals every {args.eval_every} steps) x the run's median step time: a PROJECTION from "
        f"step times measured on this machine under its current load ({load_average()}), "
        "not a measured wall-clock time"
    )
    print(
        f"within {100 * GOAL_WITHIN:.0f}% = final val loss at most {100 * GOAL_WITHIN:.0f}% above "
        "the sync run's (a lower loss counts as within)"
    )
    for name, values in diffs.items():
        checked = [(tau, d) for tau, d in values if tau <= GOAL_TAU]
        shown = ", ".join(f"τ={tau} {100 * d:+.2f}%" for tau, d in checked)
        met = bool(checked) and all(d <= GOAL_WITHIN for _, d in checked)
        print(
            f"Goal: τ <= {GOAL_TAU} within {100 * GOAL_WITHIN:.0f}% of sync: {name} {shown} "
            f"({'met' if met else 'not met'})"
        )
    print(f"\n{len(runs)} runs in {elapsed:.1f} s; load average at end {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
