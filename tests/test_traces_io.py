"""Trace files on disk: round trips, atomic writes, and one-line errors on bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from traces import atomic
from traces.atomic import atomic_write_bytes, atomic_write_text, atomic_writer, fsync_dir
from traces.io import (
    COUNTERS_FILENAME,
    METADATA_FILENAME,
    SPANS_FILENAME,
    SPANS_SCHEMA,
    TRACE_DIRNAME,
    TraceError,
    counters_frame,
    metadata_from_dict,
    metadata_to_dict,
    read_trace,
    spans_frame,
    write_trace,
)
from traces.recorder import Recorder
from traces.schema import (
    Category,
    CounterSample,
    GpuInfo,
    HardwareInfo,
    RunMetadata,
    SoftwareInfo,
    Span,
    Tier,
)

FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def make_metadata(**overrides: Any) -> RunMetadata:
    fields: dict[str, Any] = dict(
        run_id="run-1",
        kind="measured",
        created_utc="2026-01-02T03:04:05Z",
        hardware=HardwareInfo(
            cpu_model="Test CPU",
            cpu_cores_logical=8,
            cpu_cores_physical=4,
            memory_bytes=64 << 30,
            gpus=(GpuInfo(0, "H100", 80 << 30, "550.54"),),
            hostname="box",
        ),
        software=SoftwareInfo("3.11.7", "2.13.0", "Linux", "0.1.0", cuda="12.4"),
        optimizer="shampoo",
        hyperparameters={"lr": 0.001, "betas": [0.9, 0.95], "precondition_frequency": 10},
        model={"layers": 2, "width": 64},
        policies={"placement": "all_device", "staleness": "sync"},
        seed=7,
        git_revision="abc123+dirty",
        device="cpu",
        config={"train": {"steps": 5}, "nested": [None, True, "x"]},
    )
    fields.update(overrides)
    return RunMetadata(**fields)


SPANS = [
    Span("step", Category.STEP, 100, 900, "MainThread", step=0),
    Span("forward", Category.COMPUTE, 110, 300, "MainThread", step=0),
    Span(
        "h2d",
        Category.TRANSFER,
        150,
        250,
        "copy",
        step=0,
        block="layers.0.w/0",
        bytes=4096,
        tier_from=Tier.HOST,
        tier_to=Tier.DEVICE,
    ),
    Span("refresh", Category.REFRESH, 200, 5000, "worker-0", step=0, block="b1", detail="3"),
    Span("evict", Category.EVENT, 400, 400, "MainThread", step=0),
]
COUNTERS = [
    CounterSample("loss", 900, 3.5, step=0),
    CounterSample("state_bytes", 900, 1024.0, step=0, key="host"),
]


def test_round_trip(tmp_path: Path) -> None:
    metadata = make_metadata()
    trace_dir = write_trace(tmp_path, metadata, SPANS, COUNTERS)
    assert trace_dir == tmp_path / TRACE_DIRNAME
    assert sorted(p.name for p in trace_dir.iterdir()) == sorted(
        [METADATA_FILENAME, SPANS_FILENAME, COUNTERS_FILENAME]
    )
    for where in (tmp_path, trace_dir):
        trace = read_trace(where)
        assert trace.metadata == metadata
        pd.testing.assert_frame_equal(trace.spans, spans_frame(SPANS))
        pd.testing.assert_frame_equal(trace.counters, counters_frame(COUNTERS))
    assert list(trace.spans.columns) == [f.name for f in dataclasses.fields(Span)]
    assert list(trace.counters.columns) == [f.name for f in dataclasses.fields(CounterSample)]
    row = trace.spans.iloc[2]
    assert (row["category"], row["tier_from"], row["tier_to"]) == ("transfer", "host", "device")
    assert type(row["category"]) is str
    assert row["bytes"] == 4096 and row["block"] == "layers.0.w/0"
    assert pd.isna(trace.spans.iloc[0]["block"]) and pd.isna(trace.spans.iloc[0]["tier_from"])
    assert trace.counters["key"].tolist()[1] == "host"


def test_empty_trace_round_trips_with_typed_columns(tmp_path: Path) -> None:
    write_trace(tmp_path, make_metadata(), [], [])
    trace = read_trace(tmp_path)
    assert trace.spans.empty and trace.counters.empty
    assert trace.spans["start_ns"].dtype == "int64"
    assert trace.counters["value"].dtype == "float64"


def test_write_refuses_backwards_span_and_nan_metadata(tmp_path: Path) -> None:
    bad = Span("x", Category.COMPUTE, 10, 5, "MainThread")
    with pytest.raises(ValueError, match="ends before it starts"):
        write_trace(tmp_path, make_metadata(), [bad], [])
    with pytest.raises(ValueError, match="plain JSON"):
        write_trace(tmp_path, make_metadata(hyperparameters={"lr": float("nan")}), [], [])
    assert not (tmp_path / TRACE_DIRNAME).exists()


# --- metadata dict round trip -------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
ints = st.integers(min_value=0, max_value=2**62)
gpus = st.builds(GpuInfo, index=ints, name=st.text(), memory_bytes=ints, driver_version=st.text())
metadata_strategy = st.builds(
    RunMetadata,
    run_id=st.text(),
    kind=st.sampled_from(["measured", "simulated"]),
    created_utc=st.text(),
    hardware=st.builds(
        HardwareInfo,
        cpu_model=st.text(),
        cpu_cores_logical=ints,
        cpu_cores_physical=ints,
        memory_bytes=ints,
        gpus=st.lists(gpus, max_size=3).map(tuple),
        hostname=st.text(),
    ),
    software=st.builds(
        SoftwareInfo,
        python=st.text(),
        torch=st.text(),
        platform=st.text(),
        asteria_bench=st.text(),
        cuda=st.none() | st.text(),
    ),
    optimizer=st.text(),
    hyperparameters=json_objects,
    model=json_objects,
    policies=st.dictionaries(st.text(), st.text(), max_size=3),
    seed=st.integers(),
    git_revision=st.none() | st.text(),
    device=st.text(),
    config=json_objects,
)


@given(metadata_strategy)
@settings(max_examples=60, deadline=None)
def test_metadata_dict_round_trips_exactly(metadata: RunMetadata) -> None:
    data = json.loads(json.dumps(metadata_to_dict(metadata)))
    assert data["hardware"]["gpus"] == [dataclasses.asdict(g) for g in metadata.hardware.gpus]
    assert metadata_from_dict(data) == metadata


# --- atomic writes -------------------------------------------------------------


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old\n")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["f.txt"]
    fsync_dir(tmp_path)


@pytest.mark.parametrize("where", ["fsync", "replace", "body"])
def test_failed_atomic_write_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    target = tmp_path / "f.txt"
    target.write_text("good")

    def boom(*args: object) -> None:
        raise OSError("injected")

    if where == "body":
        with pytest.raises(OSError, match="injected"), atomic_writer(target) as fh:
            fh.write(b"partial")
            boom()
    else:
        monkeypatch.setattr(atomic.os, where, boom)
        with pytest.raises(OSError, match="injected"):
            atomic_write_text(target, "bad and long " * 1000)
    assert target.read_text() == "good"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_failed_trace_write_keeps_old_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_trace(tmp_path, make_metadata(), SPANS, COUNTERS)

    def failing_write_table(table: pa.Table, where: Any, **kwargs: Any) -> None:
        where.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", failing_write_table)
    with pytest.raises(OSError, match="disk full"):
        write_trace(tmp_path, make_metadata(run_id="run-2"), SPANS[:1], [])
    monkeypatch.undo()
    trace = read_trace(tmp_path)
    assert trace.metadata.run_id == "run-1" and len(trace.spans) == len(SPANS)
    assert len(os.listdir(tmp_path / TRACE_DIRNAME)) == 3


# --- reader errors ---------------------------------------------------------------


def _edit_metadata(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def apply(trace_dir: Path) -> None:
        path = trace_dir / METADATA_FILENAME
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))

    return apply


def _write_spans(**columns: Any) -> Callable[[Path], None]:
    def apply(trace_dir: Path) -> None:
        table = pq.read_table(trace_dir / SPANS_FILENAME)
        for name, value in columns.items():
            if value is None:
                table = table.drop_columns([name])
            else:
                table = table.set_column(table.schema.get_field_index(name), name, value)
        pq.write_table(table, trace_dir / SPANS_FILENAME)

    return apply


def _n(values: list[Any], type_: pa.DataType) -> pa.Array:
    return pa.array(values + values[-1:] * (len(SPANS) - len(values)), type_)


ERROR_CASES: dict[str, tuple[Callable[[Path], object], str, str]] = {
    "missing metadata": (lambda d: (d / METADATA_FILENAME).unlink(), METADATA_FILENAME, "missing"),
    "missing spans": (lambda d: (d / SPANS_FILENAME).unlink(), SPANS_FILENAME, "missing file"),
    "missing counters": (
        lambda d: (d / COUNTERS_FILENAME).unlink(),
        COUNTERS_FILENAME,
        "missing file",
    ),
    "invalid json": (
        lambda d: (d / METADATA_FILENAME).write_text("{oops"),
        METADATA_FILENAME,
        "invalid JSON",
    ),
    "future version": (
        _edit_metadata(lambda m: m.update(schema_version=7)),
        METADATA_FILENAME,
        "schema_version 7 is not supported (this build reads 1 or 2)",
    ),
    "missing field": (
        _edit_metadata(lambda m: m.pop("seed")),
        METADATA_FILENAME,
        "missing field seed (integer)",
    ),
    "mistyped field": (
        _edit_metadata(lambda m: m.update(seed="7")),
        METADATA_FILENAME,
        "field seed: expected integer, got '7'",
    ),
    "mistyped nested field": (
        _edit_metadata(lambda m: m["hardware"]["gpus"][0].update(memory_bytes=1.5)),
        METADATA_FILENAME,
        "field hardware.gpus[0].memory_bytes: expected integer",
    ),
    "unknown field": (
        _edit_metadata(lambda m: m.update(colour="red")),
        METADATA_FILENAME,
        "unexpected field colour",
    ),
    "not an object": (
        lambda d: (d / METADATA_FILENAME).write_text("[1, 2]"),
        METADATA_FILENAME,
        "expected a JSON object",
    ),
    "missing column": (_write_spans(end_ns=None), SPANS_FILENAME, "missing column 'end_ns'"),
    "mistyped column": (
        _write_spans(start_ns=_n(["1"], pa.string())),
        SPANS_FILENAME,
        "column 'start_ns' has type string, expected int64",
    ),
    "unknown category": (
        _write_spans(category=_n(["compute", "magic"], pa.string())),
        SPANS_FILENAME,
        "column 'category' has unknown value 'magic'",
    ),
    "unknown tier": (
        _write_spans(tier_to=_n([None, "tape"], pa.string())),
        SPANS_FILENAME,
        "column 'tier_to' has unknown value 'tape'",
    ),
    "null name": (
        _write_spans(name=_n([None], pa.string())),
        SPANS_FILENAME,
        "column 'name' has 5 null value(s)",
    ),
    "backwards span": (
        _write_spans(end_ns=_n([900, 50], pa.int64())),
        SPANS_FILENAME,
        "row 1 (span 'forward') has end_ns 50 < start_ns 110",
    ),
    "parquet from a future version": (
        lambda d: pq.write_table(
            pq.read_table(d / COUNTERS_FILENAME).replace_schema_metadata(
                {"asteria_bench.schema_version": "9"}
            ),
            d / COUNTERS_FILENAME,
        ),
        COUNTERS_FILENAME,
        "schema_version '9' is not supported",
    ),
    "garbage parquet": (
        lambda d: (d / COUNTERS_FILENAME).write_bytes(b"not parquet\n at all"),
        COUNTERS_FILENAME,
        "not a readable Parquet file",
    ),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_reader_errors_are_one_line_naming_the_file(tmp_path: Path, case: str) -> None:
    damage, filename, expected = ERROR_CASES[case]
    trace_dir = write_trace(tmp_path, make_metadata(), SPANS, COUNTERS)
    read_trace(tmp_path)  # intact before the damage
    damage(trace_dir)
    with pytest.raises(TraceError) as info:
        read_trace(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(trace_dir / filename) + ": ")
    assert expected in message


def test_missing_trace_folder(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no trace/ folder") as info:
        read_trace(tmp_path / "nowhere")
    assert "\n" not in str(info.value)


def _valid_files(tmp_path: Path) -> dict[str, bytes]:
    trace_dir = write_trace(tmp_path / "good", make_metadata(), SPANS, COUNTERS)
    return {p.name: p.read_bytes() for p in trace_dir.iterdir()}


def _read_with(tmp_path: Path, name: str, content: bytes) -> None:
    trace_dir = write_trace(tmp_path / "bad", make_metadata(), SPANS, COUNTERS)
    (trace_dir / name).write_bytes(content)
    read_trace(trace_dir)


@FUZZ
@given(data=st.data(), name=st.sampled_from([METADATA_FILENAME, SPANS_FILENAME]))
def test_truncated_files_raise_trace_error(tmp_path: Path, data: st.DataObject, name: str) -> None:
    good = _valid_files(tmp_path)[name].rstrip(b"\n")
    cut = data.draw(st.integers(min_value=0, max_value=len(good) - 1))
    with pytest.raises(TraceError):
        _read_with(tmp_path, name, good[:cut])


@FUZZ
@given(
    garbage=st.binary(max_size=300),
    name=st.sampled_from([METADATA_FILENAME, SPANS_FILENAME, COUNTERS_FILENAME]),
)
def test_garbage_files_raise_trace_error(tmp_path: Path, garbage: bytes, name: str) -> None:
    with pytest.raises(TraceError):
        _read_with(tmp_path, name, garbage)


@FUZZ
@given(data=st.data(), name=st.sampled_from([METADATA_FILENAME, SPANS_FILENAME]))
def test_corrupted_files_read_or_raise_trace_error(
    tmp_path: Path, data: st.DataObject, name: str
) -> None:
    content = bytearray(_valid_files(tmp_path)[name])
    for _ in range(data.draw(st.integers(1, 4))):
        content[data.draw(st.integers(0, len(content) - 1))] = data.draw(st.integers(0, 255))
    try:
        _read_with(tmp_path, name, bytes(content))
    except TraceError as exc:
        assert "\n" not in str(exc)


# --- the recorder ----------------------------------------------------------------


def test_disabled_recorder_records_nothing() -> None:
    rec = Recorder(enabled=False)
    with rec.span("forward", Category.COMPUTE, step=1):
        pass
    rec.add_span("x", Category.IO, 1, 2)
    rec.counter("loss", 1.0)
    assert rec.spans == [] and rec.counters == []


def test_recorder_keeps_spans_from_four_threads() -> None:
    rec = Recorder()
    per_thread = 500
    barrier = threading.Barrier(4)

    def work() -> None:
        barrier.wait()
        for step in range(per_thread):
            with rec.span("unit", Category.COMPUTE, step=step):
                pass
            rec.counter("n", step)

    threads = [threading.Thread(target=work, name=f"t{i}") for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    frame = spans_frame(rec.spans)
    assert frame.groupby("track")["step"].apply(sorted).to_dict() == {
        f"t{i}": list(range(per_thread)) for i in range(4)
    }
    assert len(rec.counters) == 4 * per_thread
    assert (frame["end_ns"] >= frame["start_ns"]).all()
    assert list(SPANS_SCHEMA.names) == list(frame.columns)
