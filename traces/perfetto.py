"""Export a trace as Chrome Trace Event JSON, the format ui.perfetto.dev opens directly.

The trace itself stays in Parquet (compact, typed, what the reports read);
this export exists so that a person can look at one run on a timeline. It maps
one run to one process, each span track (a Python thread, a worker, a stream)
to one thread row, spans to complete ("X") events, zero-length ``EVENT`` spans
to instant ("i") events and counters to counter ("C") tracks.

Times in the file are microseconds (the format's unit) as floats, relative to
the earliest timestamp in the trace, so nanosecond resolution survives and
the timeline starts at zero.
"""

from __future__ import annotations

import gzip as gzip_module
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from traces.atomic import atomic_write_bytes
from traces.io import Trace
from traces.schema import NO_STEP, Category

__all__ = ["MAIN_TRACK_NAMES", "PERFETTO_FILENAME", "chrome_trace_events", "export_chrome_trace"]

PERFETTO_FILENAME = "trace.perfetto.json"
"""The export's conventional name inside a run's ``trace/`` folder."""

MAIN_TRACK_NAMES = ("MainThread", "main")
"""Track names taken to be the training loop's thread, which is shown first."""

_PID = 1
_SPAN_ARGS = ("block", "tier_from", "tier_to", "detail")


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _column(frame: pd.DataFrame, name: str) -> list[Any]:
    return frame[name].tolist() if name in frame else []


def _track_order(spans: pd.DataFrame) -> list[str]:
    """Main track(s) first, then the rest by name, so tids are the same run to run."""
    if spans.empty:
        return []
    tracks = sorted(set(spans["track"].tolist()))
    step_tracks = set(spans.loc[spans["category"] == Category.STEP.value, "track"].tolist())

    def key(track: str) -> tuple[int, str]:
        return (0 if track in MAIN_TRACK_NAMES or track in step_tracks else 1, track)

    return sorted(tracks, key=key)


def _origin_ns(trace: Trace) -> int:
    starts = [int(trace.spans["start_ns"].min())] if not trace.spans.empty else []
    if not trace.counters.empty:
        starts.append(int(trace.counters["time_ns"].min()))
    return min(starts) if starts else 0


def _counter_name(name: str, key: Any) -> str:
    return f"{name}[{key}]" if _present(key) else name


def chrome_trace_events(trace: Trace) -> list[dict[str, Any]]:
    """The ``traceEvents`` list: metadata events, then spans, then counters."""
    md = trace.metadata
    origin_ns = _origin_ns(trace)

    def us(ns: int) -> float:
        return (int(ns) - origin_ns) / 1000.0

    events: list[dict[str, Any]] = [
        {
            "ph": "M",
            "name": "process_name",
            "pid": _PID,
            "tid": 0,
            "args": {"name": f"{md.run_id} ({md.kind}, {md.optimizer} on {md.device})"},
        }
    ]
    tids: dict[str, int] = {}
    for index, track in enumerate(_track_order(trace.spans)):
        tid = index + 1
        tids[track] = tid
        events.append(
            {"ph": "M", "name": "thread_name", "pid": _PID, "tid": tid, "args": {"name": track}}
        )
        events.append(
            {
                "ph": "M",
                "name": "thread_sort_index",
                "pid": _PID,
                "tid": tid,
                "args": {"sort_index": index},
            }
        )

    s = trace.spans
    for name, category, start, end, track, step, nbytes, *extra in zip(
        _column(s, "name"),
        _column(s, "category"),
        _column(s, "start_ns"),
        _column(s, "end_ns"),
        _column(s, "track"),
        _column(s, "step"),
        _column(s, "bytes"),
        *(_column(s, a) for a in _SPAN_ARGS),
        strict=True,
    ):
        args: dict[str, Any] = {}
        if step != NO_STEP:
            args["step"] = int(step)
        if nbytes:
            args["bytes"] = int(nbytes)
        args.update({a: v for a, v in zip(_SPAN_ARGS, extra, strict=True) if _present(v)})
        event: dict[str, Any] = {
            "name": name,
            "cat": category,
            "pid": _PID,
            "tid": tids[track],
            "ts": us(start),
        }
        if category == Category.EVENT.value and end == start:
            event.update(ph="i", s="t")
        else:
            event.update(ph="X", dur=(int(end) - int(start)) / 1000.0)
        event["args"] = args
        events.append(event)

    # Counters are process-scoped in Perfetto; the tid only has to name a thread that exists.
    counter_tid = 1 if tids else 0
    c = trace.counters
    for name, time_ns, value, key in zip(
        _column(c, "name"),
        _column(c, "time_ns"),
        _column(c, "value"),
        _column(c, "key"),
        strict=True,
    ):
        if not math.isfinite(value):
            continue  # JSON has no NaN/Infinity, and a gap reads better than a fake number
        events.append(
            {
                "ph": "C",
                "name": _counter_name(name, key),
                "pid": _PID,
                "tid": counter_tid,
                "ts": us(time_ns),
                "args": {"value": float(value)},
            }
        )
    return events


def export_chrome_trace(trace: Trace, path: Path, *, gzip: bool | None = None) -> Path:
    """Write ``trace`` as Chrome Trace Event JSON to ``path`` (atomically) and return it.

    ``gzip=None`` compresses when ``path`` ends in ``.gz``; Perfetto opens both.
    """
    path = Path(path)
    md = trace.metadata
    document = {
        "traceEvents": chrome_trace_events(trace),
        "displayTimeUnit": "ms",
        "otherData": {
            "run_id": md.run_id,
            "kind": md.kind,
            "optimizer": md.optimizer,
            "device": md.device,
            "git_revision": md.git_revision or "",
            "schema_version": str(md.schema_version),
        },
    }
    data = json.dumps(document, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if gzip if gzip is not None else path.name.endswith(".gz"):
        data = gzip_module.compress(data, compresslevel=6, mtime=0)
    atomic_write_bytes(path, data)
    return path
