"""``metrics.parquet``: one row per training step, derived from a trace's spans and counters.

Derived, never recorded on its own: a measured, simulated, replayed or
imported run gets its metrics table from the same function, so the table and
the trace cannot disagree and every command that reads the table accepts
every kind of run. Columns and units are in ``SCHEMA.md`` (``metrics.parquet``).

Which spans count: the ``step`` spans name the steps and their track (the
training thread); ``refresh``, ``wait`` and ``transfer`` time is what that
track spent, since work on worker threads or copy engines is hidden unless
the training thread waits for it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from traces.atomic import atomic_write_bytes
from traces.io import Trace
from traces.schema import Category

__all__ = [
    "METRICS_COLUMNS",
    "METRICS_FILENAME",
    "METRICS_SCHEMA",
    "step_metrics",
    "write_metrics",
]

METRICS_FILENAME = "metrics.parquet"

METRICS_SCHEMA = pa.schema(
    [
        pa.field("step", pa.int64()),
        pa.field("loss", pa.float64()),
        pa.field("val_loss", pa.float64()),
        pa.field("lr", pa.float64()),
        pa.field("step_time_ns", pa.int64()),
        pa.field("forward_ns", pa.int64()),
        pa.field("backward_ns", pa.int64()),
        pa.field("optimizer_ns", pa.int64()),
        pa.field("refresh_ns", pa.int64()),
        pa.field("wait_ns", pa.int64()),
        pa.field("transfer_ns", pa.int64()),
        pa.field("optimizer_state_bytes", pa.int64()),
    ]
)
METRICS_COLUMNS = tuple(METRICS_SCHEMA.names)


def _per_step(frame: pd.DataFrame, column: str, steps: pd.Index, how: str = "sum") -> pd.Series:
    grouped = frame.groupby("step")[column]
    values = grouped.sum() if how == "sum" else grouped.last()
    return values.reindex(steps)


def _within_steps(spans: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """``spans`` that lie inside a step span, their ``step`` set to that step's.

    By time, not by label: a tiered store's moves at a step boundary are
    labelled with the step they prepare, but the step that ran them paid.
    """
    starts = steps["start_ns"].to_numpy(dtype=np.int64)
    ends = steps["end_ns"].to_numpy(dtype=np.int64)
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    labels = steps["step"].to_numpy(dtype=np.int64)[order]
    span_start = spans["start_ns"].to_numpy(dtype=np.int64)
    index = np.searchsorted(starts, span_start, side="right") - 1
    found = index >= 0
    safe = np.where(found, index, 0)
    inside = found & (spans["end_ns"].to_numpy(dtype=np.int64) <= ends[safe])
    inside &= spans["category"].to_numpy() != Category.STEP.value
    kept = spans[inside]
    return kept.assign(step=labels[safe[inside]], duration=kept["end_ns"] - kept["start_ns"])


def step_metrics(trace: Trace) -> pd.DataFrame:
    """The metrics table of ``trace``: one row per ``step`` span, in step order.

    ``optimizer_ns`` is the part of the step after ``backward`` ended (the
    optimizer step, ``zero_grad`` and the loop's bookkeeping), less any
    collective the training thread ran there (a simulated all-reduce); a step
    without a ``backward`` span (a simulated first step) has none. Losses and
    the learning rate are NaN where the trace has no such counter (a simulated
    run), and ``optimizer_state_bytes`` is the ``state_bytes`` counters of the
    step summed over tiers, 0 where none was recorded.
    """
    spans = trace.spans
    steps_spans = spans[spans["category"] == Category.STEP.value]
    if steps_spans.empty:
        return METRICS_SCHEMA.empty_table().to_pandas()
    steps_spans = steps_spans.sort_values(["step", "start_ns"]).drop_duplicates("step")
    main_track = steps_spans["track"].iloc[0]
    steps = pd.Index(steps_spans["step"].astype("int64"), name="step")
    on_main = _within_steps(spans[spans["track"] == main_track], steps_spans)

    def total(selector: pd.Series) -> pd.Series:
        return _per_step(on_main[selector], "duration", steps).fillna(0).astype("int64")

    step_start = steps_spans.set_index("step")["start_ns"]
    step_end = steps_spans.set_index("step")["end_ns"]
    backward_end = on_main[on_main["name"] == "backward"].groupby("step")["end_ns"].max()
    collective = on_main[on_main["category"] == Category.COLLECTIVE.value]
    late = collective[collective["start_ns"] >= collective["step"].map(backward_end)]
    late_collective = _per_step(late, "duration", steps).fillna(0)
    after_backward = step_end.reindex(steps) - backward_end.reindex(steps) - late_collective
    optimizer = after_backward.fillna(0).clip(lower=0)

    counters = trace.counters

    def counter(name: str) -> pd.Series:
        sel = counters[(counters["name"] == name) & counters["step"].isin(steps)]
        return _per_step(sel, "value", steps, "last").astype("float64")

    state = counters[(counters["name"] == "state_bytes") & counters["step"].isin(steps)]
    state_last = state.sort_values("time_ns").groupby(["step", "key"], dropna=False)["value"].last()
    state_bytes = state_last.groupby(level="step").sum().reindex(steps).fillna(0)

    frame = pd.DataFrame(
        {
            "step": steps.to_numpy(dtype=np.int64),
            "loss": counter("loss").to_numpy(),
            "val_loss": counter("val_loss").to_numpy(),
            "lr": counter("lr").to_numpy(),
            "step_time_ns": (step_end - step_start).reindex(steps).to_numpy(dtype=np.int64),
            "forward_ns": total(on_main["name"] == "forward").to_numpy(),
            "backward_ns": total(on_main["name"] == "backward").to_numpy(),
            "optimizer_ns": optimizer.to_numpy(dtype=np.int64),
            "refresh_ns": total(on_main["category"] == Category.REFRESH.value).to_numpy(),
            "wait_ns": total(on_main["category"] == Category.WAIT.value).to_numpy(),
            "transfer_ns": total(on_main["category"] == Category.TRANSFER.value).to_numpy(),
            "optimizer_state_bytes": state_bytes.to_numpy(dtype=np.int64),
        }
    )
    return pa.Table.from_pandas(frame, schema=METRICS_SCHEMA, preserve_index=False).to_pandas()


def write_metrics(path: Path, frame: pd.DataFrame) -> None:
    """Write ``frame`` (``step_metrics``' columns) to ``path`` atomically."""
    table = pa.Table.from_pandas(frame, schema=METRICS_SCHEMA, preserve_index=False)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue())
