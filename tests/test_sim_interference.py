"""Worker interference read from a trace: ops that start while a host job runs, against those that do not."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.interference import busy_intervals, started_while_busy, worker_interference_of
from traces.io import Trace, spans_frame
from traces.recorder import Recorder
from traces.schema import Category

MS = 1_000_000


def synthetic(slowdown: float, steps: int = 40, job_every: int = 4) -> Trace:
    """Steps of forward (10 ms) + backward (20 ms); every ``job_every``-th step a worker job
    covers the whole step and the passes take ``1 + slowdown`` as long."""
    rec = Recorder(clock=lambda: 0)
    t = 0
    for step in range(1, steps + 1):
        busy = step % job_every == 0
        scale = 1.0 + slowdown if busy else 1.0
        begin = t
        for name, ms in (("forward", 10), ("backward", 20)):
            length = int(ms * MS * scale)
            rec.add_span(name, Category.COMPUTE, t, t + length, step=step, track="MainThread")
            t += length
        if busy:
            rec.add_span("refresh", Category.REFRESH, begin - MS // 2, t, track="refresh-worker_0")
        t += MS
    return Trace(metadata=None, spans=spans_frame(rec.spans), counters=None)  # type: ignore[arg-type]


@pytest.mark.parametrize("slowdown", [0.0, 0.1, 0.5])
def test_the_slowdown_of_ops_started_during_jobs_is_recovered(slowdown: float) -> None:
    assert worker_interference_of(synthetic(slowdown)) == pytest.approx(slowdown, abs=1e-6)


def test_no_worker_spans_means_no_interference() -> None:
    trace = synthetic(0.5)
    trace.spans = trace.spans[trace.spans["track"] == "MainThread"]
    assert worker_interference_of(trace) == 0.0


@given(
    st.lists(st.tuples(st.integers(0, 1000), st.integers(1, 200)), min_size=1, max_size=20),
    st.lists(st.integers(0, 1300), min_size=1, max_size=30),
)
@settings(max_examples=200, deadline=None)
def test_busy_intervals_agree_with_a_brute_force_check(
    jobs: list[tuple[int, int]], times: list[int]
) -> None:
    rec = Recorder(clock=lambda: 0)
    for start, length in jobs:
        rec.add_span("refresh", Category.REFRESH, start, start + length, track="refresh-worker_1")
    starts, ends = busy_intervals(spans_frame(rec.spans))
    assert np.all(starts[1:] > ends[:-1])  # merged and sorted
    at = np.array(times, dtype=np.int64)
    expected = [any(s <= x < s + n for s, n in jobs) for x in times]
    assert started_while_busy(at, starts, ends).tolist() == expected
