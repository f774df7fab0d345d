"""What a checkpoint costs: seconds to write it and to resume from it, and its bytes, per step.

Trains the default GPT with SOAP under ``device`` and under ``pressure`` with
an NVMe spill folder (everything pressed off the device, so a checkpoint
reads spilled state back), checkpointing every ``--every`` steps. Each run is
SIGKILLed after a checkpoint and resumed, so the resume is the real one: a new
process loading the newest checkpoint. From the traces it prints the median
``checkpoint`` span (write), the ``resume`` span (load), the checkpoint's
bytes on disk, and both against the run's median step time.

    python benchmarks/bench_checkpoint.py           # ~3 minutes on 2 cores
    python benchmarks/bench_checkpoint.py --quick   # a tiny GPT, seconds
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import environment_line, format_table, median
from runtime.checkpoint import CheckpointManager
from traces.io import read_trace

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--context", "32", "--batch-size", "4"]


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "asteria_bench", "run", *args]


def env(threads: int) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}


def measure(
    work: Path, placement: list[str], steps: int, every: int, extra: list[str], threads: int
) -> list[str]:
    args = [
        "--optimizer", "soap", "--steps", str(steps), "--checkpoint-every", str(every),
        "--eval-every", "1000", "--eval-batches", "1", "--torch-threads", str(threads), "-q",
        *placement, *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(
        command(*args, "--out", "run"),
        cwd=work,
        env=env(threads),
        stderr=subprocess.PIPE,
        text=True,
    )
    marker = work / "run.incomplete" / "checkpoints" / f"step-{2 * every:08d}"
    while not marker.exists():
        if proc.poll() is not None:
            raise SystemExit(f"the run ended early: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    done = subprocess.run(
        command("--resume", "run.incomplete", "-q"), cwd=work, env=env(threads),
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"resume failed: {done.stderr.strip()[-300:]}")
    spans = read_trace(work / "run").spans
    step_ns = median(
        spans.loc[spans["name"] == "step", "end_ns"]
        - spans.loc[spans["name"] == "step", "start_ns"]
    )
    writes = spans[spans["name"] == "checkpoint"]
    write_ns = median(writes["end_ns"] - writes["start_ns"])
    loads = spans[spans["name"] == "resume"]
    load_ns = float((loads["end_ns"] - loads["start_ns"]).iloc[0])
    newest = CheckpointManager(work / "run" / "checkpoints").checkpoints()[0]
    nbytes = sum(p.stat().st_size for p in newest.path.iterdir() if p.is_file())
    return [
        f"{step_ns / 1e6:.1f}",
        f"{write_ns / 1e6:.1f}",
        f"{write_ns / step_ns:.2f}",
        f"{load_ns / 1e6:.1f}",
        f"{load_ns / step_ns:.2f}",
        f"{nbytes / 2**20:.1f}",
        str(len(writes)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    extra = TINY if args.quick else []
    steps, every = (20, 4) if args.quick else (args.steps, args.every)
    print(environment_line())
    print(
        f"SOAP, {'tiny' if args.quick else 'default'} GPT, {steps} steps, checkpoint every {every}"
    )
    rows = []
    for name, placement in (
        ("device", ["--placement", "device"]),
        (
            "pressure + NVMe",
            # budgets above the largest block's working set (2.6 MiB on the default GPT)
            ["--placement", "pressure:1:2", "--device-budget", "8MiB", "--host-budget", "4MiB"],
        ),
    ):
        work = Path(tempfile.mkdtemp(prefix="bench-checkpoint-"))
        try:
            if name != "device":
                (work / "spill").mkdir()
                placement = [*placement, "--spill-dir", str(work / "spill")]
            rows.append([name, *measure(work, placement, steps, every, extra, args.threads)])
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(
        format_table(
            [
                "placement",
                "step ms",
                "write ms",
                "write/step",
                "resume ms",
                "resume/step",
                "MiB",
                "writes",
            ],
            rows,
        )
    )
    print("medians over the run's checkpoints; resume = a new process loading the newest one")


if __name__ == "__main__":
    main()
