"""Steps to reach AdamW's final validation loss: SOAP and KL-Shampoo vs AdamW and Muon.

Every run is ``asteria_bench.train.train`` on the default workload
(``RunConfig()``: default GPT, embedded corpus, 300 steps, cosine schedule),
with only the optimizer, its learning rate, the evaluation interval and the
thread count changed. For each optimizer a small learning-rate sweep picks the
rate with the lowest final validation loss. The target is AdamW's best final
validation loss; an optimizer's steps-to-target is the first point at which its
validation curve (at its best rate) reaches the target, linearly interpolated
between the two evaluations that bracket it (the first evaluation itself when
it is already below). Ratios below 1 mean fewer steps than AdamW.

Muon (torch.optim.Muon on the hidden matrices, AdamW on the rest; skipped on a
torch without it) is the second reference: every steps and time-to-target ratio
is given against AdamW and against Muon.

Runs go learning rate by learning rate, every optimizer at each rate, so that a
change in machine load spreads over all optimizers; the step-time ratio is the
mean step time (forward + backward + optimizer, no evaluation) over all of an
optimizer's runs, over AdamW's. The mean, not the median: a synchronous
refresh lands in one step of every f, so the median step leaves it out, while
the time to a loss is the sum of every step.

Curves and the summary are written under ``--out``. Run
``python benchmarks/bench_convergence.py --help``; ``--quick`` is a smoke run of
a few seconds on a tiny model.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asteria_bench.config import OPTIMIZERS, SECOND_ORDER, ModelSection, RunConfig, validate
from asteria_bench.errors import UserError
from asteria_bench.muon import muon_available
from asteria_bench.train import StepMetrics, train
from benchmarks._common import (
    DEFAULT_THREADS,
    environment_line,
    fmt,
    format_table,
    load_average,
    mean,
    median,
    set_threads,
)
from runtime.policies.staleness import parse_staleness

DEFAULT_OPTIMIZERS = ("adamw", "muon", "soap", "soap@bounded:4", "kl-shampoo")
DEFAULT_LRS = (3e-3, 6e-3, 1e-2, 2e-2)
QUICK_LRS = (3e-3, 1e-2)
SOAP_GOAL = 0.8
"""The steps ratio SOAP should reach (<= 0.8 of AdamW's steps)."""
MUON_TIME_GOAL = 1.0
"""SOAP with the runtime's features on should reach the target no later than Muon."""


def split_variant(entry: str) -> tuple[str, str]:
    """``"soap@bounded:4"`` -> ``("soap", "bounded:4")``; a bare name runs sync."""
    name, _, staleness = entry.partition("@")
    return name, staleness or "sync"


@dataclass
class RunRecord:
    """One training run of the sweep, reduced to what the tables need."""

    optimizer: str
    lr: float
    steps: int  # steps actually run
    final_val_loss: float  # inf when the run stopped early (diverged)
    min_val_loss: float
    wall_s: float
    stopped_early: str | None
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, val loss)
    step_time_ms: list[float] = field(default_factory=list)
    optimizer_ms: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)


def steps_to_target(curve: list[tuple[int, float]], target: float) -> float | None:
    """The first step at which a val-loss curve reaches ``target``, or None.

    ``curve`` is (step, val loss) at increasing steps. Between the last
    evaluation above the target and the first at or below it the loss is taken
    to fall linearly; when the first evaluation is already at or below the
    target (nothing before it to interpolate from) its step is the answer.
    """
    previous: tuple[int, float] | None = None
    for step, loss in curve:
        if loss <= target:
            if previous is None or not math.isfinite(previous[1]):
                return float(step)
            s0, l0 = previous
            return s0 + (step - s0) * (l0 - target) / (l0 - loss)
        previous = (step, loss)
    return None


def make_config(args: argparse.Namespace, optimizer: str, lr: float) -> RunConfig:
    config = RunConfig()
    config.optim.name, config.runtime.staleness = split_variant(optimizer)
    config.optim.lr = lr
    config.train.eval_every = args.eval_every
    config.train.steps = args.steps
    config.train.seed = args.seed
    config.train.torch_threads = args.threads or None
    if args.quick:
        config.model = ModelSection(n_layer=1, n_head=2, n_embd=32, context=16)
        config.train.batch_size = 4
        config.train.eval_batches = 2
        config.train.warmup_steps = 3
        config.data.corpus_bytes = 50_000
    validate(config)
    return config


def run_one(args: argparse.Namespace, optimizer: str, lr: float, label: str) -> RunRecord:
    config = make_config(args, optimizer, lr)
    print(f"{label} {optimizer} lr={lr:g}: training {config.train.steps} steps ...", flush=True)

    def progress(row: StepMetrics) -> None:
        if args.progress_every and row.step % args.progress_every == 0:
            print(f"    step {row.step:>4}  loss {row.loss:.4f}", flush=True)

    started = time.perf_counter()
    result = train(config, progress=progress)
    wall_s = time.perf_counter() - started
    curve = [(m.step, m.val_loss) for m in result.metrics if not math.isnan(m.val_loss)]
    finished = result.stopped_early is None and result.metrics[-1].step == config.train.steps
    final = curve[-1][1] if finished and curve else math.inf
    if not math.isfinite(final):
        final = math.inf
    record = RunRecord(
        optimizer=optimizer,
        lr=lr,
        steps=len(result.metrics),
        final_val_loss=final,
        min_val_loss=min((v for _, v in curve), default=math.inf),
        wall_s=wall_s,
        stopped_early=result.stopped_early,
        curve=curve,
        step_time_ms=[m.step_time_ns / 1e6 for m in result.metrics],
        optimizer_ms=[m.optimizer_ns / 1e6 for m in result.metrics],
        train_loss=[m.loss for m in result.metrics],
    )
    status = f"stopped: {result.stopped_early}" if result.stopped_early else "done"
    print(
        f"{label} {optimizer} lr={lr:g}: final val loss {fmt(final, 4)} ({status}, {wall_s:.1f} s)",
        flush=True,
    )
    return record


# --------------------------------------------------------------------- reports
@dataclass
class Summary:
    optimizer: str
    best_lr: float
    final_val_loss: float
    steps_to_target: float | None
    steps_ratio: float | None
    step_time_ms: float
    step_time_ratio: float
    steps_ratio_vs_muon: float | None = None
    time_ratio_vs_muon: float | None = None


def summarize(records: list[RunRecord], optimizers: list[str]) -> tuple[float, list[Summary]]:
    """AdamW's best final val loss, and each optimizer's best run measured against it."""
    best = {
        name: min(
            (r for r in records if r.optimizer == name),
            key=lambda r: (r.final_val_loss, r.lr),
        )
        for name in optimizers
    }
    target = best["adamw"].final_val_loss
    adamw_steps = steps_to_target(best["adamw"].curve, target)
    step_ms = {
        name: mean(t for r in records if r.optimizer == name for t in r.step_time_ms)
        for name in optimizers
    }
    out = []
    for name in optimizers:
        reached = steps_to_target(best[name].curve, target) if math.isfinite(target) else None
        ratio = reached / adamw_steps if reached is not None and adamw_steps else None
        out.append(
            Summary(
                optimizer=name,
                best_lr=best[name].lr,
                final_val_loss=best[name].final_val_loss,
                steps_to_target=reached,
                steps_ratio=ratio,
                step_time_ms=step_ms[name],
                step_time_ratio=step_ms[name] / step_ms["adamw"],
            )
        )
    muon = next((s for s in out if s.optimizer == "muon"), None)
    if muon is not None and muon.steps_to_target:
        for s in out:
            if s.steps_to_target is not None:
                s.steps_ratio_vs_muon = s.steps_to_target / muon.steps_to_target
                s.time_ratio_vs_muon = s.steps_ratio_vs_muon * s.step_time_ms / muon.step_time_ms
    return target, out


def summary_table(rows: list[Summary]) -> str:
    headers = [
        "optimizer",
        "best lr",
        "final val loss",
        "steps to AdamW's final loss",
        "ratio vs AdamW",
        "mean step time ratio vs AdamW",
        "time-to-target ratio",
        "steps ratio vs Muon",
        "time ratio vs Muon",
    ]
    body = []
    for s in rows:
        time_ratio = s.steps_ratio * s.step_time_ratio if s.steps_ratio is not None else None
        body.append(
            [
                s.optimizer,
                f"{s.best_lr:g}",
                fmt(s.final_val_loss, 4),
                fmt(s.steps_to_target, 1) if s.steps_to_target is not None else "not reached",
                fmt(s.steps_ratio) if s.steps_ratio is not None else "n/a",
                fmt(s.step_time_ratio),
                fmt(time_ratio) if time_ratio is not None else "n/a",
                fmt(s.steps_ratio_vs_muon) if s.steps_ratio_vs_muon is not None else "n/a",
                fmt(s.time_ratio_vs_muon) if s.time_ratio_vs_muon is not None else "n/a",
            ]
        )
    return format_table(headers, body)


def sweep_table(records: list[RunRecord], target: float) -> str:
    headers = [
        "optimizer",
        "lr",
        "final val loss",
        "min val loss",
        "steps to target",
        "mean step ms",
        "median step ms",
        "mean optimizer ms",
        "wall s",
        "status",
    ]
    body = []
    for r in sorted(records, key=lambda r: (r.optimizer, r.lr)):
        reached = steps_to_target(r.curve, target) if math.isfinite(target) else None
        body.append(
            [
                r.optimizer,
                f"{r.lr:g}",
                fmt(r.final_val_loss, 4),
                fmt(r.min_val_loss, 4),
                fmt(reached, 1) if reached is not None else "not reached",
                fmt(mean(r.step_time_ms), 1),
                fmt(median(r.step_time_ms), 1),
                fmt(mean(r.optimizer_ms), 1),
                fmt(r.wall_s, 1),
                "diverged" if r.stopped_early else "ok",
            ]
        )
    return format_table(headers, body)


def write_outputs(
    out: Path,
    args: argparse.Namespace,
    records: list[RunRecord],
    target: float,
    rows: list[Summary],
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "curves.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["optimizer", "lr", "step", "train_loss", "val_loss", "step_time_ms", "optimizer_ms"]
        )
        for r in records:
            val = dict(r.curve)
            for i, loss in enumerate(r.train_loss):
                step = i + 1
                writer.writerow(
                    [
                        r.optimizer,
                        r.lr,
                        step,
                        f"{loss:.6f}",
                        f"{val[step]:.6f}" if step in val else "",
                        f"{r.step_time_ms[i]:.3f}",
                        f"{r.optimizer_ms[i]:.3f}",
                    ]
                )

    def finite(x: float | None) -> float | None:
        return x if x is not None and math.isfinite(x) else None

    summary = {
        "environment": environment_line(),
        "settings": {
            "optimizers": args.optimizers,
            "lrs": args.lrs,
            "steps": args.steps,
            "eval_every": args.eval_every,
            "seed": args.seed,
            "threads": args.threads,
            "quick": args.quick,
        },
        "target_val_loss": finite(target),
        "interpolation": "linear between the evaluations that bracket the target",
        # optimizer and staleness apart, as simulator.convergence reads them
        "best": [
            {k: finite(v) if isinstance(v, float) else v for k, v in asdict(s).items()}
            | dict(zip(("optimizer", "staleness"), split_variant(s.optimizer), strict=True))
            for s in rows
        ],
        "runs": [
            {
                "optimizer": r.optimizer,
                "lr": r.lr,
                "final_val_loss": finite(r.final_val_loss),
                "min_val_loss": finite(r.min_val_loss),
                "steps": r.steps,
                "wall_s": r.wall_s,
                "stopped_early": r.stopped_early,
                "val_curve": [[s, v] for s, v in r.curve],
            }
            for r in records
        ],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def _float_list(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None
    if not values or any(not (v > 0 and math.isfinite(v)) for v in values):
        raise argparse.ArgumentTypeError(f"expected positive learning rates, got {text!r}")
    return values


def _name_list(text: str) -> list[str]:
    names = [x.strip().lower() for x in text.split(",") if x.strip()]
    bad = [n for n in names if split_variant(n)[0] not in OPTIMIZERS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown optimizer(s) {bad}; expected {OPTIMIZERS}")
    for entry in names:
        name, staleness = split_variant(entry)
        if "@" not in entry:
            continue
        if name not in SECOND_ORDER:
            raise argparse.ArgumentTypeError(
                f"{entry!r}: only {', '.join(SECOND_ORDER)} take @STALENESS"
            )
        try:
            parse_staleness(staleness)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{entry!r}: {exc}") from None
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Steps to AdamW's final val loss, each optimizer at its swept best lr.",
    )
    parser.add_argument(
        "--optimizers",
        type=_name_list,
        default=None,
        help="comma-separated; must include adamw; NAME@STALENESS (e.g. soap@bounded:4) runs"
        " a second-order optimizer with runtime.staleness set (default"
        " adamw,muon,soap,soap@bounded:4,kl-shampoo; muon only where torch has it)",
    )
    parser.add_argument(
        "--lrs",
        type=_float_list,
        default=list(DEFAULT_LRS),
        help="comma-separated learning-rate grid, the same for every optimizer "
        "(default 3e-3,6e-3,1e-2,2e-2)",
    )
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 300)")
    parser.add_argument("--eval-every", type=int, default=10, help="eval interval (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help=f"torch intra-op threads (default {DEFAULT_THREADS}; 0 keeps torch's default)",
    )
    parser.add_argument(
        "--progress-every",
        type=int,
        default=100,
        help="print the training loss every N steps (0: only per run; default 100)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for curves.csv and summary.json (default runs/bench_convergence, "
        "runs/bench_convergence-quick with --quick)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny model, 30 steps, 2 lrs: a smoke run"
    )
    args = parser.parse_args(argv)
    args.optimizers_given = args.optimizers is not None
    if args.optimizers is None:
        args.optimizers = list(DEFAULT_OPTIMIZERS)
    if "adamw" not in args.optimizers:
        parser.error("--optimizers must include adamw (its final loss is the target)")
    args.optimizers = ["adamw"] + [o for o in dict.fromkeys(args.optimizers) if o != "adamw"]
    if "muon" in args.optimizers and not muon_available():
        if args.optimizers_given:
            parser.error(f"--optimizers muon: torch {torch.__version__} has no torch.optim.Muon")
        args.optimizers.remove("muon")
    if args.quick:
        if args.steps is None:
            args.steps = 30
        if args.lrs == list(DEFAULT_LRS):
            args.lrs = list(QUICK_LRS)
        args.eval_every = min(args.eval_every, 5)
        args.progress_every = 0
    if args.steps is None:
        args.steps = RunConfig().train.steps
    if args.out is None:
        args.out = Path("runs/bench_convergence-quick" if args.quick else "runs/bench_convergence")
    if args.steps < 1 or args.eval_every < 1:
        parser.error("--steps and --eval-every must be positive integers")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads or None)  # train() sets the same again per run
    print(environment_line())
    print(
        f"workload RunConfig() defaults{' (--quick: tiny model)' if args.quick else ''}; "
        f"{args.steps} steps, eval every {args.eval_every}; optimizers {','.join(args.optimizers)}; "
        f"lr grid {','.join(f'{lr:g}' for lr in args.lrs)}",
        flush=True,
    )
    records: list[RunRecord] = []
    total = len(args.lrs) * len(args.optimizers)
    started = time.perf_counter()
    try:
        for lr in args.lrs:
            for name in args.optimizers:
                label = f"[{len(records) + 1}/{total}]"
                records.append(run_one(args, name, lr, label))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    target, rows = summarize(records, args.optimizers)

    print()
    print("Learning-rate sweep (steps to target = AdamW's best final val loss)")
    print(sweep_table(records, target))
    print()
    print(
        f"Steps to AdamW's final val loss {fmt(target, 4)} (each optimizer at its best lr; "
        "linear interpolation between evals)"
    )
    print(summary_table(rows))
    for s in rows:
        if s.optimizer == "soap":
            met = s.steps_ratio is not None and s.steps_ratio <= SOAP_GOAL
            print(
                f"SOAP steps ratio {fmt(s.steps_ratio)} (goal <= {SOAP_GOAL}: "
                f"{'met' if met else 'not met'})"
            )
        if split_variant(s.optimizer)[0] == "soap" and "muon" in args.optimizers:
            met = s.time_ratio_vs_muon is not None and s.time_ratio_vs_muon <= MUON_TIME_GOAL
            print(
                f"{s.optimizer} time to target vs Muon {fmt(s.time_ratio_vs_muon)} "
                f"(goal <= {MUON_TIME_GOAL:.2f}: {'met' if met else 'not met'})"
            )
    write_outputs(args.out, args, records, target, rows)
    print(
        f"\ncurves: {args.out / 'curves.csv'}; summary: {args.out / 'summary.json'}; "
        f"{time.perf_counter() - started:.1f} s; load average at end {load_average()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
