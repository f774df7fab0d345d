"""The Chrome Trace Event export that ui.perfetto.dev opens."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.samples import METADATA
from traces.io import Trace, counters_frame, read_trace, spans_frame, write_trace
from traces.perfetto import PERFETTO_FILENAME, chrome_trace_events, export_chrome_trace
from traces.schema import (
    Category,
    CounterSample,
    Span,
    Tier,
)

T0 = 1_000_000_000  # an arbitrary clock origin; the export must subtract it

SPANS = [
    # a worker track listed first, to check that the main thread still gets tid 1
    Span(
        "refresh",
        Category.REFRESH,
        T0 + 2_000,
        T0 + 9_000,
        "worker-b",
        step=0,
        block="b0",
        detail="v1",
    ),
    Span("step", Category.STEP, T0 + 1_000, T0 + 10_500, "MainThread", step=0),
    Span("forward", Category.COMPUTE, T0 + 1_500, T0 + 3_000, "MainThread", step=0),
    Span(
        "h2d",
        Category.TRANSFER,
        T0 + 4_000,
        T0 + 4_250,
        "copy",
        step=0,
        block="b0",
        bytes=4096,
        tier_from=Tier.HOST,
        tier_to=Tier.DEVICE,
    ),
    Span("install", Category.REFRESH, T0 + 5_000, T0 + 6_000, "worker-a"),
    Span("evict", Category.EVENT, T0 + 7_000, T0 + 7_000, "MainThread", step=0, detail="b0"),
    Span("spill", Category.EVENT, T0 + 7_000, T0 + 8_000, "MainThread", step=0),
]
COUNTERS = [
    CounterSample("loss", T0 + 500, 3.25, step=0),  # the earliest timestamp of the trace
    CounterSample("state_bytes", T0 + 10_500, 2048.0, step=0, key="host"),
    CounterSample("gpu_power_w", T0 + 10_500, float("nan"), step=0, key="0"),
]


def make_trace(spans: list[Span] = SPANS, counters: list[CounterSample] = COUNTERS) -> Trace:
    return Trace(METADATA, spans_frame(spans), counters_frame(counters))


def by_name(events: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (event,) = [e for e in events if e["name"] == name and e["ph"] != "M"]
    return event


def test_event_kinds_and_microsecond_times() -> None:
    events = chrome_trace_events(make_trace())
    forward = by_name(events, "forward")
    assert forward["ph"] == "X" and forward["cat"] == "compute"
    assert forward["ts"] == pytest.approx(1.0)  # (1_500 - 500) ns from the earliest counter
    assert forward["dur"] == pytest.approx(1.5)
    assert isinstance(forward["ts"], float) and isinstance(forward["dur"], float)
    evict = by_name(events, "evict")
    assert evict["ph"] == "i" and evict["s"] == "t" and "dur" not in evict
    assert evict["ts"] == pytest.approx(6.5)
    assert by_name(events, "spill")["ph"] == "X"
    assert by_name(events, "loss") == {
        "ph": "C",
        "name": "loss",
        "pid": 1,
        "tid": 1,
        "ts": 0.0,
        "args": {"value": 3.25},
    }
    assert by_name(events, "state_bytes[host]")["args"] == {"value": 2048.0}
    assert not [e for e in events if e["name"].startswith("gpu_power_w")]  # NaN is dropped
    assert {e["pid"] for e in events} == {1}


def test_span_args_only_when_set() -> None:
    events = chrome_trace_events(make_trace())
    assert by_name(events, "h2d")["args"] == {
        "step": 0,
        "block": "b0",
        "bytes": 4096,
        "tier_from": "host",
        "tier_to": "device",
    }
    assert by_name(events, "refresh")["args"] == {"step": 0, "block": "b0", "detail": "v1"}
    assert by_name(events, "install")["args"] == {}


def test_one_thread_per_track_main_first_then_sorted() -> None:
    events = chrome_trace_events(make_trace())
    names = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert names == {1: "MainThread", 2: "copy", 3: "worker-a", 4: "worker-b"}
    process = [e for e in events if e["name"] == "process_name"]
    assert len(process) == 1 and "r1" in process[0]["args"]["name"]
    tid_of = {track: tid for tid, track in names.items()}
    for span in SPANS:
        assert by_name(events, span.name)["tid"] == tid_of[span.track]


def test_track_with_step_spans_counts_as_main() -> None:
    spans = [
        Span("job", Category.REFRESH, 0, 5, "a-worker"),
        Span("step", Category.STEP, 0, 10, "rank0/train"),
    ]
    events = chrome_trace_events(make_trace(spans, []))
    names = [e["args"]["name"] for e in events if e["name"] == "thread_name"]
    assert names == ["rank0/train", "a-worker"]


@pytest.mark.parametrize(
    ("filename", "flag", "compressed"),
    [
        (PERFETTO_FILENAME, None, False),
        (PERFETTO_FILENAME + ".gz", None, True),
        (PERFETTO_FILENAME, True, True),
        (PERFETTO_FILENAME + ".gz", False, False),
    ],
)
def test_export_writes_valid_json(
    tmp_path: Path, filename: str, flag: bool | None, compressed: bool
) -> None:
    trace = make_trace()
    path = export_chrome_trace(trace, tmp_path / filename, gzip=flag)
    assert path == tmp_path / filename
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") is compressed
    document = json.loads(gzip.decompress(raw) if compressed else raw)
    assert document["traceEvents"] == chrome_trace_events(trace)
    assert document["otherData"]["run_id"] == "r1"
    assert os.listdir(tmp_path) == [filename]


def test_export_of_a_read_trace(tmp_path: Path) -> None:
    write_trace(tmp_path, METADATA, SPANS, COUNTERS)
    trace = read_trace(tmp_path)
    path = export_chrome_trace(trace, tmp_path / "trace" / PERFETTO_FILENAME)
    events = json.loads(path.read_text())["traceEvents"]
    assert events == chrome_trace_events(make_trace())
    kinds = sorted(e["ph"] for e in events)
    assert kinds.count("X") == 6 and kinds.count("i") == 1 and kinds.count("C") == 2


def test_empty_trace_exports_only_the_process() -> None:
    events = chrome_trace_events(make_trace([], []))
    assert [e["name"] for e in events] == ["process_name"]
