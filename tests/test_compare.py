"""``asteria-bench compare``: measured, simulated and imported runs in one step-aligned table."""

from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_runner import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reports.compare import COLUMN_KEYS, SPIKE_FACTOR, RunRow
from tests.samples import METADATA, TINY_RUN
from traces.io import read_trace, write_trace
from traces.schema import Category, CounterSample, Span, Tier

TINY = [*TINY_RUN, "--eval-every", "4", "--eval-batches", "1", "--corpus-bytes", "20000"]
TINY += ["--precondition-frequency", "3"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two measured runs (sync, bounded staleness), one simulated, one imported by hand."""
    root = tmp_path_factory.mktemp("compare")
    made = {"sync": root / "sync", "bounded": root / "bounded"}
    assert run_cli(["run", "--steps", "12", "--out", str(made["sync"]), *TINY]) == 0
    args = ["run", "--steps", "8", "--staleness", "bounded:2", *TINY]
    assert run_cli([*args, "--out", str(made["bounded"])]) == 0
    sim = root / "sim"
    simulate = ["simulate", "--hardware", "h100-sxm", "--model", "gpt-small", "--steps", "10"]
    simulate += ["--placement", "lifecycle", "--device-budget", "64MiB", "--staleness", "bounded:2"]
    assert run_cli([*simulate, "--tokens-per-rank", "2048", "--out", str(sim)]) == 0
    made["simulated"] = next(p for p in sim.iterdir() if p.is_dir())
    made["imported"] = _imported(root / "imported")
    return made


def _imported(folder: Path) -> Path:
    """A run of another kind, from step 553 on, with known step times and a copy per step."""
    metadata = dataclasses.replace(METADATA, kind="imported", run_id="kineto")
    spans, counters = [], []
    t = 0
    for step, ms in enumerate([5, 5, 20, 5, 5, 5], start=553):  # a profiled job's steps
        spans.append(Span("step", Category.STEP, t, t + ms * 1_000_000, "main", step))
        spans.append(Span("forward", Category.COMPUTE, t, t + 1_000_000, "main", step))
        spans.append(Span("backward", Category.COMPUTE, t + 1_000_000, t + 3_000_000, "main", step))
        spans.append(
            Span(
                "fetch",
                Category.TRANSFER,
                t + 3_000_000,
                t + 3_500_000,
                "main",
                step,
                bytes=2_000_000,
                tier_from=Tier.HOST,
                tier_to=Tier.DEVICE,
            )
        )
        val = 3.0 - 0.1 * (step - 552)
        counters.append(CounterSample("val_loss", t + ms * 1_000_000, val, step))
        t += ms * 1_000_000
    write_trace(folder, metadata, spans, counters)
    return folder


def _csv(capsys: pytest.CaptureFixture[str], *args: str) -> pd.DataFrame:
    capsys.readouterr()
    assert run_cli(["compare", *args, "--format", "csv"]) == 0
    return pd.read_csv(io.StringIO(capsys.readouterr().out))


def test_figures_match_an_independent_reading_of_the_traces(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    table = _csv(capsys, str(runs["sync"]), str(runs["bounded"])).set_index("run")
    assert list(table.reset_index().columns) == list(COLUMN_KEYS)
    assert (table["steps"] == 8).all()  # aligned on the steps both have
    for name in ("sync", "bounded"):
        trace = read_trace(runs[name])
        spans = trace.spans
        steps = spans[(spans["name"] == "step") & (spans["step"] <= 8)]
        ms = (steps["end_ns"] - steps["start_ns"]).to_numpy(dtype=np.float64) / 1e6
        row = table.loc[name]
        assert row["median_step_ms"] == pytest.approx(float(np.median(ms)), rel=1e-9)
        assert row["max_step_ms"] == pytest.approx(ms.max(), rel=1e-9)
        assert row["spikes"] == sum(x >= SPIKE_FACTOR * np.median(ms) for x in ms)
        c = trace.counters
        taus = c[(c["name"] == "staleness") & (c["step"] <= 8)]["value"]
        assert row["staleness_max"] == taus.max()
        vals = c[(c["name"] == "val_loss") & (c["step"] <= 8)].sort_values("step")["value"]
        assert row["best_val_loss"] == pytest.approx(vals.min())
        assert row["final_val_loss"] == pytest.approx(vals.iloc[-1])
    assert table.loc["sync", "staleness"] == "sync"
    assert table.loc["bounded", "staleness_max"] == 2


def test_time_to_target_and_link_bytes_of_a_hand_made_run(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    table = _csv(capsys, str(runs["imported"]), "--target-loss", "2.65").set_index("run")
    row = table.loc["imported"]
    assert row["kind"] == "imported"
    # val 2.9, 2.8, 2.7, 2.6: reached at step 4, after 5 + 5 + 20 + 5 ms of steps
    assert row["time_to_target_s"] == pytest.approx(0.035)
    assert row["h2d_mb_per_step"] == pytest.approx(2.0) and row["link_mb_per_step"] == 2.0
    assert row["spikes"] == 1 and row["max_step_ms"] == 20.0
    never = _csv(capsys, str(runs["imported"]), "--target-loss", "1.0")
    assert math.isnan(never["time_to_target_s"].iloc[0])


def test_optimizer_overhead_is_optimizer_time_over_compute(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    row = _csv(capsys, str(runs["imported"])).iloc[0]
    # after backward: 2 ms of 5-ms steps (five) and 17 ms of the 20-ms step; compute 3 ms
    expected = 100 * (5 * 2.0 + 17.0) / 6 / 3.0
    assert row["overhead_pct"] == pytest.approx(expected)


def test_any_mix_of_kinds_in_a_table_that_fits_100_columns(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    paths = [str(p) for p in runs.values()]
    assert run_cli(["compare", *paths]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 100
    table = lines[: lines.index("")]
    assert len(table) == 2 + len(runs)
    assert "…" not in out and "Runs aligned on their first 6 steps" in out
    assert "median ms" in table[0] and "Left out to fit 100 columns" in out
    for path in runs.values():
        assert any(line.startswith(path.name) for line in table), path


def test_wide_columns_and_formats(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    paths = [str(runs["sync"]), str(runs["simulated"])]
    capsys.readouterr()
    assert run_cli(["compare", *paths, "--wide"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert "h2d MB/st" in header and "τ mean" in header and "val final" in header
    assert run_cli(["compare", *paths, "--columns", "p99_step_ms,wait_ms"]) == 0
    assert capsys.readouterr().out.splitlines()[0].split() == ["run", "p99", "ms", "wait", "ms"]
    assert run_cli(["compare", *paths, "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["aligned_steps"] == 10
    assert [r["kind"] for r in document["runs"]] == ["measured", "simulated"]
    assert set(document["runs"][0]) == {f.name for f in dataclasses.fields(RunRow)}
    assert document["runs"][1]["best_val_loss"] is None  # a simulated run has no loss
    assert document["runs"][1]["peak_device_mib"] > 0
    assert run_cli(["compare", *paths, "--format", "md"]) == 0
    md = capsys.readouterr().out.splitlines()
    assert md[0].startswith("| run |") and md[1].startswith("|---|")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "xml"], "--format: expected one of table, csv, json, md"),
        (["--columns", "median,nope"], "--columns: unknown column 'median'"),
        (["--target-loss", "nan"], "--target-loss"),
    ],
)
def test_bad_options_are_one_line(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    capsys.readouterr()
    assert run_cli(["compare", str(runs["sync"]), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_a_folder_that_is_not_a_run_is_one_line(
    tmp_path: Path, runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    broken = tmp_path / "broken" / "trace"
    broken.mkdir(parents=True)
    (broken / "metadata.json").write_text("{")
    for bad, expected in [
        (tmp_path / "missing", "not a folder"),
        (tmp_path / "empty", "no trace/ folder"),
        (tmp_path / "broken", "invalid JSON"),
    ]:
        capsys.readouterr()
        assert run_cli(["compare", str(runs["sync"]), str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err and str(bad) in err


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    option=st.sampled_from(["--target-loss", "--columns", "--format", "RUN"]),
    value=st.sampled_from(["", " ", "-1", "nan", "inf", "abc", ",", "run,", "\u00e9", "/no/such"]),
)
def test_random_bad_values_end_in_one_line(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    args = [str(runs["sync"]), value] if option == "RUN" else [str(runs["sync"]), option, value]
    capsys.readouterr()
    code = run_cli(["compare", *args])
    err = capsys.readouterr().err
    assert code in (0, 2) and "Traceback" not in err
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith("asteria-bench: error:")


def test_a_run_without_a_finished_step_is_one_line(
    runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import asteria_bench.compare_cmd as cmd
    from asteria_bench.errors import UserError
    from reports.compare import compare
    from reports.runs import load_runs
    from traces.io import TraceError

    run = load_runs([next(iter(runs.values()))])[0]
    empty = dataclasses.replace(run, metrics=run.metrics.iloc[:0])
    with pytest.raises(TraceError, match="no finished step"):
        compare([run, empty])
    monkeypatch.setattr(cmd, "load_runs", lambda paths: [empty])
    with pytest.raises(UserError, match=r"RUN: .*no finished step"):
        cmd.read_runs([run.path])
