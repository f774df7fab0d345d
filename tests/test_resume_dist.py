"""Checkpoint and resume under torchrun: every rank saves collectively, a killed job resumes bitwise.

Two gloo ranks, in the sharded update mode (each rank's optimizer state is its
own, saved under its rank; the model is saved once) and under FSDP2 (the
model's DTensors saved as shards and loaded into the live sharded model). The job is SIGKILLed —
launcher and ranks — after a checkpoint, resumed by the same torchrun command
with ``--resume``, and compared with the job left alone: the same global loss
at every step and bitwise the same final parameters.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from test_distributed import ROOT, _env, _kill_tree, torchrun, torchrun_cmd

from runtime.checkpoint import CheckpointManager
from traces.io import read_trace

pytestmark = pytest.mark.slow

STEPS = 12
ARGS = (
    "-m", "asteria_bench", "run", "--steps", str(STEPS), "--checkpoint-every", "3",
    "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--context", "32", "--batch-size", "2",
    "--eval-every", "100", "--eval-batches", "1", "--torch-threads", "1",
    "--precondition-frequency", "2", "--optimizer", "soap", "--staleness", "bounded:2", "-q",
)  # fmt: skip
MODES = {
    "sharded": ("--update-mode", "sharded"),  # each rank updates its own blocks
    "fsdp2": ("--parallel", "fsdp2"),  # the model sharded (DTensors), each rank its rows
}


def final_model(run_dir: Path) -> dict[str, torch.Tensor]:
    found = CheckpointManager(run_dir / "checkpoints", world_size=2).read_latest("model")
    assert found is not None and found[0].step == STEPS
    return found[1]


def losses(run_dir: Path) -> list[float]:
    counters = read_trace(run_dir).counters
    return counters[counters["name"] == "loss"].sort_values("step")["value"].tolist()


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_killed_two_rank_job_resumes_bitwise(tmp_path: Path, mode: str) -> None:
    import subprocess

    args = (*ARGS, *MODES[mode])
    whole = torchrun(2, *args, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    launcher = subprocess.Popen(
        torchrun_cmd(2, *args, "--out", str(tmp_path / "killed")),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT,
    )  # fmt: skip
    marker = tmp_path / "killed.incomplete" / "checkpoints" / "step-00000006"
    deadline = time.monotonic() + 240
    try:
        while not marker.exists():
            assert launcher.poll() is None, launcher.stderr.read() if launcher.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        _kill_tree(launcher)
    checkpoint = CheckpointManager(tmp_path / "killed.incomplete" / "checkpoints", world_size=2)
    newest = checkpoint.checkpoints()[0]
    assert newest.step < STEPS and newest.world_size == 2
    names = {p.name for p in newest.path.iterdir()}
    assert {"state-rank00000.json", "state-rank00001.json", "manifest.json"} <= names
    resumed = torchrun(2, *ARGS[:3], "--resume", str(tmp_path / "killed.incomplete"), "-q")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert losses(tmp_path / "whole") == losses(tmp_path / "killed")
    a, b = final_model(tmp_path / "whole"), final_model(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
