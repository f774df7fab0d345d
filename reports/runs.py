"""Run directories as the reports read them: any kind, its trace and its derived metrics.

A report never trusts a run's ``metrics.parquet`` to be there or current: it
derives the table from the trace (``traces.metrics``), as the run directory
itself was written, so a folder holding only ``trace/`` is read like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from traces.io import Trace, TraceError, read_trace
from traces.metrics import step_metrics


@dataclass(frozen=True)
class LoadedRun:
    path: Path
    label: str  # short and unique among the runs read together
    trace: Trace
    metrics: pd.DataFrame  # traces.metrics.step_metrics of the trace

    @property
    def kind(self) -> str:
        return self.trace.metadata.kind

    def policy(self, name: str) -> str:
        return self.trace.metadata.policies.get(name, "-")


def _labels(paths: list[Path]) -> list[str]:
    """Folder names, with as many parent folders as it takes to tell them apart."""
    resolved = [p.resolve() for p in paths]
    depth = 1
    while depth < 8:
        labels = ["/".join(p.parts[-depth:]) for p in resolved]
        if len(set(labels)) == len(labels):
            return labels
        depth += 1
    return [str(p) for p in paths]


def load_runs(paths: list[Path]) -> list[LoadedRun]:
    """Read each run; raises ``TraceError`` naming the run at fault (one line)."""
    runs = []
    for path, label in zip(paths, _labels(paths), strict=True):
        if not Path(path).is_dir():
            raise TraceError(f"{path}: not a folder (expected a run directory)")
        trace = read_trace(path)
        metrics = step_metrics(trace)
        if metrics.empty:
            raise TraceError(f"{path}: the trace has no step spans (expected a training run)")
        runs.append(LoadedRun(Path(path), label, trace, metrics))
    return runs


def common_steps(runs: list[LoadedRun]) -> int:
    """How many steps every run has: runs are compared on their first this many steps.

    By position, not by number: a profiler trace may hold steps 553-560 of a
    job, which line up with steps 1-8 of a run made here.
    """
    return min(len(run.metrics) for run in runs)


def aligned(run: LoadedRun, count: int) -> LoadedRun:
    """``run`` cut to its first ``count`` steps (spans and counters outside any step kept)."""
    last_step = int(run.metrics["step"].iloc[count - 1])
    spans, counters = run.trace.spans, run.trace.counters
    trace = Trace(
        run.trace.metadata,
        spans[spans["step"] <= last_step].reset_index(drop=True),
        counters[counters["step"] <= last_step].reset_index(drop=True),
    )
    metrics = run.metrics.iloc[:count].reset_index(drop=True)
    return LoadedRun(run.path, run.label, trace, metrics)
