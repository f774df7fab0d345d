"""The machinery of ``gpu_suite.py``: commands with logs and deadlines, figures, parsers.

Time on a GPU machine is short and rare, so the suite must leave evidence
even when parts of it fail: every command runs in its own process
with its output in a log file (a crash, a CUDA error or a hang costs that
command, not the suite), under a deadline drawn from one time budget, and what
it printed stays readable afterwards. Nothing here measures anything.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks._common import fmt, format_table
from reports.summary import RunFigures, run_figures

ROOT = Path(__file__).resolve().parents[1]

KILL_GRACE_S = 10.0
"""After a deadline: SIGTERM, then this long for the run to mark itself incomplete, then SIGKILL."""


class Status(str, Enum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass
class StageResult:
    """One stage's line in the summary, and the Markdown section with its figures."""

    name: str
    status: Status
    seconds: float = 0.0
    detail: str = ""  # one line: counts, the error, or why it was skipped
    log: str = ""  # relative to the measured folder; "" when the stage ran nothing
    section: str = ""  # Markdown under the stage's heading

    def status_text(self, limit: int | None = None) -> str:
        text = f"{self.status.value}: {self.detail}" if self.detail else self.status.value
        return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class CommandResult:
    """How one child process ended; ``output()`` is everything it printed."""

    argv: tuple[str, ...]
    returncode: int | None  # None: killed at its deadline
    seconds: float
    log: Path

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def failure(self) -> str:
        """One line: why the command failed, the last line it printed, and its log."""
        if self.returncode is None:
            why = f"timed out after {self.seconds:.0f} s"
        else:
            why = f"exit status {self.returncode}"
        printed = [ln.strip() for ln in self.output().splitlines()[1:]]  # after the command
        last = next((ln for ln in reversed(printed) if ln), "")
        last = f" ({last[:160]})" if last else ""
        return f"{why}{last}; log {self.log.name}"


@dataclass
class Suite:
    """The output folders, the time budget, and the way every child process is run."""

    out: Path
    budget_s: float
    dry_run: bool
    started: float = field(default_factory=time.monotonic)

    @property
    def measured(self) -> Path:
        return self.out / "traces" / "measured"

    @property
    def logs(self) -> Path:
        return self.measured / "logs"

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def remaining_s(self) -> float:
        return self.budget_s - self.elapsed_s()

    def say(self, message: str) -> None:
        print(f"[{self.elapsed_s():6.1f} s] {message}", flush=True)

    def env(self) -> dict[str, str]:
        """The parent's environment with the repository importable and output unbuffered."""
        env = dict(os.environ)
        path = env.get("PYTHONPATH", "")
        env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONIOENCODING"] = "utf-8"
        return env

    def run(self, name: str, args: Sequence[str], timeout_s: float) -> CommandResult:
        """``python ARGS`` from the repository root, output to ``logs/NAME.log``.

        The child gets a process group of its own (``_OWN_GROUP``), so a deadline
        ends it and any process it started, and nothing else.
        """
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        argv = (sys.executable, *args)
        timeout_s = max(1.0, timeout_s)
        self.say(f"{name}: {' '.join(args)} (deadline {timeout_s:.0f} s)")
        start = time.monotonic()
        with log.open("w") as sink:
            sink.write(f"$ {' '.join(argv)}\n")
            sink.flush()
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=self.env(),
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                **_OWN_GROUP,
            )
            returncode: int | None
            try:
                returncode = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _end(proc)
                returncode = None
        result = CommandResult(argv, returncode, time.monotonic() - start, log)
        if result.ok:
            self.say(f"{name}: done in {result.seconds:.1f} s")
        else:
            self.say(f"{name}: FAILED, {result.failure()}")
            tail = result.output().splitlines()[-15:]
            print("\n".join(f"    | {line}" for line in tail), flush=True)
        return result


_OWN_GROUP: dict[str, Any] = (
    {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
)
"""A process group of its own, in the suite's session where Python allows (3.11+): a deadline
ends the child and what it started, and whatever ends the suite's session still ends them."""


def _end(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the child's process group, SIGKILL if it is still there after a grace."""
    for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


# --------------------------------------------------------------------- figures
@dataclass(frozen=True)
class MeasuredRun:
    """A finished run directory of ``asteria-bench run`` and its headline figures."""

    name: str
    optimizer: str
    staleness: str
    root_device: str
    figures: RunFigures

    @property
    def spike_ratio(self) -> float:
        return self.figures.spike_ratio


def measured_run(path: Path) -> MeasuredRun:
    """Figures from ``metrics.parquet`` (as the run's summary.md), policies from the trace."""
    figures = run_figures(pd.read_parquet(path / "metrics.parquet"))
    meta = json.loads((path / "trace" / "metadata.json").read_text())
    policies = meta.get("policies", {})
    runtime = meta.get("config", {}).get("runtime", {})
    staleness = str(policies.get("staleness", "none"))
    asynchronous = staleness not in ("sync", "none")  # AdamW has no refresh: "none"
    root = str(runtime.get("root_device", "-")) if asynchronous else "-"
    return MeasuredRun(path.name, str(meta.get("optimizer", "?")), staleness, root, figures)


def hardware_line(path: Path) -> str:
    """GPU, CPU, memory and versions as a run's trace/metadata.json recorded them."""
    meta = json.loads((path / "trace" / "metadata.json").read_text())
    hw, sw = meta.get("hardware", {}), meta.get("software", {})
    gpus = ", ".join(
        f"{g.get('name')} ({g.get('memory_bytes', 0) / 2**30:.0f} GiB, driver {g.get('driver_version')})"
        for g in hw.get("gpus", [])
    )
    return (
        f"GPUs: {gpus or 'none'}; CPU: {hw.get('cpu_model')} ({hw.get('cpu_cores_logical')} "
        f"logical cores); memory {hw.get('memory_bytes', 0) / 2**30:.0f} GiB; "
        f"python {sw.get('python')}, torch {sw.get('torch')}, CUDA {sw.get('cuda')}; "
        f"device {meta.get('device')}"
    )


# --------------------------------------------------------------------- parsers
_PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")


def pytest_counts(output: str) -> dict[str, int]:
    """Counts from pytest's closing line ("3 passed, 1 failed, 9 deselected in 2.1s")."""
    closing = next(
        (ln for ln in reversed(output.splitlines()) if _PYTEST_COUNT.search(ln) and " in " in ln),
        "",
    )
    counts: dict[str, int] = {}
    for number, kind in _PYTEST_COUNT.findall(closing):
        counts["errors" if kind.startswith("error") else kind] = int(number)
    return counts


@dataclass(frozen=True)
class ReplayErrors:
    """One row of ``asteria-bench replay``'s table: measured, simulated, relative error."""

    run: str
    measured_median_ms: float
    simulated_median_ms: float
    median_error: float  # 0.05 = 5 %
    measured_p99_ms: float
    simulated_p99_ms: float
    p99_error: float
    overhead_error: float


_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|nan|inf", re.IGNORECASE)


def replay_errors(run: str, output: str) -> ReplayErrors:
    """Read the replay table's rows by their labels; box characters do not matter."""
    rows: dict[str, list[float]] = {}
    for line in output.splitlines():
        for label in ("median step", "p99 step", "visible optimizer overhead"):
            if label in line:
                values = [float(v) for v in _NUMBER.findall(line.split(label, 1)[1])]
                if len(values) >= 3:
                    rows[label] = values[:3]
    missing = {"median step", "p99 step", "visible optimizer overhead"} - rows.keys()
    if missing:
        raise ValueError(f"replay printed no row for {', '.join(sorted(missing))}")
    median, p99, overhead = (
        rows["median step"],
        rows["p99 step"],
        rows["visible optimizer overhead"],
    )
    return ReplayErrors(
        run, median[0], median[1], median[2] / 100, p99[0], p99[1], p99[2] / 100, overhead[2] / 100
    )


def pipe_table(text: str, first_header: str) -> list[dict[str, str]]:
    """The rows of the first Markdown pipe table in ``text`` whose first header is given."""
    lines = text.splitlines()

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    for i, line in enumerate(lines):
        if line.startswith("|") and cells(line)[0] == first_header:
            headers = cells(line)
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                values = cells(row)
                if len(values) == len(headers):
                    rows.append(dict(zip(headers, values, strict=True)))
            return rows
    return []


def pct(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{100 * value:.1f} %"


# --------------------------------------------------------------------- tables
def runs_table(runs: list[MeasuredRun], adamw: MeasuredRun | None) -> str:
    headers = [
        "run",
        "optimizer",
        "staleness",
        "refresh on",
        "median step ms",
        "p99 step ms",
        "p99/p50",
        "visible optimizer overhead",
        "vs AdamW median",
        "waits ms (steps)",
    ]
    rows = []
    for r in runs:
        f = r.figures
        ratio = f.median_step_ms / adamw.figures.median_step_ms if adamw else math.nan
        rows.append(
            [
                r.name,
                r.optimizer,
                r.staleness,
                r.root_device,
                fmt(f.median_step_ms),
                fmt(f.p99_step_ms),
                fmt(f.spike_ratio),
                pct(f.visible_overhead),
                fmt(ratio),
                f"{f.total_wait_ms:.1f} ({f.steps_with_wait})",
            ]
        )
    return format_table(headers, rows)


def replay_table(replays: list[ReplayErrors]) -> str:
    headers = [
        "run",
        "measured median ms",
        "simulated median ms",
        "median error",
        "measured p99 ms",
        "simulated p99 ms",
        "p99 error",
        "overhead error",
    ]
    rows = [
        [
            r.run,
            fmt(r.measured_median_ms),
            fmt(r.simulated_median_ms),
            pct(r.median_error),
            fmt(r.measured_p99_ms),
            fmt(r.simulated_p99_ms),
            pct(r.p99_error),
            pct(r.overhead_error),
        ]
        for r in replays
    ]
    return format_table(headers, rows)
