"""Faults injected into real training runs: does every run finish with the right parameters?

Each fault is injected ``--repeat`` times into a small GPT trained with SOAP,
bounded staleness and the ``pressure`` placement with an NVMe spill folder
(so every tier and the refresh workers are in play), checkpointing every few
steps. A run is *correct* when its final parameters (the checkpoint written at
its last step) are bitwise those of the same run without the fault — after a
``--resume`` where the fault stopped it. For a rejected refresh (a worker that
raises, a NaN result) the reference is the same run with that version
rejected the other way (NaN vs raise): the previous preconditioner is kept
either way. "left" is the spill bytes still on disk once the run is over.

Faults: disk full while spilling; disk full while checkpointing; a damaged
spill file; a damaged checkpoint file; a refresh worker that raises; a refresh
that returns NaN; a slow worker; SIGTERM; SIGKILL.

    python benchmarks/bench_faults.py            # ~4 minutes on 2 cores
    python benchmarks/bench_faults.py --quick    # one repeat, fewer steps
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from asteria_bench.checkpointing import CheckpointPlan
from asteria_bench.config import RunConfig, apply_mapping
from asteria_bench.train import train
from benchmarks._common import environment_line, format_table, set_threads
from runtime.checkpoint import CheckpointManager
from runtime.optim.soap import SOAP

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class Outcome:
    finished: bool
    correct: bool
    left_bytes: int
    note: str = ""


def settings(steps: int, spill: Path) -> dict[str, Any]:
    return {
        "model": {"n_layer": 2, "n_head": 2, "n_embd": 64, "context": 64},
        "train": {
            "steps": steps,
            "batch_size": 8,
            "eval_every": 1000,
            "eval_batches": 1,
            "torch_threads": 1,
            "checkpoint_every": 5,
        },
        "optim": {"name": "soap", "precondition_frequency": 3},
        "runtime": {
            "staleness": "bounded:2",
            "placement": "pressure:1:2",
            "device_budget": "2MiB",
            "host_budget": "1MiB",
            "spill_dir": str(spill),
        },
    }


def cli_args(values: dict[str, Any]) -> list[str]:
    out = []
    for section in values.values():
        for key, value in section.items():
            if key != "name":
                out += [f"--{key.replace('_', '-')}", str(value)]
    return [*out, "--optimizer", values["optim"]["name"], "-q"]


def final_model(checkpoints: Path) -> dict[str, torch.Tensor]:
    with contextlib.redirect_stderr(open(os.devnull, "w")):
        found = CheckpointManager(checkpoints).read_latest("model")
    if found is None:
        raise SystemExit(f"{checkpoints}: no checkpoint")
    return found[1]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def spill_left(spill: Path) -> int:
    return sum(p.stat().st_size for p in spill.rglob("*") if p.is_file())


# ------------------------------------------------------------ in-process runs
def run_inprocess(folder: Path, steps: int) -> Path:
    spill = folder / "spill"
    spill.mkdir(parents=True, exist_ok=True)
    config = RunConfig()
    apply_mapping(config, settings(steps, spill), "bench")
    plan = CheckpointPlan(folder / "checkpoints", every=5)
    train(config, checkpoints=plan)
    return folder / "checkpoints"


@contextlib.contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def refresh_fault(kind: str, victim: int) -> Callable[[Any], Any]:
    real = SOAP.compute_refresh
    calls = [0]

    def compute(inputs: Any) -> Any:
        calls[0] += 1
        result = real(inputs)
        if calls[0] == victim:
            if kind == "raise":
                raise torch.linalg.LinAlgError("injected")
            if kind == "nan":
                return dataclasses.replace(result, q_left=result.q_left * math.nan)
        if kind == "slow":
            time.sleep(0.03)
        return result

    return compute


def inprocess_fault(kind: str, work: Path, steps: int, seed: int, reference: dict) -> Outcome:
    rng = random.Random(seed)
    folder = work / f"{kind}-{seed}"
    if kind == "spill disk full":
        from runtime.spill import store

        real_write, budget = store.SpillStore.__init__, rng.randint(5, 40)

        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            count = [0]

            def writer(fd: int, data: Any) -> int:
                count[0] += 1
                if count[0] > budget:
                    raise OSError(28, "No space left on device")
                return os.write(fd, data)

            real_write(self, *args, **{**kwargs, "writer": writer, "direct_io": False})

        with patched(store.SpillStore, "__init__", init):
            checkpoints = run_inprocess(folder, steps)
        got = final_model(checkpoints)
        return Outcome(True, same(got, reference["clean"]), spill_left(folder / "spill"))
    if kind == "checkpoint disk full":
        real_save, victim = CheckpointManager._save_tensors, rng.randint(1, steps // 5 - 1)
        count = [0]

        def save(self: Any, tensors: Any, where: Path) -> None:
            count[0] += 1
            real_save(self, tensors, where)
            if count[0] == victim:
                raise OSError(28, "No space left on device")

        with patched(CheckpointManager, "_save_tensors", save), _quiet():
            checkpoints = run_inprocess(folder, steps)
        got = final_model(checkpoints)
        return Outcome(True, same(got, reference["clean"]), spill_left(folder / "spill"))
    victim = rng.randint(2, 12)
    if kind in ("worker raises", "refresh NaN"):
        mine = "raise" if kind == "worker raises" else "nan"
        other = "nan" if mine == "raise" else "raise"
        results = {}
        for fault in (mine, other):
            with (
                patched(SOAP, "compute_refresh", staticmethod(refresh_fault(fault, victim))),
                _quiet(),
            ):
                results[fault] = final_model(run_inprocess(work / f"{kind}-{seed}-{fault}", steps))
        finite = all(
            torch.isfinite(t).all() for t in results[mine].values() if t.is_floating_point()
        )
        return Outcome(True, finite and same(results[mine], results[other]), spill_left(folder))
    with patched(SOAP, "compute_refresh", staticmethod(refresh_fault("slow", 0))):
        got = final_model(run_inprocess(folder, steps))
    return Outcome(True, same(got, reference["clean"]), spill_left(folder / "spill"))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ------------------------------------------------------------ subprocess runs
def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "asteria_bench", "run", *args]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def start(cwd: Path, args: list[str], out: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command(*args, "--out", out),
        cwd=cwd,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 600) -> bool:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def resume(cwd: Path, out: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command("--resume", f"{out}.incomplete", "-q"), cwd=cwd, env=env(),
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def process_fault(kind: str, work: Path, steps: int, seed: int, reference: dict) -> Outcome:
    rng = random.Random(seed)
    cwd = work / f"{kind}-{seed}"
    spill = cwd / "spill"
    spill.mkdir(parents=True)
    args = cli_args(settings(steps, spill))
    proc = start(cwd, args, "run")
    staging = cwd / "run.incomplete"
    first = staging / "checkpoints" / f"step-{10:08d}"
    note = ""
    if not wait_for(first, proc):
        proc.kill()
        return Outcome(False, False, spill_left(spill), "no checkpoint appeared")
    time.sleep(rng.uniform(0.0, 0.5))
    if kind == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
    elif kind == "SIGKILL":
        proc.kill()
    elif kind == "damaged spill file":
        files = sorted(p for p in spill.rglob("*.spill"))
        if files:
            victim = rng.choice(files)
            with contextlib.suppress(OSError), open(victim, "r+b") as fh:
                fh.seek(4096 + rng.randrange(64))
                byte = fh.read(1)
                fh.seek(-1, os.SEEK_CUR)
                fh.write(bytes([(byte[0] if byte else 0) ^ 0xFF]))
    elif kind == "damaged checkpoint":
        proc.kill()
    proc.wait(timeout=900)
    stderr = proc.stderr.read() if proc.stderr else ""
    if kind == "damaged checkpoint":
        newest = CheckpointManager(staging / "checkpoints").checkpoints()[0]
        victim = next(newest.path.glob("*.distcp"))
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
    if proc.returncode != 0:
        if kind == "damaged spill file":
            note = "detected" if "checksum" in stderr else note
        done = resume(cwd, "run")
        if done.returncode != 0:
            return Outcome(False, False, spill_left(spill), done.stderr.strip()[-120:])
    elif kind == "damaged spill file":
        note = "overwritten before read"
    got = final_model(cwd / "run" / "checkpoints")
    return Outcome(True, same(got, reference["cli"]), spill_left(spill), note)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="one repeat of 30 steps")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    repeat, steps = (1, 30) if args.quick else (args.repeat, args.steps)
    set_threads(args.threads)
    print(environment_line())
    print(f"SOAP, bounded:2, pressure + NVMe, {steps} steps, checkpoint every 5; {repeat} x each")
    work = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    try:
        reference = {"clean": final_model(run_inprocess(work / "reference", steps))}
        ref_cli = work / "reference-cli"
        (ref_cli / "spill").mkdir(parents=True)
        done = subprocess.run(
            command(*cli_args(settings(steps, ref_cli / "spill")), "--out", "run"),
            cwd=ref_cli, env=env(), capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"the reference run failed: {done.stderr.strip()[-300:]}")
        reference["cli"] = final_model(ref_cli / "run" / "checkpoints")
        rows = []
        faults: list[tuple[str, Callable[..., Outcome]]] = [
            ("spill disk full", inprocess_fault),
            ("checkpoint disk full", inprocess_fault),
            ("worker raises", inprocess_fault),
            ("refresh NaN", inprocess_fault),
            ("slow worker", inprocess_fault),
            ("damaged spill file", process_fault),
            ("damaged checkpoint", process_fault),
            ("SIGTERM", process_fault),
            ("SIGKILL", process_fault),
        ]
        for kind, inject in faults:
            outcomes = [inject(kind, work, steps, seed, reference) for seed in range(repeat)]
            notes = sorted({o.note for o in outcomes if o.note})
            rows.append(
                [
                    kind,
                    str(len(outcomes)),
                    str(sum(o.finished for o in outcomes)),
                    str(sum(o.correct for o in outcomes)),
                    str(sum(o.left_bytes for o in outcomes)),
                    ", ".join(notes),
                ]
            )
            print(f"  {kind}: done", file=sys.stderr, flush=True)
        print(format_table(["fault", "injected", "finished", "correct", "left (B)", "note"], rows))
        all_good = all(r[1] == r[2] == r[3] and r[4] == "0" for r in rows)
        print("goal (all finished and correct, 0 bytes left):", "met" if all_good else "NOT met")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
