"""Optimizer-state bytes on the device and step time, per placement policy, vs `device`.

Trains the default GPT (SOAP, unless --optimizer) for a few steps under each
placement policy with the real tiered store, in one run, interleaving the
policies round by round, and prints:

- device-tier bytes of optimizer state at rest between uses (peak over step
  boundaries; staged copies during a block's update are transient) relative to
  `device`, and against AdamW's 2 moments (the goal under `lifecycle`: all
  preconditioner matrices off the device between uses);
- median step time relative to `device` (on a CPU-only machine the "device"
  is emulated: host<->device copies are real memcpy, so this measures the
  executor's copying cost, not PCIe).

    python benchmarks/bench_tiers.py             # ~5 minutes on 2 cores
    python benchmarks/bench_tiers.py --quick     # seconds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asteria_bench.config import RunConfig
from asteria_bench.train import train
from benchmarks._common import (
    environment_line,
    load_average,
    peak_device_state_bytes,
    set_threads,
)

POLICIES = ("device", "host", "lifecycle", "pressure")


def run_once(
    optimizer: str, placement: str, steps: int, quick: bool, spill_dir: str | None
) -> tuple[int, float, float]:
    """(peak device bytes of optimizer state, median step ms, median transfer ms)."""
    config = RunConfig()
    config.optim.name = optimizer
    config.train.steps = steps
    config.train.eval_every = steps
    config.train.eval_batches = 1
    config.train.torch_threads = 1
    config.runtime.placement = placement
    config.runtime.spill_dir = spill_dir if placement == "pressure" else None
    if placement == "pressure":
        config.runtime.placement = "pressure:1:2"
        config.runtime.device_budget = "1.5MiB" if quick else "4MiB"
        config.runtime.host_budget = "1.5MiB" if quick else "8MiB"
    if quick:
        config.model.n_layer, config.model.n_embd, config.model.n_head = 1, 32, 2
        config.model.context, config.train.batch_size, config.data.corpus_bytes = 16, 4, 20_000
    result = train(config)
    steady = result.metrics[1:] or result.metrics
    return (
        peak_device_state_bytes(result.recorder.counters),
        statistics.median(m.step_time_ns for m in steady) / 1e6,
        statistics.median(m.transfer_ns for m in steady) / 1e6,
    )


def moments_bytes(quick: bool) -> int:
    """AdamW's two fp32 moments for the same model: the lifecycle goal."""
    from asteria_bench.workload.model import GPT, GPTConfig

    cfg = GPTConfig(n_layer=1, n_embd=32, n_head=2, context=16) if quick else GPTConfig()
    return 2 * 4 * GPT(cfg).num_parameters()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--optimizer", default="soap", choices=["soap", "shampoo", "kl-shampoo"])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds over the policies"
    )
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    set_threads(1)
    steps, rounds = (6, 1) if args.quick else (args.steps, args.rounds)
    print(environment_line())
    print(
        f"{args.optimizer}, default GPT{' (tiny, --quick)' if args.quick else ''}, {steps} steps x {rounds} rounds per policy;"
        " pressure = pressure:1:2 with a small device/host budget and an NVMe spill folder"
    )
    peak: dict[str, int] = {}
    times: dict[str, list[float]] = {p: [] for p in POLICIES}
    transfer: dict[str, list[float]] = {p: [] for p in POLICIES}
    with tempfile.TemporaryDirectory() as spill_dir:
        for _ in range(rounds):
            for policy in POLICIES:
                device_bytes, step_ms, transfer_ms = run_once(
                    args.optimizer, policy, steps, args.quick, spill_dir
                )
                peak[policy] = device_bytes
                times[policy].append(step_ms)
                transfer[policy].append(transfer_ms)
    moments = moments_bytes(args.quick)
    base_bytes, base_ms = peak["device"], statistics.median(times["device"])
    print()
    print(
        "| placement | peak device bytes | vs device | vs AdamW's 2 moments | median step ms | vs device | median transfer ms |"
    )
    print(
        "|-----------|-------------------|-----------|----------------------|----------------|-----------|--------------------|"
    )
    for policy in POLICIES:
        ms = statistics.median(times[policy])
        print(
            f"| {policy:<9} | {peak[policy]:>17,} | {peak[policy] / base_bytes:9.3f} | {peak[policy] / moments:20.3f} |"
            f" {ms:14.2f} | {ms / base_ms:9.2f} | {statistics.median(transfer[policy]):18.2f} |"
        )
    goal = peak["lifecycle"] <= moments
    print(f"\nlifecycle device bytes <= AdamW's 2 moments: {'met' if goal else 'NOT met'}")
    print(f"load average at end {load_average()}")


if __name__ == "__main__":
    main()
