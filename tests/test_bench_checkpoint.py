"""The checkpoint-cost benchmark runs end to end (a tiny GPT) and prints its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_checkpoint_quick_prints_write_and_resume_per_placement() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_checkpoint.py"), "--quick"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "ms" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["device", "pressure + NVMe"]
    for row in rows:
        cells = [c.strip() for c in row.split("|")[2:-1]]
        assert all(float(c) > 0 for c in cells), row
