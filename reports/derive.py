"""The files of a run directory that are derived from its trace: every kind gets the same.

``metrics.parquet``, ``summary.md`` and ``trace/trace.perfetto.json`` are
made here from ``trace/`` (and ``ranks/<r>/trace/``) alone, never from the
objects of the program that wrote the trace. A measured run, a simulated
one, a replay and an imported profiler trace therefore look the same on
disk, and ``replay``, ``compare`` and ``report`` accept each of them.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from reports.facts import run_facts, staleness, tier_bytes
from reports.ranks import RANKS_DIRNAME, rank_figures, rank_traces, ranks_markdown
from reports.summary import run_figures, summary_markdown
from traces.atomic import atomic_write_text
from traces.io import TRACE_DIRNAME, Trace, read_trace
from traces.metrics import METRICS_FILENAME, step_metrics, write_metrics
from traces.perfetto import PERFETTO_FILENAME, export_chrome_trace

SUMMARY_FILENAME = "summary.md"


def summary_text(
    trace: Trace, metrics: pd.DataFrame, run_dir: Path, note: str | None = None
) -> str | None:
    """``summary.md`` of the run whose rank-0 trace and metrics these are; None without steps."""
    if metrics.empty:
        return None
    md = trace.metadata
    text = summary_markdown(
        run_figures(metrics),
        title=f"Run {md.run_id}",
        optimizer=md.optimizer,
        device=md.device,
        model=md.model,
        policies=md.policies,
        note=note,
        staleness=staleness(trace.counters),
        tier_bytes=tier_bytes(trace.counters),
        facts=run_facts(trace),
        kind=md.kind,
    )
    if md.world_size > 1 or (run_dir / RANKS_DIRNAME).is_dir():
        figures = [rank_figures(t) for t in rank_traces(run_dir)]
        text += f"\n## Ranks ({md.world_size})\n\n{ranks_markdown(figures)}\n"
    return text


def write_derived(run_dir: Path, *, note: str | None = None) -> Trace:
    """Write the derived files of ``run_dir`` from its trace and return that trace.

    ``note`` (why a run stopped early, say) closes the summary. Raises
    ``traces.io.TraceError`` when the trace cannot be read.
    """
    run_dir = Path(run_dir)
    trace = read_trace(run_dir)
    metrics = step_metrics(trace)
    write_metrics(run_dir / METRICS_FILENAME, metrics)
    export_chrome_trace(trace, run_dir / TRACE_DIRNAME / PERFETTO_FILENAME)
    text = summary_text(trace, metrics, run_dir, note)
    if text is not None:
        atomic_write_text(run_dir / SUMMARY_FILENAME, text)
    return trace
