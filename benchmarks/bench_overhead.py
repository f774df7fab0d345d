"""Mean step time of SOAP, Shampoo and KL-Shampoo, sync and async, relative to AdamW.

Every run is ``asteria_bench.train.train`` on the default workload (default
GPT, embedded corpus) with the optimizer's preset from
``asteria_bench.config.OPTIMIZER_PRESETS`` (f = 10 for all three), so a run's
mean step time contains the hot path and the amortized refreshes. Each
preconditioned optimizer runs in two modes:

- **sync**: the reference, refreshes computed on the training thread;
- **async**: ``bounded:TAU`` (default 4), refreshes on worker threads, the blocks'
  refreshes staggered over the f steps (``config.runtime.stagger`` auto).

The thread split is fixed and printed: the training thread runs torch with
``--threads`` (default 1) intra-op threads and ``--workers`` (default 1) refresh
threads run the jobs (same intra-op count, probed and printed). AdamW runs the
same model with the same split (it has no refresh work, so no worker).

**Interleaving.** Every configuration runs ``--repeats`` (default 3) short runs of
``--steps`` (default 70) steps, in rounds: each round runs every configuration
once, starting one configuration further along each round, so a change in
machine load falls on all of them alike. A run's mean covers steps
``--drop + 1 .. --steps`` (default 11-70: 60 steps, six whole refresh periods;
the first 10, i.e. the first call and warm-up, are dropped); the table takes the
median over the runs of each configuration's per-run means. Garbage collection
is off during each run.

Run ``python benchmarks/bench_overhead.py --help``; ``--quick`` is a
seconds-long smoke run on a tiny model.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asteria_bench.config import OPTIMIZER_PRESETS, RunConfig
from benchmarks._common import (
    DEFAULT_THREADS,
    environment_line,
    fmt,
    format_table,
    load_average,
    median,
    set_threads,
)
from benchmarks.bench_spikes import (
    Run,
    make_config,
    optimizer_list,
    preset_line,
    run_training,
    thread_split_line,
)

DEFAULT_OPTIMIZERS = ("soap", "shampoo", "kl-shampoo")
LABELS = {"adamw": "AdamW", "soap": "SOAP", "shampoo": "Shampoo", "kl-shampoo": "KL-Shampoo"}


@dataclass
class Configuration:
    optimizer: str
    staleness: str  # "sync" for AdamW too (it has no refreshes)
    runs: list[Run] = field(default_factory=list)

    @property
    def mode(self) -> str:
        return "-" if self.optimizer == "adamw" else self.staleness

    def means(self, drop: int, series: str) -> list[float]:
        out = []
        for run in self.runs:
            values = getattr(run, series)[drop:]
            out.append(sum(values) / len(values))
        return out

    def mean_step(self, drop: int) -> float:
        """Median over runs of the run's mean step time (ms)."""
        return median(self.means(drop, "step_ms"))

    def mean_optimizer(self, drop: int) -> float:
        return median(self.means(drop, "optimizer_ms"))

    def wait_total(self, drop: int) -> float:
        """Median over runs of the run's total wait over the measured steps (ms)."""
        return median(sum(run.wait_ms[drop:]) for run in self.runs)


def overhead_table(configs: list[Configuration], drop: int) -> str:
    headers = [
        "optimizer",
        "mode",
        "mean step ms",
        "ratio vs AdamW",
        "mean optimizer ms",
        "wait ms total",
        "run means min-max ms",
    ]
    adamw = next(c for c in configs if c.optimizer == "adamw").mean_step(drop)
    rows = []
    for c in configs:
        means = c.means(drop, "step_ms")
        rows.append(
            [
                LABELS[c.optimizer],
                c.mode,
                fmt(c.mean_step(drop), 2),
                fmt(c.mean_step(drop) / adamw, 3),
                fmt(c.mean_optimizer(drop), 2),
                fmt(c.wait_total(drop), 1),
                f"{min(means):.2f}-{max(means):.2f}",
            ]
        )
    return format_table(headers, rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Mean step time of SOAP / Shampoo / KL-Shampoo (sync, async) vs AdamW.",
    )
    parser.add_argument(
        "--optimizers",
        type=optimizer_list,
        default=list(DEFAULT_OPTIMIZERS),
        help="comma-separated, any of soap, shampoo, kl-shampoo (default all three); "
        "AdamW always runs",
    )
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 70)")
    parser.add_argument(
        "--drop", type=int, default=None, help="first steps left out of each mean (default 10)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="runs per configuration (default 3)"
    )
    parser.add_argument(
        "--tau", type=int, default=4, help="bounded staleness of the async runs (default 4)"
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
        "--quick", action="store_true", help="tiny model, 25-step runs, 1 round: a smoke run"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = args.steps or 25
        args.drop = 5 if args.drop is None else args.drop
        args.repeats = args.repeats or 1
    args.steps = args.steps or 70
    args.drop = 10 if args.drop is None else args.drop
    args.repeats = args.repeats or 3
    for name in ("steps", "repeats", "tau", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer")
    if not 0 <= args.drop < args.steps:
        parser.error("--drop must be a non-negative integer below --steps")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads or None)  # train() sets the same again per run
    print(environment_line())
    print(thread_split_line(args.threads, args.workers))
    async_policy = f"bounded:{args.tau}"
    measured = args.steps - args.drop
    frequencies = sorted({OPTIMIZER_PRESETS[o]["precondition_frequency"] for o in args.optimizers})
    print(
        f"workload: RunConfig() defaults{' (--quick: tiny model)' if args.quick else ' (default GPT)'}"
        f", seed {args.seed}; modes sync and {async_policy} (stagger auto: off for sync, on for "
        f"async); {args.repeats} round(s) of {args.steps}-step runs, every configuration once "
        f"per round, rotating the order; means over steps {args.drop + 1}-{args.steps} "
        f"({measured} steps; first {args.drop} dropped), median over runs; garbage collection "
        f"off during runs"
    )
    if any(measured % f for f in frequencies):
        print(
            f"note: {measured} measured steps is not a whole number of refresh periods "
            f"(f = {frequencies}); the amortized refresh cost is sampled unevenly"
        )
    print("optimizer presets (asteria_bench.config.OPTIMIZER_PRESETS):")
    for name in ["adamw", *args.optimizers]:
        print(preset_line(name, None))
    print(flush=True)

    configs = [Configuration("adamw", "sync")]
    for name in args.optimizers:
        configs += [Configuration(name, "sync"), Configuration(name, async_policy)]
    started = time.perf_counter()
    total = args.repeats * len(configs)
    done = 0
    for r in range(args.repeats):
        k = r % len(configs)
        for c in configs[k:] + configs[:k]:
            done += 1
            config: RunConfig = make_config(
                c.optimizer,
                staleness=c.staleness,
                steps=args.steps,
                threads=args.threads,
                workers=args.workers,
                seed=args.seed,
                quick=args.quick,
            )
            c.runs.append(run_training(config, f"[{done}/{total}]"))
    elapsed = time.perf_counter() - started

    print()
    print(
        f"Mean step time vs AdamW (median over {args.repeats} run(s) of each run's mean over "
        f"steps {args.drop + 1}-{args.steps}; wait ms total = per run, median over runs)"
    )
    print(overhead_table(configs, args.drop))
    print(f"\n{total} runs in {elapsed:.1f} s; load average at end {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
