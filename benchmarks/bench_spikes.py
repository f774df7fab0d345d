"""Step-time spikes from amortized refreshes: synchronous vs asynchronous (bounded staleness).

Every run is ``asteria_bench.train.train`` on the default workload (default
GPT, embedded corpus) with the optimizer's preset from
``asteria_bench.config.OPTIMIZER_PRESETS`` (SOAP: f = 10, ``block_size=None``,
i.e. no blocking), so a refresh is an eigendecomposition-sized job on whole
matrices. Two modes run side by side:

- **sync**: the reference. Every block's refresh falls due on the same step and
  is computed on the training thread (and installed one step later), so that
  step and the next take longer: a spike every f steps.
- **async**: ``bounded:TAU`` (default 4) with refresh worker threads and the
  blocks' refreshes staggered over the f steps (``config.runtime.stagger =
  None``, i.e. on for asynchronous policies). The training thread only
  snapshots and installs; a late result makes the step wait (recorded).

The thread split is fixed and printed: the training thread runs torch with
``--threads`` (default 1, ``config.train.torch_threads``) intra-op threads and
``--workers`` (default 1) refresh threads run the jobs, each with the same
intra-op thread count (probed and printed), so the two fit the two cores.

First the script checks that the refresh is costly enough to matter: in each
sync run, the extra time of the steps that compute and install a refresh (over
the median of the other steps), in median steps; the target configuration needs
>= 1.5. Then it prints p50, p99, p99/p50, max and max/p50 of the step time for
both modes, dropping the first ``--drop`` steps (default 10: the first call,
which builds every eigenbasis inline, and warm-up; all before the first refresh
of an unstaggered run), and the total wait of the asynchronous runs. The goal is
async p99/p50 <= 1.2.

Runs alternate sync / async (``--repeats`` pairs, the order flipped in every
pair) so that a change in machine load falls on both modes; the summary takes
the median over runs. Garbage collection is off during each run (collected before).

Run ``python benchmarks/bench_spikes.py --help``; ``--quick`` is a seconds-long
smoke run on a tiny model (its numbers exercise the code, not the question).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from asteria_bench.config import OPTIMIZERS, ModelSection, RunConfig, resolved_optimizer, validate
from asteria_bench.train import train
from benchmarks._common import (
    DEFAULT_THREADS,
    environment_line,
    fmt,
    format_table,
    load_average,
    median,
    set_threads,
)

GOAL_P99_P50 = 1.2
"""The asynchronous run's p99/p50 step time should be at most this."""
MIN_REFRESH_STEPS = 1.5
"""A refresh must cost at least this many median steps for the spike test to mean anything."""
PRECONDITIONED = tuple(o for o in OPTIMIZERS if o != "adamw")
QUICK_MODEL = ModelSection(n_layer=1, n_head=2, n_embd=32, context=16)


# ------------------------------------------------------------ shared helpers
# (bench_overhead.py and bench_staleness.py import these)
def make_config(
    optimizer: str,
    *,
    staleness: str = "sync",
    steps: int,
    threads: int,
    workers: int = 1,
    stagger: bool | None = None,
    eval_every: int | None = None,
    seed: int = 0,
    frequency: int | None = None,
    quick: bool = False,
) -> RunConfig:
    """``RunConfig()`` with only the optimizer, the runtime and the run length changed."""
    config = RunConfig()
    config.optim.name = optimizer
    if frequency is not None and optimizer != "adamw":
        config.optim.precondition_frequency = frequency
    config.runtime.staleness = staleness
    config.runtime.workers = workers
    config.runtime.stagger = stagger
    config.train.steps = steps
    config.train.eval_every = eval_every or steps  # default: evaluate once, at the end
    config.train.seed = seed
    config.train.torch_threads = threads or None
    if quick:
        config.model = ModelSection(**vars(QUICK_MODEL))
        config.train.batch_size = 4
        config.train.eval_batches = 2
        config.train.warmup_steps = 3
        config.data.corpus_bytes = 50_000
    validate(config)
    return config


@dataclass
class Run:
    """One training run reduced to per-step series (ms) and its validation curve."""

    optimizer: str
    staleness: str
    stagger: str
    step_ms: list[float]
    optimizer_ms: list[float]
    refresh_ms: list[float]  # refresh spans on the training thread (compute, snapshot, install)
    wait_ms: list[float]  # waits for late asynchronous results
    curve: list[tuple[int, float]] = field(default_factory=list)
    wall_s: float = 0.0
    stopped_early: str | None = None

    @property
    def mode(self) -> str:
        return "-" if self.optimizer == "adamw" else self.staleness

    @property
    def final_val_loss(self) -> float:
        if self.stopped_early or not self.curve:
            return math.inf
        return self.curve[-1][1]


def run_training(config: RunConfig, label: str) -> Run:
    """Train once (garbage collection off) and keep the per-step timings."""
    r = config.runtime
    name = (
        config.optim.name if config.optim.name == "adamw" else f"{config.optim.name} {r.staleness}"
    )
    print(f"{label} {name}: {config.train.steps} steps ...", flush=True)
    gc.collect()
    gc.disable()
    started = time.perf_counter()
    try:
        result = train(config)
    finally:
        gc.enable()
    wall_s = time.perf_counter() - started
    metrics = result.metrics
    run = Run(
        optimizer=config.optim.name,
        staleness=r.staleness,
        stagger=result.policies.get("stagger", "off"),
        step_ms=[m.step_time_ns / 1e6 for m in metrics],
        optimizer_ms=[m.optimizer_ns / 1e6 for m in metrics],
        refresh_ms=[m.refresh_ns / 1e6 for m in metrics],
        wait_ms=[m.wait_ns / 1e6 for m in metrics],
        curve=[(m.step, m.val_loss) for m in metrics if not math.isnan(m.val_loss)],
        wall_s=wall_s,
        stopped_early=result.stopped_early,
    )
    status = f"stopped: {result.stopped_early}" if result.stopped_early else "done"
    print(
        f"{label} {status} in {wall_s:.1f} s (median step {fmt(median(run.step_ms), 1)} ms, "
        f"final val loss {fmt(run.final_val_loss, 4)})",
        flush=True,
    )
    return run


def worker_torch_threads() -> int:
    """torch's intra-op thread count as seen from a new thread (what a refresh worker gets)."""
    seen: list[int] = []
    probe = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    probe.start()
    probe.join()
    return seen[0]


def thread_split_line(threads: int, workers: int) -> str:
    """The training-thread / refresh-worker split, stated once at the top of a run."""
    setting = threads if threads else "None (torch's default)"
    return (
        f"thread split: 1 training thread running torch with {torch.get_num_threads()} intra-op "
        f"thread(s) (config.train.torch_threads = {setting}) + {workers} refresh worker "
        f"thread(s) in asynchronous runs (config.runtime.workers = {workers}), each running "
        f"torch with {worker_torch_threads()} intra-op thread(s); sync runs compute refreshes "
        f"on the training thread; {os.cpu_count()} CPUs"
    )


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile, linear between closest ranks (numpy's default)."""
    xs = sorted(v for v in values if math.isfinite(v))
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def preset_line(optimizer: str, frequency: int | None) -> str:
    hp = resolved_optimizer(make_config(optimizer, steps=1, threads=1).optim)
    if frequency is not None and optimizer != "adamw":
        hp["precondition_frequency"] = frequency
    shown = ", ".join(f"{k}={v}" for k, v in hp.items())
    return f"  {optimizer}: {shown}"


# ------------------------------------------------------------------ analysis
def refresh_cycles(run: Run, drop: int) -> list[list[int]]:
    """Groups of consecutive measured steps with refresh work on the training thread.

    In a sync run a group is the step that computes the refreshes and (SOAP and
    KL-Shampoo, staleness 1) the next step that installs them. A group that
    touches the last step may be cut short and is left out.
    """
    groups: list[list[int]] = []
    current: list[int] = []
    for i in range(drop, len(run.step_ms)):
        if run.refresh_ms[i] > 0:
            current.append(i)
        elif current:
            groups.append(current)
            current = []
    return groups  # a group still open at the last step is dropped


@dataclass
class RefreshCost:
    cycles: int
    base_ms: float  # median of the measured steps without refresh work
    extra_ms: float  # median over cycles of the cycle's time above base
    spans_ms: float  # median over cycles of the training-thread refresh spans

    @property
    def in_steps(self) -> float:
        return self.extra_ms / self.base_ms if self.base_ms > 0 else math.nan


def refresh_cost(run: Run, drop: int) -> RefreshCost:
    groups = refresh_cycles(run, drop)
    in_groups = {i for g in groups for i in g}
    base = median(run.step_ms[i] for i in range(drop, len(run.step_ms)) if i not in in_groups)
    extras = [sum(run.step_ms[i] for i in g) - len(g) * base for g in groups]
    spans = [sum(run.refresh_ms[i] for i in g) for g in groups]
    return RefreshCost(len(groups), base, median(extras), median(spans))


@dataclass
class Spikes:
    p50: float
    p99: float
    max: float
    wait_ms: float  # total over the measured steps
    waited_steps: int
    wait_all_ms: float  # total over every step, dropped ones included

    @property
    def p99_p50(self) -> float:
        return self.p99 / self.p50

    @property
    def max_p50(self) -> float:
        return self.max / self.p50


def spikes(run: Run, drop: int) -> Spikes:
    xs = run.step_ms[drop:]
    waits = run.wait_ms[drop:]
    return Spikes(
        p50=percentile(xs, 50),
        p99=percentile(xs, 99),
        max=max(xs),
        wait_ms=sum(waits),
        waited_steps=sum(1 for w in waits if w > 0),
        wait_all_ms=sum(run.wait_ms),
    )


# ------------------------------------------------------------------- reports
def cost_table(runs: list[tuple[int, Run]], drop: int) -> str:
    headers = [
        "optimizer",
        "run",
        "median step ms (no refresh)",
        "refresh cycles",
        "extra ms per cycle",
        "cost in median steps",
        "refresh spans ms per cycle",
    ]
    rows = []
    for k, run in runs:
        c = refresh_cost(run, drop)
        rows.append(
            [
                run.optimizer,
                str(k),
                fmt(c.base_ms, 1),
                str(c.cycles),
                fmt(c.extra_ms, 1),
                fmt(c.in_steps),
                fmt(c.spans_ms, 1),
            ]
        )
    return format_table(headers, rows)


def spikes_table(runs: list[tuple[int, Run]], drop: int) -> str:
    headers = [
        "optimizer",
        "mode",
        "run",
        "p50 ms",
        "p99 ms",
        "p99/p50",
        "max ms",
        "max/p50",
        "wait ms total",
        "steps that waited",
        "refresh on training thread ms/step",
        "slowest steps (step: ms)",
    ]
    rows = []
    for k, run in runs:
        s = spikes(run, drop)
        measured = range(drop, len(run.step_ms))
        slowest = sorted(measured, key=lambda i: run.step_ms[i], reverse=True)[:3]
        refresh = sum(run.refresh_ms[i] for i in measured) / len(measured)
        rows.append(
            [
                run.optimizer,
                run.mode,
                str(k),
                fmt(s.p50, 1),
                fmt(s.p99, 1),
                fmt(s.p99_p50),
                fmt(s.max, 1),
                fmt(s.max_p50),
                fmt(s.wait_ms, 1),
                str(s.waited_steps),
                fmt(refresh, 2),
                ", ".join(f"{i + 1}: {run.step_ms[i]:.0f}" for i in slowest),
            ]
        )
    return format_table(headers, rows)


def summary_table(by_mode: dict[tuple[str, str], list[Run]], drop: int) -> str:
    headers = [
        "optimizer",
        "mode",
        "runs",
        "p99/p50 (median)",
        "max/p50 (median)",
        "p50 ms (median)",
        "wait ms total (median)",
    ]
    rows = []
    for (optimizer, mode), runs in by_mode.items():
        stats = [spikes(r, drop) for r in runs]
        rows.append(
            [
                optimizer,
                mode,
                str(len(runs)),
                fmt(median(s.p99_p50 for s in stats)),
                fmt(median(s.max_p50 for s in stats)),
                fmt(median(s.p50 for s in stats), 1),
                fmt(median(s.wait_ms for s in stats), 1),
            ]
        )
    return format_table(headers, rows)


# ---------------------------------------------------------------------- main
def optimizer_list(text: str) -> list[str]:
    """``--optimizers``: comma-separated preconditioned optimizers, deduplicated in order."""
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [n for n in names if n not in PRECONDITIONED]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"expected some of {PRECONDITIONED}, got {text!r}")
    return list(dict.fromkeys(names))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="p99/p50 step time, sync refreshes vs asynchronous bounded staleness.",
    )
    parser.add_argument(
        "--optimizers",
        type=optimizer_list,
        default=["soap"],
        help="comma-separated, any of soap, kl-shampoo, shampoo (default soap)",
    )
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 300)")
    parser.add_argument(
        "--drop",
        type=int,
        default=None,
        help="first steps left out of the statistics (default 10; --quick 5)",
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="sync/async pairs per optimizer (default 2)"
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
    parser.add_argument(
        "--frequency",
        type=int,
        default=None,
        help="precondition frequency (default: the preset's, 10)",
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument(
        "--quick", action="store_true", help="tiny model, 30 steps, 1 pair: a smoke run"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = args.steps or 30
        args.repeats = 1
    args.steps = args.steps or RunConfig().train.steps
    if args.drop is None:
        args.drop = 5 if args.quick else 10
    for name in ("steps", "repeats", "tau", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer")
    if not 0 <= args.drop < args.steps - 2:
        parser.error("--drop must be a non-negative integer well below --steps")
    if args.frequency is not None and args.frequency < 1:
        parser.error("--frequency must be a positive integer")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads or None)  # train() sets the same again per run
    print(environment_line())
    print(thread_split_line(args.threads, args.workers))
    async_policy = f"bounded:{args.tau}"
    print(
        f"workload: RunConfig() defaults{' (--quick: tiny model)' if args.quick else ' (default GPT)'}"
        f", {args.steps} steps per run, seed {args.seed}; sync vs {async_policy} "
        f"(stagger auto: off for sync, on for async); {args.repeats} sync/async pair(s) per "
        f"optimizer, alternating, order flipped every pair; statistics over steps "
        f"{args.drop + 1}-{args.steps} (the first {args.drop} dropped: the first-call init "
        f"and warm-up); garbage collection off during runs"
    )
    print("optimizer presets (asteria_bench.config.OPTIMIZER_PRESETS):")
    for name in args.optimizers:
        print(preset_line(name, args.frequency))
    print(flush=True)

    started = time.perf_counter()
    runs: list[tuple[int, Run]] = []
    total = 2 * args.repeats * len(args.optimizers)
    for k in range(1, args.repeats + 1):
        for name in args.optimizers:
            modes = ["sync", async_policy]
            if k % 2 == 0:
                modes.reverse()
            for mode in modes:
                config = make_config(
                    name,
                    staleness=mode,
                    steps=args.steps,
                    threads=args.threads,
                    workers=args.workers,
                    seed=args.seed,
                    frequency=args.frequency,
                    quick=args.quick,
                )
                runs.append((k, run_training(config, f"[{len(runs) + 1}/{total}]")))
    elapsed = time.perf_counter() - started
    runs.sort(key=lambda kr: (args.optimizers.index(kr[1].optimizer), kr[1].mode != "sync", kr[0]))

    sync_runs = [(k, r) for k, r in runs if r.staleness == "sync"]
    print()
    print(
        f"Refresh cost in the sync runs: extra time of the steps that compute and install a "
        f"refresh over the median of the other steps (gate: >= {MIN_REFRESH_STEPS} median steps)"
    )
    print(cost_table(sync_runs, args.drop))
    for name in args.optimizers:
        cost = median(
            refresh_cost(r, args.drop).in_steps for _, r in sync_runs if r.optimizer == name
        )
        ok = cost >= MIN_REFRESH_STEPS
        print(
            f"{name}: one refresh costs {fmt(cost)} median steps (needs >= {MIN_REFRESH_STEPS}: "
            f"{'ok' if ok else 'NOT MET, the spike comparison below means little'})"
        )

    print()
    print(
        f"Step-time spikes per run (steps {args.drop + 1}-{args.steps}; first {args.drop} dropped)"
    )
    print(spikes_table(runs, args.drop))
    by_mode: dict[tuple[str, str], list[Run]] = {}
    for _, r in runs:
        by_mode.setdefault((r.optimizer, r.mode), []).append(r)
    print()
    print("Summary (median over runs)")
    print(summary_table(by_mode, args.drop))
    for (name, mode), group in by_mode.items():
        if mode == "sync":
            continue
        stats = [spikes(r, args.drop) for r in group]
        ratio = median(s.p99_p50 for s in stats)
        waits = ", ".join(f"{fmt(s.wait_all_ms, 1)} ms" for s in stats)
        print(
            f"{name} {mode}: total wait on the training thread per run {waits} (all steps, "
            f"dropped ones included)"
        )
        met = ratio <= GOAL_P99_P50
        print(
            f"Goal: async p99/p50 <= {GOAL_P99_P50}: {name} {mode} p99/p50 {fmt(ratio)} "
            f"({'met' if met else 'not met'})"
        )
    print(f"\n{len(runs)} runs in {elapsed:.1f} s; load average at end {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
