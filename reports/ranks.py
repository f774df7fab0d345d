"""Per-rank figures of a data-parallel run, from its traces (``trace/`` and ``ranks/<r>/trace/``).

The slowest rank sets a data-parallel step, and the ranks differ in what they
own, so ``summary.md`` lists each: its median and p99 step, the bytes its
collectives moved per step, and the optimizer state it held.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from traces.io import Trace, read_trace
from traces.metrics import step_metrics

RANKS_DIRNAME = "ranks"


@dataclass(frozen=True)
class RankFigures:
    rank: int
    median_step_ms: float
    p99_step_ms: float
    collective_bytes_per_step: float
    state_bytes: int


def rank_traces(run_dir: Path) -> list[Trace]:
    """Rank 0's trace, then every other rank's, in rank order."""
    traces = [read_trace(run_dir)]
    folder = run_dir / RANKS_DIRNAME
    if folder.is_dir():
        ranks = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
        traces += [read_trace(folder / str(r)) for r in ranks]
    return traces


def rank_metrics(run_dir: Path) -> list[tuple[int, pd.DataFrame]]:
    """Each rank's metrics table (``traces.metrics``), in rank order."""
    return [(t.metadata.rank, step_metrics(t)) for t in rank_traces(run_dir)]


def rank_figures(trace: Trace) -> RankFigures:
    spans, counters = trace.spans, trace.counters
    steps = spans[spans["name"] == "step"]
    ms = ((steps["end_ns"] - steps["start_ns"]) / 1e6).to_numpy(dtype=np.float64)
    collective = spans.loc[spans["category"] == "collective", "bytes"].sum()
    state = counters.loc[counters["name"] == "state_bytes"]
    last_step = state["step"].max() if len(state) else None
    state_bytes = int(state.loc[state["step"] == last_step, "value"].sum()) if len(state) else 0
    return RankFigures(
        rank=trace.metadata.rank,
        median_step_ms=float(np.median(ms)) if len(ms) else math.nan,
        p99_step_ms=float(np.percentile(ms, 99)) if len(ms) else math.nan,
        collective_bytes_per_step=float(collective) / max(1, len(ms)),
        state_bytes=state_bytes,
    )


def ranks_markdown(figures: list[RankFigures]) -> str:
    """A table of the ranks; the slowest median is marked."""
    slowest = max(figures, key=lambda f: f.median_step_ms).rank
    lines = [
        "| rank | median step | p99 step | collective bytes / step | optimizer state |",
        "|---|---|---|---|---|",
    ]
    for f in figures:
        mark = " (slowest)" if f.rank == slowest and len(figures) > 1 else ""
        lines.append(
            f"| {f.rank}{mark} | {f.median_step_ms:.2f} ms | {f.p99_step_ms:.2f} ms |"
            f" {f.collective_bytes_per_step / 1e3:.1f} kB | {f.state_bytes / 2**20:.2f} MiB |"
        )
    return "\n".join(lines)
