"""Every run directory looks the same: metrics.parquet, summary.md and Perfetto come from the trace."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_runner import run_cli

from reports.derive import write_derived
from tests.samples import METADATA, TINY_RUN
from traces.io import Trace, counters_frame, read_trace, spans_frame, write_trace
from traces.metrics import METRICS_COLUMNS, step_metrics
from traces.schema import Category, CounterSample, Span, Tier

SIM = ["simulate", "--hardware", "h100-sxm", "--model", "gpt-small", "--optimizer", "soap"]
SIM += ["--steps", "12", "--tokens-per-rank", "4096", "--precondition-frequency", "4"]
DERIVED = ("metrics.parquet", "summary.md", "trace/trace.perfetto.json")


def _span(name: str, cat: Category, start: int, end: int, step: int, **kw: object) -> Span:
    return Span(name, cat, start, end, str(kw.pop("track", "main")), step, **kw)  # type: ignore[arg-type]


def _two_steps_rows() -> tuple[list[Span], list[CounterSample]]:
    """Two steps with known parts; a boundary move labelled with the step it prepares."""
    S, C, OPT, R, T, W = (
        Category.STEP,
        Category.COMPUTE,
        Category.OPTIMIZER,
        Category.REFRESH,
        Category.TRANSFER,
        Category.WAIT,
    )
    spans = [
        _span("step", S, 0, 1000, 1),
        _span("forward", C, 0, 200, 1),
        _span("backward", C, 200, 500, 1),
        _span("allreduce", Category.COLLECTIVE, 500, 550, 1),
        _span("optimizer_step", OPT, 550, 950, 1),
        _span("refresh", R, 600, 700, 1, block="p0"),
        _span("move", T, 900, 940, 2, bytes=64, tier_from=Tier.DEVICE, tier_to=Tier.HOST),
        _span("refresh", R, 100, 900, -1, track="refresh-worker_0"),  # hidden: not the step track
        _span("eval", Category.EVAL, 1000, 1100, 1),
        _span("step", S, 1100, 1600, 2),
        _span("forward", C, 1100, 1250, 2),
        _span("backward", C, 1250, 1400, 2),
        _span("wait_refresh", W, 1400, 1420, 2),
    ]
    counters = [
        CounterSample("loss", 1000, 2.5, 1),
        CounterSample("loss", 1600, 2.0, 2),
        CounterSample("val_loss", 1100, 2.4, 1),
        CounterSample("lr", 1000, 0.1, 1),
        CounterSample("state_bytes", 950, 100.0, 1, "device"),
        CounterSample("state_bytes", 950, 300.0, 1, "host"),
        CounterSample("state_bytes", 1590, 120.0, 2, "device"),
    ]
    return spans, counters


def _two_steps() -> Trace:
    spans, counters = _two_steps_rows()
    return Trace(METADATA, spans_frame(spans), counters_frame(counters))


def test_step_metrics_from_spans_and_counters() -> None:
    m = step_metrics(_two_steps())
    assert list(m.columns) == list(METRICS_COLUMNS)
    assert m["step"].tolist() == [1, 2]
    assert m["step_time_ns"].tolist() == [1000, 500]
    assert m["forward_ns"].tolist() == [200, 150]
    assert m["backward_ns"].tolist() == [300, 150]
    # after backward: 1000-500 less the all-reduce (50); 1600-1400
    assert m["optimizer_ns"].tolist() == [450, 200]
    assert m["refresh_ns"].tolist() == [100, 0]  # the worker's refresh is not the step's
    assert m["transfer_ns"].tolist() == [40, 0]  # the move ran inside step 1, whatever its label
    assert m["wait_ns"].tolist() == [0, 20]
    assert m["optimizer_state_bytes"].tolist() == [400, 120]
    assert m["loss"].tolist() == [2.5, 2.0]
    assert m["val_loss"].iloc[0] == 2.4 and math.isnan(m["val_loss"].iloc[1])
    assert m["lr"].iloc[0] == 0.1 and math.isnan(m["lr"].iloc[1])
    assert m.dtypes["step_time_ns"] == np.int64 and m.dtypes["loss"] == np.float64


def test_a_step_without_backward_has_no_optimizer_time_and_no_trace_no_rows() -> None:
    spans = [_span("step", Category.STEP, 0, 70, 1)]
    m = step_metrics(Trace(METADATA, spans_frame(spans), counters_frame([])))
    assert m["optimizer_ns"].tolist() == [0] and m["step_time_ns"].tolist() == [70]
    assert math.isnan(m["loss"].iloc[0]) and m["optimizer_state_bytes"].tolist() == [0]
    assert step_metrics(Trace(METADATA, spans_frame([]), counters_frame([]))).empty


def test_write_derived_on_a_hand_made_trace(tmp_path: Path) -> None:
    trace = _two_steps()
    metadata = dataclasses.replace(METADATA, kind="imported", run_id="hand")
    write_trace(tmp_path, metadata, *_two_steps_rows())
    write_derived(tmp_path)
    for name in DERIVED:
        assert (tmp_path / name).is_file(), name
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "metrics.parquet"), step_metrics(trace)
    )
    summary = (tmp_path / "summary.md").read_text()
    assert "imported run" in summary and "| training time (sum of step times) | 0.00 s |" in summary


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A tiny bounded-staleness run, printed as a user sees it (progress off, summary on)."""
    out = tmp_path_factory.mktemp("derived") / "run"
    quiet_less = [a for a in TINY_RUN if a != "-q"]
    args = ["run", "--steps", "8", "--eval-every", "4", "--eval-batches", "1"]
    args += ["--corpus-bytes", "20000", "--staleness", "bounded:2", "--telemetry-every", "2"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert run_cli([*args, *quiet_less, "--out", str(out)]) == 0
    return out, err.getvalue()


def test_a_measured_run_writes_its_derived_files_from_its_trace(measured: tuple[Path, str]) -> None:
    out, _ = measured
    written = pd.read_parquet(out / "metrics.parquet")
    pd.testing.assert_frame_equal(written, step_metrics(read_trace(out)))
    assert written["loss"].notna().all() and written["val_loss"].notna().sum() == 2
    assert (written["optimizer_state_bytes"] > 0).all()


def test_summary_has_time_throughput_threads_and_load_and_is_never_wrapped(
    measured: tuple[Path, str],
) -> None:
    out, printed = measured
    summary = (out / "summary.md").read_text()
    config = json.loads((out / "config.json").read_text())
    tokens = config["train"]["batch_size"] * config["model"]["context"]
    assert f"({tokens:,} tokens per step)" in summary
    for row in ("| total time", "| training time", "| threads |", "| machine load", "1 torch thr"):
        assert row in summary, row
    table = [line for line in summary.splitlines() if line.startswith("|")]
    assert all(line.endswith("|") for line in table)
    # printed to a pipe (80 columns): every table row whole, on one line
    longest = max(table, key=len)
    assert len(longest) > 80 and longest in printed.splitlines()


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "sim"
    assert run_cli([*SIM, "--staleness", "bounded:2", "--out", str(out)]) == 0
    return next(p for p in out.iterdir() if p.is_dir())


def test_simulated_runs_look_like_measured_ones(simulated: Path) -> None:
    for name in DERIVED:
        assert (simulated / name).is_file(), name
    metrics = pd.read_parquet(simulated / "metrics.parquet")
    assert len(metrics) == 12 and metrics["loss"].isna().all()
    summary = (simulated / "summary.md").read_text()
    assert "simulated run" in summary and "training loss" not in summary
    assert "(4,096 tokens per step)" in summary


def test_replay_accepts_a_simulated_run_and_its_output_is_a_run_directory(
    simulated: Path, measured: tuple[Path, str], tmp_path: Path
) -> None:
    assert run_cli(["replay", str(simulated)]) == 0
    replayed = tmp_path / "replayed"
    assert run_cli(["replay", str(measured[0]), "--out", str(replayed)]) == 0
    for name in DERIVED:
        assert (replayed / name).is_file(), name
    assert read_trace(replayed).metadata.kind == "simulated"
    assert run_cli(["replay", str(replayed)]) == 0
