"""Calibrated efficiencies: projecting a run on its own profile gives back its measured ops."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from asteria_bench.cli import main
from simulator.calibration import OpFit, calibrate, run_shape
from simulator.profiles import load_profile
from simulator.projection import Deployment, Efficiency, Projection, project
from simulator.workload import WorkloadError, workload_from_trace
from traces.io import read_trace

TINY = [
    *("--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--context", "16"),
    *("--batch-size", "4", "--eval-every", "100", "--eval-batches", "1"),
    *("--corpus-bytes", "20000", "--quiet", "--precondition-frequency", "3", "--steps", "10"),
    *("--torch-threads", "1"),
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("calibration")
    out = {}
    for name, extra in {
        "sync": [],
        "lifecycle": ["--placement", "lifecycle"],
        "host-workers": ["--staleness", "bounded:2", "--workers", "2", "--root-device", "host"],
    }.items():
        with pytest.raises(SystemExit) as exc:
            main(["run", "--optimizer", "soap", "--out", str(root / name), *TINY, *extra])
        assert exc.value.code == 0
        out[name] = root / name
    return out


def project_run(run_dir: Path, efficiency: Efficiency) -> Projection:
    trace = read_trace(run_dir)
    run = run_shape(trace)
    deploy = Deployment(
        optimizer=run.optimizer,
        block_size=run.block_size,
        precondition_frequency=3,
        tokens_per_rank=run.tokens_per_step,
        root_device="host" if run.refresh_on_host else "device",
        workers=run.workers,
    )
    return project(run.shape, load_profile("h100-sxm"), deploy, efficiency)


@pytest.mark.parametrize("name", ["sync", "host-workers"])
def test_projection_on_the_calibration_profile_gives_back_the_measured_ops(
    runs: dict[str, Path], name: str
) -> None:
    """The identity that ties calibrate to project: same formulas, same FLOPs, same tokens."""
    trace = read_trace(runs[name])
    profile = load_profile("h100-sxm")  # any profile: the identity holds for each
    calibration = calibrate(trace, profile)
    measured = workload_from_trace(trace)
    projected = project_run(runs[name], calibration.efficiency).model
    measured_compute = measured.step.forward_ns + measured.step.backward_ns
    projected_compute = projected.step.forward_ns + projected.step.backward_ns
    assert projected_compute == pytest.approx(measured_compute, rel=1e-6, abs=2)
    assert projected.hot_ns == pytest.approx(measured.hot_ns, rel=1e-6, abs=len(projected.blocks))
    measured_refresh = sum(b.refresh_ns for b in measured.blocks)
    projected_refresh = sum(b.refresh_ns for b in projected.blocks)
    assert projected_refresh == pytest.approx(measured_refresh, rel=1e-6, abs=len(projected.blocks))
    ops = {f.op for f in calibration.fits}
    assert ops == {
        "gemm",
        "optimizer",
        "refresh_host" if name == "host-workers" else "refresh_device",
    }
    for fit in calibration.fits:
        assert 0 < getattr(calibration.efficiency, fit.op) <= 1


def test_a_faster_profile_means_a_lower_efficiency(runs: dict[str, Path]) -> None:
    """Efficiency is the roofline's share of the measured time: a GPU 10x faster on every
    roof of the step (tensor-core peak and memory bandwidth) gives a tenth of the share."""
    trace = read_trace(runs["sync"])
    slow = load_profile("h100-sxm")
    fast = dataclasses.replace(
        slow,
        gpu=dataclasses.replace(
            slow.gpu,
            bf16_dense_flops=dataclasses.replace(
                slow.gpu.bf16_dense_flops, value=10 * slow.gpu.bf16_dense_flops.value
            ),
            memory_bandwidth=dataclasses.replace(
                slow.gpu.memory_bandwidth, value=10 * slow.gpu.memory_bandwidth.value
            ),
        ),
    )
    a = calibrate(trace, slow).efficiency.gemm
    b = calibrate(trace, fast).efficiency.gemm
    assert b == pytest.approx(a / 10, rel=1e-9)


def test_transfers_of_a_tiered_run_calibrate_the_copy_efficiency(runs: dict[str, Path]) -> None:
    calibration = calibrate(read_trace(runs["lifecycle"]), load_profile("h100-pcie"))
    copy = next(f for f in calibration.fits if f.op == "copy")
    assert copy.count > 0 and copy.measured_ns > 0
    assert calibration.efficiency.copy == pytest.approx(copy.efficiency)
    assert "copy" not in {
        f.op for f in calibrate(read_trace(runs["sync"]), load_profile("h100-pcie")).fits
    }


def test_fraction_above_the_roofline_is_capped_at_one() -> None:
    fit = OpFit("gemm", roofline_ns=2.0, measured_ns=1.0, count=1)
    assert fit.fraction == 2.0 and fit.efficiency == 1.0


def test_a_trace_without_the_run_config_is_a_clear_error(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(runs["sync"], copy)
    meta_path = copy / "trace" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["train"]["batch_size"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(WorkloadError, match=r"config\.train\.batch_size"):
        calibrate(read_trace(copy), load_profile("h100-sxm"))
