"""A device too small for SOAP's state: out of memory under `device`, training under `pressure`.

The device gets AdamW's optimizer-state bytes (its two moments) as its budget
unless --device-budget says otherwise, so it is a device on which AdamW
trains. The script then trains, in one run:

- AdamW with no budget (the baseline of the step-time ratio);
- SOAP under `device` and under `lifecycle` with the budget: both need more
  device memory than the budget (all of SOAP's state; the moments plus one
  block's staged matrices) and stop with "out of device memory";
- SOAP under `pressure` with the budget: it evicts to host (and to NVMe past
  --host-budget) and trains;
- SOAP under `device` with no budget, for reference.

It prints each run's outcome, its peak device-tier bytes of optimizer state at
the step boundaries, and its median step time relative to AdamW (runs that
train are interleaved round by round). On a machine without a GPU the device
is emulated: the budget is its memory, and the host<->device copies are real
memcpy, so the ratio measures the executor's copying, not PCIe. On a GPU,
--memory-fraction also caps the CUDA allocator
(``torch.cuda.set_per_process_memory_fraction``), so that `device` meets a
real out-of-memory error where the budget alone would stop it first.

    python benchmarks/bench_pressure.py               # ~1 minute on 2 cores
    python benchmarks/bench_pressure.py --quick       # seconds
    python benchmarks/bench_pressure.py --device cuda --memory-fraction 0.02 --out traces/measured/pressure
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asteria_bench.config import RunConfig, parse_bytes
from asteria_bench.train import train
from benchmarks._common import environment_line, peak_device_state_bytes, set_threads


@dataclass(frozen=True)
class Run:
    label: str
    optimizer: str
    placement: str
    budgeted: bool


@dataclass
class Outcome:
    budgeted: bool
    stopped: str | None
    peak_device_bytes: int = 0
    step_ms: list[float] = field(default_factory=list)


def configure(args: argparse.Namespace, run: Run, budget: int | None, spill: str) -> RunConfig:
    config = RunConfig()
    config.optim.name = run.optimizer
    config.train.steps = args.steps
    config.train.eval_every = args.steps
    config.train.eval_batches = 1
    config.train.device = args.device
    config.train.torch_threads = args.threads
    config.runtime.placement = run.placement
    if run.budgeted and budget is not None:
        config.runtime.device_budget = str(budget)
        config.runtime.host_budget = args.host_budget
        config.runtime.spill_dir = spill if run.placement.startswith("pressure") else None
    if args.quick:
        config.model.n_layer, config.model.n_embd, config.model.n_head = 1, 32, 2
        config.model.context, config.train.batch_size, config.data.corpus_bytes = 16, 4, 20_000
        config.optim.block_size = 32  # so that one block fits the tiny AdamW-sized budget
    return config


def execute(
    args: argparse.Namespace, run: Run, budget: int | None, spill: str, outcomes: dict[str, Outcome]
) -> None:
    config = configure(args, run, budget, spill)
    result = train(config)
    steady = result.metrics[1:] or result.metrics
    step_ms = statistics.median(m.step_time_ns for m in steady) / 1e6 if steady else float("nan")
    seen = outcomes.setdefault(run.label, Outcome(run.budgeted, result.stopped_early))
    seen.peak_device_bytes = max(
        seen.peak_device_bytes, peak_device_state_bytes(result.recorder.counters)
    )
    if result.stopped_early is None:
        seen.step_ms.append(step_ms)
    if args.out is not None:
        from asteria_bench.job import write_run

        folder = args.out / run.label.replace(" ", "-")
        folder.mkdir(parents=True, exist_ok=True)
        write_run(folder, config, result, folder.name)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--optimizer", default="soap", choices=["soap", "shampoo", "kl-shampoo"])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds of the runs that train"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--device-budget", default=None, help="device bytes for optimizer state (default: AdamW's)"
    )
    parser.add_argument(
        "--host-budget", default=None, help="host bytes; past them pressure spills to NVMe"
    )
    parser.add_argument(
        "--memory-fraction", type=float, default=None, help="CUDA only: cap the allocator too"
    )
    parser.add_argument("--out", type=Path, default=None, help="keep each run's directory here")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds = 6, 1
    set_threads(args.threads)
    if args.memory_fraction is not None:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(
                "--memory-fraction: needs a CUDA device; without one the budget is the limit"
            )
        torch.cuda.set_per_process_memory_fraction(args.memory_fraction)
    budget = (
        None if args.device_budget is None else parse_bytes(args.device_budget, "--device-budget")
    )
    name = args.optimizer
    print(environment_line())
    outcomes: dict[str, Outcome] = {}
    with tempfile.TemporaryDirectory() as spill:
        adamw = Run("adamw", "adamw", "device", budgeted=False)
        execute(args, adamw, None, spill, outcomes)
        if budget is None:
            budget = outcomes["adamw"].peak_device_bytes
        low, high = budget / 16 / 2**20, budget / 8 / 2**20
        trains = [
            adamw,
            Run(f"{name} pressure", name, f"pressure:{low:.3f}:{high:.3f}", budgeted=True),
            Run(f"{name} device unbudgeted", name, "device", budgeted=False),
        ]
        for placement in ("device", "lifecycle"):
            execute(
                args, Run(f"{name} {placement}", name, placement, True), budget, spill, outcomes
            )
        for index in range(args.rounds):
            for run in trains:
                if run is adamw and index == 0:
                    continue  # its first round ran above, to size the budget
                execute(args, run, budget, spill, outcomes)
    source = "as given" if args.device_budget else "AdamW's state"
    tiny = " (tiny, --quick)" if args.quick else ""
    print(
        f"{name}, default GPT{tiny}, {args.steps} steps; device budget {budget:,} bytes ({source}),"
        f" host budget {args.host_budget or 'unlimited'}"
    )
    print()
    print("| run | budget | outcome | peak device bytes at rest | median step ms | vs AdamW |")
    print("|-----|--------|---------|---------------------------|----------------|----------|")
    base = statistics.median(outcomes["adamw"].step_ms)
    for label, outcome in outcomes.items():
        budgeted = "yes" if outcome.budgeted else "no"
        if outcome.stopped:
            status, ms, ratio = "out of device memory", "-", "-"
        else:
            median = statistics.median(outcome.step_ms)
            status, ms, ratio = "trained", f"{median:.2f}", f"{median / base:.2f}"
        print(
            f"| {label} | {budgeted} | {status} | {outcome.peak_device_bytes:,} | {ms} | {ratio} |"
        )
    pressure = outcomes[f"{name} pressure"]
    device = outcomes[f"{name} device"]
    shown = device.stopped is not None and pressure.stopped is None
    print()
    print(
        f"{'shown' if shown else 'NOT shown'}: {name} runs out of device memory under `device` and"
        f" trains under `pressure` within {budget:,} bytes"
        + (
            f", at {statistics.median(pressure.step_ms) / base:.2f}x AdamW's step time"
            if shown
            else ""
        )
    )
    if device.stopped:
        print(f"device: {device.stopped}")


if __name__ == "__main__":
    main()
