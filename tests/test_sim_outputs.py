"""``simulate --out`` writes traces in the measured schema; ``--calibrate-on`` uses a run's efficiencies."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from cli_runner import run_cli

from traces.io import read_trace

SIM = ["simulate", "--hardware", "h100-sxm", "--model", "gpt-small", "--optimizer", "soap"]
SIM += ["--steps", "24", "--tokens-per-rank", "4096", "--precondition-frequency", "5"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("measured") / "soap"
    tiny = ["--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--context", "16"]
    tiny += ["--batch-size", "4", "--eval-every", "100", "--eval-batches", "1", "--quiet"]
    tiny += ["--corpus-bytes", "20000", "--steps", "8", "--precondition-frequency", "3"]
    tiny += ["--torch-threads", "1"]
    assert run_cli(["run", "--optimizer", "soap", "--out", str(out), *tiny]) == 0
    return out


def test_every_simulated_configuration_is_a_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sim"
    assert run_cli([*SIM, "--placement", "device,lifecycle", "--out", str(out)]) == 0
    assert "2 simulated run(s)" in capsys.readouterr().out
    table = pd.read_csv(out / "simulate.csv")
    folders = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(folders) == len(table) == 2
    for folder, placement in zip(folders, ["device", "lifecycle"], strict=True):
        trace = read_trace(folder)
        assert trace.metadata.kind == "simulated"
        assert trace.metadata.policies["placement"] == placement
        assert trace.metadata.hardware.gpus[0].driver_version == "simulated"
        steps = trace.spans[trace.spans["name"] == "step"]
        assert len(steps) == 24
        fetched = trace.spans[trace.spans["name"] == "fetch"]
        assert fetched.empty == (placement == "device")


def test_calibrated_efficiencies_change_the_projection(
    recorded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assumed, calibrated = tmp_path / "assumed", tmp_path / "calibrated"
    assert run_cli([*SIM, "--out", str(assumed)]) == 0
    capsys.readouterr()
    args = ["--calibrate-on", str(recorded), "--calibration-profile", "h100-sxm"]
    assert run_cli([*SIM, *args, "--out", str(calibrated)]) == 0
    printed = capsys.readouterr().out
    assert f"calibrated on {recorded.name} with profile h100-sxm: gemm" in printed
    a = pd.read_csv(assumed / "simulate.csv")["median_ms"].iloc[0]
    b = pd.read_csv(calibrated / "simulate.csv")["median_ms"].iloc[0]
    # a tiny CPU run reaches a sliver of an H100's roofline: far slower than assumed
    assert b > 10 * a
    config = read_trace(next(p for p in calibrated.iterdir() if p.is_dir())).metadata.config
    assert config["efficiency"].startswith("calibrated on")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--calibrate-on", "RUN"], "--calibration-profile: needed with --calibrate-on"),
        (["--calibration-profile", "h100-sxm"], "--calibration-profile: given without"),
        (["--calibrate-on", "RUN", "--calibration-profile", "nope"], "--calibration-profile:"),
        (["--calibrate-on", "MISSING", "--calibration-profile", "h100-sxm"], "--calibrate-on:"),
    ],
)
def test_bad_calibration_options_are_one_line(
    recorded: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    args = [{"RUN": str(recorded), "MISSING": str(tmp_path / "missing")}.get(a, a) for a in args]
    assert run_cli([*SIM, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_worker_utilisation_is_reported_for_asynchronous_runs(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    args = ["--staleness", "sync,bounded:4", "--root-device", "host", "--workers", "2"]
    assert run_cli([*SIM, *args, "--out", str(out)]) == 0
    table = pd.read_csv(out / "simulate.csv").set_index("staleness")
    assert table.loc["sync", "worker_utilisation"] == 0.0
    busy = table.loc["bounded:4", "worker_utilisation"]
    trace = read_trace(next(p for p in sorted(out.iterdir()) if p.name.startswith("02-")))
    spans = trace.spans
    jobs = spans[spans["track"].astype(str).str.startswith("refresh-worker")]
    steps = spans[spans["name"] == "step"]
    expected = (jobs["end_ns"] - jobs["start_ns"]).sum() / (
        2 * (steps["end_ns"] - steps["start_ns"]).sum()
    )
    assert 0 < busy <= 1 and busy == pytest.approx(expected, rel=1e-9)


def test_an_out_that_is_a_file_is_refused_before_simulating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "results"
    target.write_text("keep me\n")
    assert run_cli([*SIM, "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--out:" in err and "expected a folder" in err and len(err.splitlines()) == 1
    assert target.read_text() == "keep me\n"


def test_simulate_and_replay_never_write_over_what_they_did_not_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep"
    assert run_cli([*SIM, "--placement", "device,lifecycle", "--out", str(out)]) == 0
    assert len([p for p in out.iterdir() if p.is_dir()]) == 2
    assert run_cli([*SIM, "--out", str(out)]) == 2  # not empty, no --overwrite
    assert "pass --overwrite" in capsys.readouterr().err
    assert run_cli([*SIM, "--out", str(out), "--overwrite"]) == 0  # ours: replaced whole
    assert len([p for p in out.iterdir() if p.is_dir()]) == 1, "old configurations left behind"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert run_cli([*SIM, "--out", str(mine), "--overwrite"]) == 2
    assert "was not written by asteria-bench" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep"
    run = tmp_path / "run"
    tiny = ["--steps", "4", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--context", "16"]
    assert run_cli(["run", "--out", str(run), "-q", *tiny]) == 0
    before = sorted((p.relative_to(run), p.stat().st_mtime_ns) for p in run.rglob("*"))
    other = tmp_path / "other"
    assert run_cli(["run", "--out", str(other), "-q", *tiny]) == 0
    for flags in ([], ["--overwrite"]):
        assert run_cli(["replay", str(other), "--out", str(run), *flags]) == 2
        err = capsys.readouterr().err
        assert "is a measured run" in err and len(err.strip().splitlines()) == 1
    assert sorted((p.relative_to(run), p.stat().st_mtime_ns) for p in run.rglob("*")) == before


def test_replay_of_a_metrics_table_without_its_columns_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    tiny = ["--steps", "4", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--context", "16"]
    assert run_cli(["run", "--out", str(run), "-q", *tiny]) == 0
    pd.DataFrame({"step": [1, 2], "loss": [1.0, 0.5]}).to_parquet(run / "metrics.parquet")
    assert run_cli(["replay", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing column 'step_time_ns'" in err
