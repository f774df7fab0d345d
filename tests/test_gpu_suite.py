"""The GPU suite's dry run: every stage on the CPU, so that the one GPU command cannot rot.

Time on a GPU machine is short and rare; the suite must work there the first
time. Its ``--dry-run`` runs the same stages, commands and parsers at tiny
sizes, and these tests check what the GPU run will leave: a status per
stage, run directories with their hardware metadata, and a replay table.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._suite import pipe_table, pytest_counts, replay_errors
from benchmarks._suite_sizes import DRY_SIZES, GPT_RUNS
from benchmarks.gpu_suite import STAGE_NAMES

ROOT = Path(__file__).resolve().parents[1]
HAVE_CUDA = torch.cuda.is_available()


def suite(*args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_dry_run_runs_every_stage_and_writes_the_evidence(tmp_path: Path) -> None:
    proc = suite("--dry-run", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    summary = (tmp_path / "summary.md").read_text()
    stages = {row["stage"]: row["status"] for row in pipe_table(summary, "stage")}
    assert list(stages) == list(STAGE_NAMES)
    assert stages["cuda-tests"].startswith("skipped: no CUDA")
    for name in STAGE_NAMES[1:]:
        assert stages[name].startswith("passed"), (name, stages[name])
        assert f"## {name}" in summary

    measured = tmp_path / "traces" / "measured"
    gpt = DRY_SIZES.gpt
    runs = ["default-soap"] + [s.name(gpt) for s in GPT_RUNS if not s.needs_cuda]
    for name in runs:
        run = measured / name
        meta = json.loads((run / "trace" / "metadata.json").read_text())
        assert meta["hardware"]["cpu_model"] and "gpus" in meta["hardware"]
        assert (run / "metrics.parquet").is_file() and (run / "summary.md").is_file()
    assert "not run on the CPU" in summary  # the device-refresh runs need CUDA
    for mode in ("replicated", "sharded"):  # torchrun, one rank: the NCCL path on a GPU
        meta = json.loads(
            (measured / f"torchrun-1rank-{mode}" / "trace" / "metadata.json").read_text()
        )
        assert meta["world_size"] == 1 and meta["policies"]["parallel"] == mode

    replay = {row["run"]: row for row in pipe_table(summary.split("## replay")[1], "run")}
    assert sorted(replay) == sorted(runs)
    for row in replay.values():
        for column in ("median error", "p99 error"):
            assert math.isfinite(float(row[column].removesuffix(" %"))), row

    gpt_rows = {r["run"]: r for r in pipe_table(summary.split("## gpu-gpt")[1], "run")}
    assert float(gpt_rows["gpt-adamw"]["vs AdamW median"]) == 1.0
    assert float(gpt_rows["gpt-soap-sync"]["vs AdamW median"]) > 0
    assert "heavyball" in summary
    step = summary.split("## step")[1].split("## ")[0]
    assert "| SOAP batched " in step and "Batched execution" in step  # batched rows are timed
    compiled = summary.split("## compile")[1]
    assert "batched+compile" in compiled and "hot step compiled / per block: " in summary
    assert "| soap pressure |" in summary  # bench_pressure's table, captured
    assert (measured / "gpu-suite.json").is_file() and (measured / "logs" / "step.log").is_file()


@pytest.mark.skipif(HAVE_CUDA, reason="checks the refusal on a machine without CUDA")
def test_without_cuda_and_without_dry_run_it_exits_2_with_one_line(tmp_path: Path) -> None:
    proc = suite("--out", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "gpu_suite: no CUDA device; use --dry-run"
    assert proc.stdout == ""


def test_unknown_stage_is_refused() -> None:
    proc = suite("--dry-run", "--out", "unused", "--only", "default-run,nonsense")
    assert proc.returncode == 2 and "--only" in proc.stderr


@pytest.mark.slow
def test_device_script_packs_measured_folder_summary_and_log(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), SUITE_DIR=str(tmp_path / "suite"), PYTHON=sys.executable)
    proc = subprocess.run(
        [
            "bash",
            str(ROOT / "benchmarks" / "gpu_suite.sh"),
            "--dry-run",
            "--only",
            "default-run,replay",
        ],
        cwd=tmp_path,  # the script finds the repository itself
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir()) == ["measured.tar.gz", "suite.log", "summary.md"]
    with tarfile.open(out / "measured.tar.gz") as tar:
        names = {n.removeprefix("./") for n in tar.getnames()}
    assert {"default-soap/metrics.parquet", "default-soap/trace/metadata.json"} <= names
    assert {"gpu-suite-summary.md", "gpu-suite.json", "logs/default-run.log"} <= names
    assert "| replay " in (out / "summary.md").read_text()
    assert "== replay: passed" in (out / "suite.log").read_text()


def test_parsers_read_what_the_tools_print() -> None:
    closing = "==== 3 passed, 1 failed, 2 skipped, 40 deselected in 2.71s ===="
    assert pytest_counts(f"x\n{closing}\n") == {
        "passed": 3,
        "failed": 1,
        "skipped": 2,
        "deselected": 40,
    }
    table = """
│ median step                │   19.05 ms │    8.41 ms │ 55.9% │
│ p99 step                   │ 1591.77 ms │ 1589.11 ms │  0.2% │
│ visible optimizer overhead │    1581.7% │     285.8% │ 81.9% │
"""
    errors = replay_errors("r", table)
    assert (errors.measured_median_ms, errors.simulated_median_ms) == (19.05, 8.41)
    assert errors.median_error == pytest.approx(0.559)
    assert errors.p99_error == pytest.approx(0.002)
    assert errors.overhead_error == pytest.approx(0.819)
    with pytest.raises(ValueError, match="p99 step"):
        replay_errors("r", "│ median step │ 1 ms │ 2 ms │ 3% │")


def test_hardware_line_names_the_gpu_as_the_schema_records_it(tmp_path: Path) -> None:
    """The summary's hardware line from a GPU run's metadata, written from the schema's types."""
    from dataclasses import asdict

    from benchmarks._suite import hardware_line
    from traces.schema import GpuInfo, HardwareInfo, SoftwareInfo

    gpu = GpuInfo(0, "NVIDIA H200", 141 << 30, "570.86")
    hardware = HardwareInfo("Xeon", 16, 8, 128 << 30, gpus=(gpu,))
    software = SoftwareInfo("3.12", "2.11", "Linux", "0.1.0", cuda="12.8")
    (tmp_path / "trace").mkdir()
    meta = {"hardware": asdict(hardware), "software": asdict(software), "device": "cuda:0"}
    (tmp_path / "trace" / "metadata.json").write_text(json.dumps(meta))
    line = hardware_line(tmp_path)
    assert line.startswith("GPUs: NVIDIA H200 (141 GiB, driver 570.86); CPU: Xeon (16 logical")
    assert line.endswith("CUDA 12.8; device cuda:0")
