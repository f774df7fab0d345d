"""Replay: simulate a measured run on its own measured costs and compare.

``replay_run`` calibrates the workload model on a run's trace and simulates
the same steps under the same policies; ``predict_run`` calibrates on one run
(say a synchronous one) and predicts another that it never looked at (say a
bounded-staleness one), which is the honest test of the model.

A run under a tiered placement is replayed with its placement policy, budgets
and NVMe tier, on the link the runtime saw (``runtime.tiers.link_of``: a CPU
is a PCIe-like device). Link bandwidths come from the run's own transfer
spans (per direction, the median over steps of bytes per ns), else from the ``local`` hardware
profile (``asteria-bench profile --out simulator/profiles/local.toml``), else
from ``ASSUMED_RATES``. On a CPU the runtime copies on the training thread,
so the replay does not overlap copies with compute; on a GPU it does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from runtime.policies.placement import LinkKind, link_of_gpu, parse_placement
from runtime.policies.staleness import StalenessPolicy, parse_staleness
from simulator.engine import SimConfig, SimResult, simulate
from simulator.interference import worker_interference_of
from simulator.links import LinkRates
from simulator.multirank import Layout, calibrate, is_multirank, simulate_ranks
from simulator.placement_model import UNLIMITED_BYTES, MemoryBudget
from simulator.profiles import ProfileError, load_profile
from simulator.tiering import Tiering
from simulator.workload import workload_from_trace
from traces.io import Trace, read_trace
from traces.schema import Category, RunMetadata, Tier
from traces.units import parse_size

ASSUMED_RATES = LinkRates(
    kind=LinkKind.PCIE,
    h2d_bytes_per_ns=10.0,
    d2h_bytes_per_ns=10.0,
    nvme_read_bytes_per_ns=2.0,
    nvme_write_bytes_per_ns=1.0,
    nvme_latency_ns=100_000,
)
"""Assumed when a run measured no copy and no ``local`` profile exists: a host
memcpy of about 10 GB/s, a consumer NVMe of about 2 GB/s read, 1 GB/s write."""


@dataclass(frozen=True)
class StepFigures:
    median_ms: float
    p99_ms: float
    overhead: float  # mean optimizer time / mean forward+backward

    @staticmethod
    def of(step_ns: np.ndarray, optimizer_ns: np.ndarray, compute_ns: np.ndarray) -> StepFigures:
        compute = (
            float(np.mean(compute_ns[compute_ns > 0])) if np.any(compute_ns > 0) else float("nan")
        )
        return StepFigures(
            median_ms=float(np.median(step_ns)) / 1e6,
            p99_ms=float(np.percentile(step_ns, 99)) / 1e6,
            overhead=float(np.mean(optimizer_ns)) / compute if compute else float("nan"),
        )


@dataclass(frozen=True)
class Fidelity:
    measured: StepFigures
    simulated: StepFigures

    def error(self, field: str) -> float:
        """Relative error of the simulated figure (0.05 = 5 %)."""
        m, s = getattr(self.measured, field), getattr(self.simulated, field)
        return abs(s - m) / abs(m) if m else float("nan")


METRICS_COLUMNS = ("step_time_ns", "optimizer_ns", "forward_ns", "backward_ns")


def measured_figures(run_dir: Path) -> StepFigures:
    """Step figures from ``metrics.parquet``; a file without its columns is a ``ValueError``."""
    path = run_dir / "metrics.parquet"
    try:
        metrics = pd.read_parquet(path)
    except Exception as exc:  # untrusted bytes: pyarrow raises several types
        raise ValueError(f"{path}: not a readable Parquet file ({type(exc).__name__})") from None
    missing = [c for c in METRICS_COLUMNS if c not in metrics.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column {missing[0]!r} (expected {', '.join(METRICS_COLUMNS)})"
        )
    if metrics.empty:
        raise ValueError(f"{path}: no steps")
    return StepFigures.of(
        metrics["step_time_ns"].to_numpy(),
        metrics["optimizer_ns"].to_numpy(),
        (metrics["forward_ns"] + metrics["backward_ns"]).to_numpy(),
    )


def sim_config_of(trace: Trace, steps: int, worker_interference: float = 0.0) -> SimConfig:
    """The policies a run used, as the simulator's configuration."""
    policies = trace.metadata.policies
    staleness: StalenessPolicy = parse_staleness(
        policies.get("staleness", "sync") if policies.get("staleness") != "none" else "sync"
    )
    return SimConfig(
        steps=steps,
        staleness=staleness,
        workers=int(policies.get("workers", 1)),
        stagger=policies.get("stagger") == "on",
        worker_interference=worker_interference,
        tiering=tiering_of_run(trace),
        overlap=trace.metadata.device.startswith("cuda"),
    )


def link_of_run(meta: RunMetadata) -> LinkKind:
    """The CPU-GPU link the runtime chose for the run (``runtime.tiers.link_of``)."""
    if not meta.device.startswith("cuda") or not meta.hardware.gpus:
        return LinkKind.PCIE
    return link_of_gpu(meta.hardware.gpus[0].name)


def tiering_of_run(trace: Trace) -> Tiering | None:
    """The run's placement, budgets and NVMe tier; None when all its state rested on the device."""
    meta = trace.metadata
    placement = meta.policies.get("placement", "device")
    if placement == "device":
        return None
    link = link_of_run(meta)
    runtime = meta.config.get("runtime", {}) if isinstance(meta.config, dict) else {}

    def budget(key: str) -> int:
        text = runtime.get(key)
        return UNLIMITED_BYTES if text is None else parse_size(str(text))

    return Tiering(
        parse_placement(placement, link=link),
        link_rates_of(trace, link),
        MemoryBudget(
            device_budget_bytes=budget("device_budget"),
            host_budget_bytes=budget("host_budget"),
            nvme_available=runtime.get("spill_dir") is not None,
        ),
    )


def link_rates_of(trace: Trace, link: LinkKind, fallback: str = "local") -> LinkRates:
    """Bandwidths per direction measured by the run's copies (see the module docstring)."""
    spans = trace.spans
    spans = spans[(spans["end_ns"] > spans["start_ns"]) & (spans["bytes"] > 0)]
    moved = spans[spans["category"] == Category.TRANSFER.value]

    def median_rate(sel: pd.DataFrame) -> float | None:
        """Median over steps of the step's bytes / the step's copy time.

        Per step, not per copy: a median of per-copy rates would weigh a
        tensor of a few bytes (all fixed cost) like one of megabytes, and the
        replay would get the step's copy time wrong.
        """
        if sel.empty:
            return None
        per_step = sel.assign(ns=sel["end_ns"] - sel["start_ns"]).groupby("step")[["bytes", "ns"]]
        sums = per_step.sum()
        return float(np.median(sums["bytes"] / sums["ns"]))

    def between(frame: pd.DataFrame, src: Tier, dst: Tier) -> pd.DataFrame:
        return frame[(frame["tier_from"] == src.value) & (frame["tier_to"] == dst.value)]

    try:
        default = LinkRates.from_profile(load_profile(fallback))
    except ProfileError:
        default = ASSUMED_RATES
    h2d = median_rate(between(moved, Tier.HOST, Tier.DEVICE))
    d2h = median_rate(between(moved, Tier.DEVICE, Tier.HOST))
    read = median_rate(spans[spans["name"] == "spill_read"])
    write = median_rate(spans[spans["name"] == "spill_write"])
    measured = h2d is not None or d2h is not None
    return LinkRates(
        kind=link,
        h2d_bytes_per_ns=h2d or d2h or default.h2d_bytes_per_ns,
        d2h_bytes_per_ns=d2h or h2d or default.d2h_bytes_per_ns,
        nvme_read_bytes_per_ns=read or default.nvme_read_bytes_per_ns,
        nvme_write_bytes_per_ns=write or default.nvme_write_bytes_per_ns,
        copy_latency_ns=0 if measured else default.copy_latency_ns,
        nvme_latency_ns=0 if read or write else default.nvme_latency_ns,
    )


def _simulated_figures(result: SimResult) -> StepFigures:
    return StepFigures.of(result.step_ns, result.optimizer_ns, result.compute_ns)


def replay_run(run_dir: Path) -> tuple[Fidelity, SimResult]:
    """The run simulated on its own costs, its workers' measured interference included.

    A data-parallel run is replayed from all of its ranks' traces
    (``simulator.multirank``).
    """
    trace = read_trace(run_dir)
    steps = int(pd.read_parquet(run_dir / "metrics.parquet")["step"].max())
    config = sim_config_of(trace, steps, worker_interference_of(trace))
    if is_multirank(trace):
        result = simulate_ranks(calibrate(run_dir), Layout.of(trace), config)
    else:
        result = simulate(workload_from_trace(trace), config)
    return Fidelity(measured_figures(run_dir), _simulated_figures(result)), result


def predict_run(
    calibration_dir: Path, target_dir: Path, worker_interference: float = 0.0
) -> tuple[Fidelity, SimResult]:
    """Held-out: the model comes from ``calibration_dir`` only; ``target_dir``
    contributes its policies and step count, and is then used for scoring.

    ``worker_interference`` is how much a running host job slows the training
    thread on the calibration machine (``runtime.probe.worker_interference``);
    a synchronous run cannot show it."""
    calibration = read_trace(calibration_dir)
    target = read_trace(target_dir)
    steps = int(pd.read_parquet(target_dir / "metrics.parquet")["step"].max())
    config = sim_config_of(target, steps, worker_interference)
    if is_multirank(calibration):
        result = simulate_ranks(calibrate(calibration_dir), Layout.of(target), config)
    elif is_multirank(target):
        raise ValueError(
            f"{calibration_dir}: a run of one rank cannot calibrate a prediction of"
            f" {target_dir}'s {target.metadata.world_size} ranks (it measured no collective);"
            " calibrate on a data-parallel run"
        )
    else:
        result = simulate(workload_from_trace(calibration), config)
    return Fidelity(measured_figures(target_dir), _simulated_figures(result)), result
