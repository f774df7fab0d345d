"""Long runs in closed form: simulate until the steps repeat, then repeat them.

A run's events follow the plan's due rule, which repeats every
``precondition_frequency`` updates (staggered offsets included), and the
policies' decisions follow the events. Once the event model has shown the
same period of steps ``REPEATS`` times in a row (step, compute, optimizer,
wait and copy times, link bytes: every figure, exactly), nothing differs
from one period to the next, and the rest of the run is that period
repeated. A run that does not settle (adaptive staleness learning job
times, a pressure placement still moving state) is simulated whole, step
by step; so is any run too short to gain from this.

The trace (``SimResult.recorder``) then holds the event-simulated steps
only; the per-step arrays and link totals cover the whole run. The cross-
check against the event model is in ``tests/test_sim_llm.py``.
"""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np

from simulator.engine import SimConfig, SimResult, has_work, simulate
from simulator.links import LinkBusy
from simulator.workload import WorkloadModel

__all__ = ["LONG_RUN_BLOCK_STEPS", "REPEATS", "prefix_steps", "simulate_long"]

REPEATS = 3
"""Identical periods in a row before the rest of the run is taken to repeat them."""
LONG_RUN_BLOCK_STEPS = 200_000
"""Below this many (working block x step) events, the whole run is simulated."""


def prefix_steps(model: WorkloadModel, period: int) -> int:
    """Steps simulated event by event: warm-up (first refreshes, the staleness bound, the
    first call) and ``REPEATS`` periods to compare."""
    warm_up = 2 * period + model.reference_tau + model.start_preconditioning_step + 2
    return warm_up + REPEATS * period


def _arrays(result: SimResult) -> dict[str, np.ndarray]:
    return {
        "step_ns": result.step_ns,
        "compute_ns": result.compute_ns,
        "optimizer_ns": result.optimizer_ns,
        "wait_ns": result.wait_ns,
        "transfer_wait_ns": result.transfer_wait_ns,
        "link_bytes": result.link_bytes,
    }


def _settled(result: SimResult, period: int) -> bool:
    for values in _arrays(result).values():
        if values.size == 0:
            continue
        last = values[-period:]
        for k in range(2, REPEATS + 1):
            if not np.array_equal(values[-k * period : -(k - 1) * period], last):
                return False
    return True


def _extend(values: np.ndarray, period: int, steps: int) -> np.ndarray:
    if values.size == 0:
        return values
    more = steps - values.size
    return np.concatenate([values, np.resize(values[-period:], more)])


def _busy(result: SimResult, period: int, simulated: int, steps: int) -> LinkBusy:
    """Link totals: the simulated steps', plus the last period's per-step counters repeated."""
    per_step = {f.name: np.zeros(period, dtype=np.int64) for f in fields(LinkBusy)}
    first = simulated - period + 1  # step numbers are 1-based
    for c in result.recorder.counters:
        if c.name == "link_busy_ns" and c.step >= first:
            per_step[f"{c.key}_ns"][c.step - first] += int(c.value)
    more = steps - simulated
    totals = {
        name: getattr(result.link_busy, name) + int(np.resize(series, more).sum())
        for name, series in per_step.items()
    }
    return LinkBusy(**totals)


def simulate_long(model: WorkloadModel, config: SimConfig, period: int) -> tuple[SimResult, int]:
    """The run of ``config.steps``, and how many of them the event model simulated."""
    working = sum(1 for b in model.blocks if has_work(b))
    prefix = prefix_steps(model, max(1, period))
    if config.steps <= prefix or working * config.steps < LONG_RUN_BLOCK_STEPS:
        return simulate(model, config), config.steps
    head = simulate(model, replace(config, steps=prefix))
    if not _settled(head, period):
        return simulate(model, config), config.steps
    arrays = {name: _extend(v, period, config.steps) for name, v in _arrays(head).items()}
    result = SimResult(
        recorder=head.recorder,
        peak_device_state_bytes=head.peak_device_state_bytes,
        link_busy=_busy(head, period, prefix, config.steps),
        **arrays,
    )
    return result, prefix
