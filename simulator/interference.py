"""How much a running host refresh job slowed the training thread, read from a run's trace.

Host workers share the machine's cores and memory bandwidth with training:
on the 2-core machines this project measures on, a forward pass that starts
while a worker computes an eigendecomposition runs measurably longer. The
engine models that as ``SimConfig.worker_interference`` (a training op that
starts while a job runs takes ``1 + interference`` times as long), and this
module measures the same quantity where the trace shows it: the median
forward and backward pass that began while a worker's ``refresh`` span was
open, against the median of those that began with every worker idle (and
the same for the optimizer's per-block ops, which is where a job submitted
in the optimizer step lands).

A synchronous run has no worker spans, so a held-out prediction from one
cannot learn it this way (``runtime.probe.worker_interference`` measures a
stand-in on the machine instead).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from traces.io import Trace

WORKER_TRACK_PREFIX = "refresh-worker"
MEASURED_OPS = ("forward", "backward", "factor_update", "precondition")
MIN_SAMPLES = 3


def busy_intervals(spans: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (ns) of the times at least one worker ran a job, merged and sorted."""
    jobs = spans[
        (spans["name"] == "refresh")
        & spans["track"].astype(str).str.startswith(WORKER_TRACK_PREFIX)
    ]
    order = np.argsort(jobs["start_ns"].to_numpy(), kind="stable")
    starts = jobs["start_ns"].to_numpy()[order]
    ends = jobs["end_ns"].to_numpy()[order]
    merged_starts: list[int] = []
    merged_ends: list[int] = []
    for s, e in zip(starts, ends, strict=True):
        if merged_ends and s <= merged_ends[-1]:
            merged_ends[-1] = max(merged_ends[-1], int(e))
        else:
            merged_starts.append(int(s))
            merged_ends.append(int(e))
    return np.array(merged_starts, dtype=np.int64), np.array(merged_ends, dtype=np.int64)


def started_while_busy(at: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """For each time in ``at``: whether a merged busy interval holds it."""
    if starts.size == 0:
        return np.zeros(at.shape, dtype=bool)
    index = np.searchsorted(starts, at, side="right") - 1
    inside = index >= 0
    inside[inside] = ends[index[inside]] > at[inside]
    return inside


def worker_interference_of(trace: Trace) -> float:
    """The training thread's slowdown while a host job runs (0.0 where the trace cannot tell).

    A weighted mean over the training ops of (median busy / median idle − 1),
    each weighted by its idle median times its count (its share of a step's
    time); an op needs at least three samples on either side. Negative values
    (noise) are 0.
    """
    spans = trace.spans
    starts, ends = busy_intervals(spans)
    if starts.size == 0:
        return 0.0
    slowdowns: list[float] = []
    weights: list[float] = []
    for name in MEASURED_OPS:
        ops = spans[(spans["name"] == name) & (spans["step"] > 1)]
        begin = ops["start_ns"].to_numpy(dtype=np.int64)
        duration = (ops["end_ns"] - ops["start_ns"]).to_numpy(dtype=np.float64)
        busy = started_while_busy(begin, starts, ends)
        if busy.sum() < MIN_SAMPLES or (~busy).sum() < MIN_SAMPLES:
            continue
        idle = float(np.median(duration[~busy]))
        slowdowns.append(float(np.median(duration[busy])) / idle - 1.0)
        weights.append(idle * len(duration))
    if not weights:
        return 0.0
    return max(0.0, float(np.average(slowdowns, weights=weights)))
