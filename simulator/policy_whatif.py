"""A run's own costs under another refresh policy: what if its refreshes ran asynchronously?

``replay_run`` simulates a run under the policies it used; ``policy_whatif``
keeps its workload (calibrated from its trace: measured, imported from a
profiler, or simulated) and changes only how the amortized refresh runs: the
staleness rule (``bounded:τ`` installs a refresh τ steps after it starts),
the number of refresh workers, where the jobs compute (``host`` workers, or
``device``: a low-priority stream that training preempts) and how fast they
compute there relative to the trace (``worker_speed``: a host CPU's eigh may
be much slower than the GPU's that was measured). The run's own replay is
simulated alongside, so the change is read between two simulations of the
same model rather than between a simulation and a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from runtime.policies.staleness import parse_staleness
from simulator.engine import SimResult, simulate
from simulator.interference import worker_interference_of
from simulator.replay import StepFigures, measured_figures, sim_config_of
from simulator.workload import workload_from_trace
from traces.io import read_trace


@dataclass(frozen=True)
class PolicyChange:
    staleness: str
    workers: int = 1
    root_device: str = "host"  # host workers, or device: a side stream
    worker_speed: float = 1.0  # >1: jobs faster than the trace's refresh ops

    def describe(self) -> str:
        speed = "" if self.worker_speed == 1.0 else f", speed x{self.worker_speed:g}"
        return f"{self.staleness}, {self.workers} {self.root_device} worker(s){speed}"


@dataclass(frozen=True)
class PolicyWhatIf:
    measured: StepFigures
    as_run: StepFigures  # the run's own policies, simulated
    changed: StepFigures  # the same workload under ``change``
    change: PolicyChange
    as_run_wait_ms: float
    changed_wait_ms: float
    result: SimResult


def _figures(result: SimResult) -> StepFigures:
    return StepFigures.of(result.step_ns, result.optimizer_ns, result.compute_ns)


def policy_whatif(run_dir: Path, change: PolicyChange) -> PolicyWhatIf:
    """Simulate ``run_dir``'s workload as it ran and under ``change``.

    Raises ``ValueError`` (a ``TraceError`` or ``WorkloadError``) when the
    trace cannot be read or lacks what the workload model needs.
    """
    staleness = parse_staleness(change.staleness)
    if change.workers < 1 or change.worker_speed <= 0:
        raise ValueError("workers must be at least 1 and worker_speed positive")
    trace = read_trace(run_dir)
    steps = int(pd.read_parquet(run_dir / "metrics.parquet")["step"].max())
    model = workload_from_trace(trace)
    base = sim_config_of(trace, steps, worker_interference_of(trace))
    as_run = simulate(model, base)
    config = replace(
        base,
        staleness=staleness,
        workers=change.workers,
        stagger=staleness.asynchronous,
        jobs_on_device=change.root_device == "device",
        worker_speed=change.worker_speed,
    )
    changed = simulate(model, config)
    return PolicyWhatIf(
        measured=measured_figures(run_dir),
        as_run=_figures(as_run),
        changed=_figures(changed),
        change=change,
        as_run_wait_ms=float(as_run.wait_ns.sum()) / 1e6 / steps,
        changed_wait_ms=float(changed.wait_ns.sum()) / 1e6 / steps,
        result=changed,
    )
