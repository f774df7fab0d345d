"""Replay: simulate a measured run on its own measured costs and compare.

``replay_run`` calibrates the workload model on a run's trace and simulates
the same steps under the same policies; ``predict_run`` calibrates on one run
(say a synchronous one) and predicts another that it never looked at (say a
bounded-staleness one), which is the honest test of the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from runtime.policies.staleness import StalenessPolicy, parse_staleness
from simulator.engine import SimConfig, SimResult, simulate
from simulator.workload import workload_from_trace
from traces.io import Trace, read_trace


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


def measured_figures(run_dir: Path) -> StepFigures:
    metrics = pd.read_parquet(run_dir / "metrics.parquet")
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
    )


def _simulated_figures(result: SimResult) -> StepFigures:
    return StepFigures.of(result.step_ns, result.optimizer_ns, result.compute_ns)


def replay_run(run_dir: Path) -> tuple[Fidelity, SimResult]:
    trace = read_trace(run_dir)
    steps = int(pd.read_parquet(run_dir / "metrics.parquet")["step"].max())
    result = simulate(workload_from_trace(trace), sim_config_of(trace, steps))
    return Fidelity(measured_figures(run_dir), _simulated_figures(result)), result


def predict_run(
    calibration_dir: Path, target_dir: Path, worker_interference: float = 0.0
) -> tuple[Fidelity, SimResult]:
    """Held-out: the model comes from ``calibration_dir`` only; ``target_dir``
    contributes its policies and step count, and is then used for scoring.

    ``worker_interference`` is how much a running host job slows the training
    thread on the calibration machine (``runtime.probe.worker_interference``);
    a synchronous run cannot show it."""
    model = workload_from_trace(read_trace(calibration_dir))
    target = read_trace(target_dir)
    steps = int(pd.read_parquet(target_dir / "metrics.parquet")["step"].max())
    result = simulate(model, sim_config_of(target, steps, worker_interference))
    return Fidelity(measured_figures(target_dir), _simulated_figures(result)), result
