"""Kill a real training process, resume it, and get bitwise the run that was never stopped.

Every run here is a real ``python -m asteria_bench run`` subprocess. A run is
killed with SIGKILL at a step chosen by a seeded random delay after one of its
checkpoints appeared, resumed with ``--resume``, and compared with the same
run left alone: the same loss at every step, and bitwise the same parameters
(the checkpoint written at the last step). The combinations cover every
optimizer, every placement (NVMe in use under ``pressure``) and every
staleness policy at least once; the in-process tests in
``tests/test_checkpoint.py`` cover all of their products.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from runtime.checkpoint import CheckpointManager
from runtime.spill.owner import OWNER_FILENAME
from traces.io import read_trace

pytestmark = pytest.mark.slow

STEPS = 36
EVERY = 4
TINY = [
    "--steps", str(STEPS), "--checkpoint-every", str(EVERY), "--n-layer", "1", "--n-embd", "32",
    "--n-head", "2", "--context", "32", "--batch-size", "4", "--eval-every", "12",
    "--eval-batches", "1", "--torch-threads", "1", "--precondition-frequency", "3", "-q",
]  # fmt: skip


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "asteria_bench", "run", *args]


def environment() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args), cwd=cwd, env=environment(), capture_output=True, text=True, timeout=300
    )


def kill_after_a_checkpoint(cwd: Path, out: str, args: list[str], seed: int) -> None:
    """Start the run, wait for its second checkpoint, SIGKILL it a random moment later."""
    proc = subprocess.Popen(
        command(*args, "--out", out), cwd=cwd, env=environment(), stderr=subprocess.PIPE, text=True
    )
    marker = cwd / f"{out}.incomplete" / "checkpoints" / f"step-{2 * EVERY:08d}"
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert proc.poll() is None, (
            f"the run ended before it was killed: {proc.stderr.read() if proc.stderr else ''}"
        )
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    time.sleep(random.Random(seed).uniform(0.0, 0.4))
    proc.kill()
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before the kill; make it longer"
    assert (cwd / f"{out}.incomplete").is_dir()


def losses(run_dir: Path) -> pd.Series:
    counters = read_trace(run_dir).counters
    return counters[counters["name"] == "loss"].set_index("step")["value"].sort_index()


def final_parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    found = CheckpointManager(run_dir / "checkpoints").read_latest("model")
    assert found is not None and found[0].step == STEPS
    return found[1]


def assert_same_run(a: Path, b: Path) -> None:
    la, lb = losses(a), losses(b)
    assert list(la.index) == list(range(1, STEPS + 1)) == list(lb.index)
    assert (la.to_numpy() == lb.to_numpy()).all(), "per-step losses differ"
    pa, pb = final_parameters(a), final_parameters(b)
    assert pa.keys() == pb.keys()
    for name in pa:
        assert torch.equal(pa[name], pb[name]), name


CASES = [
    ("soap", "pressure:1:2", "bounded:2"),
    ("shampoo", "lifecycle", "sync"),
    ("kl-shampoo", "device", "bounded:3"),
    ("adamw", "device", "sync"),
]


@pytest.mark.parametrize(("optimizer", "placement", "staleness"), CASES)
def test_sigkill_then_resume_is_the_uninterrupted_run(
    tmp_path: Path, optimizer: str, placement: str, staleness: str
) -> None:
    spill = tmp_path / "spill"
    spill.mkdir()
    args = [*TINY, "--optimizer", optimizer, "--staleness", staleness, "--placement", placement]
    if placement.startswith("pressure"):
        args += ["--spill-dir", str(spill), "--device-budget", "1MiB", "--host-budget", "1MiB"]
    if optimizer == "adamw":
        args = [a for a in args if a not in ("--precondition-frequency", "3")]
    whole = run(tmp_path, *args, "--out", "whole")
    assert whole.returncode == 0, whole.stderr
    kill_after_a_checkpoint(tmp_path, "killed", args, seed=len(optimizer))
    if placement.startswith("pressure"):
        left = [p for p in spill.iterdir() if (p / OWNER_FILENAME).is_file()]
        assert left, "a killed run leaves its spill folder (it is reclaimed by the next run)"
    resumed = run(tmp_path, "--resume", "killed.incomplete", "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(tmp_path / "whole", tmp_path / "killed")
    assert not (tmp_path / "killed.incomplete").exists()
    assert not list(spill.iterdir()), "the dead run's spill folder was reclaimed, ours removed"


def test_adaptive_staleness_resumes_on_the_choices_it_made(tmp_path: Path) -> None:
    """Adaptive τ follows measured times, so the reference is a replay of the resumed run's choices."""
    args = [*TINY, "--optimizer", "soap", "--staleness", "adaptive:3", "--placement", "host"]
    kill_after_a_checkpoint(tmp_path, "killed", args, seed=7)
    resumed = run(tmp_path, "--resume", "killed", "-q")
    assert resumed.returncode == 0, resumed.stderr
    schedule = tmp_path / "killed" / "staleness_schedule.json"
    replay = [a if a != "adaptive:3" else f"replay:{schedule}" for a in args]
    whole = run(tmp_path, *replay, "--out", "replayed")
    assert whole.returncode == 0, whole.stderr
    assert_same_run(tmp_path / "replayed", tmp_path / "killed")


def test_sigterm_checkpoints_then_stops_and_the_run_resumes(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    spill.mkdir()
    # 80 steps, no periodic checkpoints: only the one SIGTERM asks for.
    args = ["--steps", "80", "--checkpoint-every", "0", *TINY[4:]]
    args += ["--optimizer", "soap", "--staleness", "bounded:2", "--placement", "pressure:1:2"]
    args += ["--spill-dir", str(spill), "--device-budget", "1MiB", "--host-budget", "1MiB"]
    proc = subprocess.Popen(
        command(*args, "--out", "stopped"), cwd=tmp_path, env=environment(),
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    chunks = tmp_path / "stopped.incomplete" / "trace" / "metadata.json"
    while not chunks.exists():
        assert proc.poll() is None
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM after step" in err and "--resume" in err
    assert len(err.strip().splitlines()) == 1, err
    assert not list(spill.iterdir()), "spill files are removed once the checkpoint is written"
    marker = (tmp_path / "stopped.incomplete" / "INCOMPLETE").read_text()
    assert "resume with: asteria-bench run --resume" in marker
    resumed = run(tmp_path, "--resume", "stopped.incomplete", "-q", "--checkpoint-every", "1")
    assert resumed.returncode == 2 and "drop --checkpoint-every" in resumed.stderr
    resumed = run(tmp_path, "--resume", "stopped.incomplete", "-q")
    assert resumed.returncode == 0, resumed.stderr
    whole = run(tmp_path, *args, "--out", "whole")
    assert whole.returncode == 0, whole.stderr
    la, lb = losses(tmp_path / "whole"), losses(tmp_path / "stopped")
    assert (la.to_numpy() == lb.to_numpy()).all()
