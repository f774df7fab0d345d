"""``summary.md``: the figures a user looks at first, from a run's metrics table.

Reads only ``metrics.parquet`` columns (see ``traces/SCHEMA.md``) and the
trace's facts (``reports.facts``), so the same summary is made for every kind
of run. It is Markdown written as text, one table row a line, never wrapped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from reports.facts import RunFacts, Staleness, TierBytes


@dataclass(frozen=True)
class RunFigures:
    steps: int
    final_loss: float  # mean training loss over the last 10 steps
    final_val_loss: float
    best_val_loss: float
    median_step_ms: float
    p99_step_ms: float
    max_step_ms: float
    mean_step_ms: float
    total_step_ms: float
    median_compute_ms: float
    median_optimizer_ms: float
    mean_optimizer_ms: float
    mean_compute_ms: float
    total_refresh_ms: float
    total_wait_ms: float
    total_transfer_ms: float
    steps_with_wait: int
    optimizer_state_bytes: int

    @property
    def visible_overhead(self) -> float:
        """Mean optimizer time over mean forward+backward time (0.25 = 25 %)."""
        return self.mean_optimizer_ms / self.mean_compute_ms if self.mean_compute_ms else math.nan

    @property
    def spike_ratio(self) -> float:
        return self.p99_step_ms / self.median_step_ms if self.median_step_ms else math.nan


def run_figures(metrics: pd.DataFrame) -> RunFigures:
    if metrics.empty:
        raise ValueError("metrics table is empty")
    ms = 1e-6
    step = metrics["step_time_ns"].to_numpy(dtype=np.float64) * ms
    compute = (metrics["forward_ns"] + metrics["backward_ns"]).to_numpy(dtype=np.float64) * ms
    opt = metrics["optimizer_ns"].to_numpy(dtype=np.float64) * ms
    val = metrics["val_loss"].dropna()
    return RunFigures(
        steps=int(metrics["step"].iloc[-1]),
        final_loss=float(metrics["loss"].tail(10).mean()),
        final_val_loss=float(val.iloc[-1]) if len(val) else math.nan,
        best_val_loss=float(val.min()) if len(val) else math.nan,
        median_step_ms=float(np.median(step)),
        p99_step_ms=float(np.percentile(step, 99)),
        max_step_ms=float(step.max()),
        mean_step_ms=float(step.mean()),
        total_step_ms=float(step.sum()),
        median_compute_ms=float(np.median(compute)),
        median_optimizer_ms=float(np.median(opt)),
        mean_optimizer_ms=float(opt.mean()),
        mean_compute_ms=float(compute.mean()),
        total_refresh_ms=float(metrics["refresh_ns"].sum() * ms),
        total_wait_ms=float(metrics["wait_ns"].sum() * ms) if "wait_ns" in metrics else 0.0,
        total_transfer_ms=float(metrics["transfer_ns"].sum() * ms)
        if "transfer_ns" in metrics
        else 0.0,
        steps_with_wait=int((metrics["wait_ns"] > 0).sum()) if "wait_ns" in metrics else 0,
        optimizer_state_bytes=int(metrics["optimizer_state_bytes"].iloc[-1]),
    )


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def summary_markdown(
    figures: RunFigures,
    *,
    title: str,
    optimizer: str,
    device: str,
    model: dict[str, Any],
    policies: dict[str, str],
    note: str | None = None,
    staleness: Staleness | None = None,
    tier_bytes: dict[str, TierBytes] | None = None,
    facts: RunFacts | None = None,
    kind: str = "measured",
) -> str:
    """``staleness`` is τ over the run's installed refreshes; ``tier_bytes`` maps a
    tier to its bytes at the last step and at the peak (shown with two tiers or more)."""
    f = figures
    lines = [
        f"# {title}",
        "",
        f"- {kind} run; optimizer: **{optimizer}**; device: {device}; policies: "
        + ", ".join(f"{k}={v}" for k, v in sorted(policies.items())),
        f"- model: {_model_line(model)}",
        f"- steps: {f.steps}",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    if not math.isnan(f.final_loss):
        lines.append(f"| final training loss (mean of last 10 steps) | {f.final_loss:.4f} |")
    if not math.isnan(f.best_val_loss):
        lines += [
            f"| final validation loss | {f.final_val_loss:.4f} |",
            f"| best validation loss | {f.best_val_loss:.4f} |",
        ]
    lines += [
        *_time_rows(f, facts),
        f"| median step time | {f.median_step_ms:.2f} ms |",
        f"| p99 step time | {f.p99_step_ms:.2f} ms (p99/median {f.spike_ratio:.2f}) |",
        f"| longest step | {f.max_step_ms:.2f} ms ({f.max_step_ms / f.median_step_ms:.2f}x median) |",
        f"| median forward+backward | {f.median_compute_ms:.2f} ms |",
        f"| median optimizer step | {f.median_optimizer_ms:.2f} ms |",
        f"| visible optimizer overhead (mean optimizer / mean forward+backward) | {100 * f.visible_overhead:.1f} % |",
        f"| refresh time on the training thread (compute, snapshots, installs) | {f.total_refresh_ms:.1f} ms |",
        f"| waits on the training thread (late refreshes, copies) | {f.total_wait_ms:.1f} ms in {f.steps_with_wait} steps |",
        f"| optimizer state | {_mib(f.optimizer_state_bytes)} |",
    ]
    # Optional rows close the table, in this order.
    if tier_bytes and len(tier_bytes) > 1:
        text = ", ".join(
            f"{tier} {_mib(b.last)} (peak {_mib(b.peak)})" for tier, b in tier_bytes.items()
        )
        lines.append(f"| optimizer state by tier | {text} |")
    if staleness is not None:
        lines.append(
            f"| staleness of installed refreshes | mean {staleness.mean:.2f}, max {staleness.max:.0f} steps ({staleness.installs} installs) |"
        )
    lines += _machine_rows(facts)
    if f.total_transfer_ms > 0:
        lines.append(
            f"| visible transfer time (fetch, write-back, moves on the training thread) | {f.total_transfer_ms:.1f} ms, {f.total_transfer_ms / f.steps:.2f} ms per step |"
        )
    if note:
        lines += ["", note]
    clock = (
        "Times are wall-clock on this machine; compare ratios across runs, not absolute times."
        if kind == "measured"
        else f"Times are on the {kind} run's clock."
    )
    lines += [
        "",
        f"{clock} The trace opens in https://ui.perfetto.dev (trace/trace.perfetto.json).",
        "",
    ]
    return "\n".join(lines)


def _time_rows(f: RunFigures, facts: RunFacts | None) -> list[str]:
    """Total time and throughput: training steps alone, and the whole trace."""
    rows = [f"| training time (sum of step times) | {f.total_step_ms / 1e3:.2f} s |"]
    if facts is None:
        return rows
    if not math.isnan(facts.wall_s):
        rows.append(
            f"| total time (first to last event, evaluation included) | {facts.wall_s:.2f} s |"
        )
    if facts.tokens_per_step and f.mean_step_ms > 0:
        rate = facts.tokens_per_step / (f.mean_step_ms / 1e3)
        rows.append(
            f"| tokens per second (training steps) | {rate:,.0f} ({facts.tokens_per_step:,} tokens per step) |"
        )
    return rows


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _machine_rows(facts: RunFacts | None) -> list[str]:
    if facts is None:
        return []
    threads = [f"{facts.logical_cores} logical cores"]
    if facts.torch_threads is not None:
        threads.append(_count(facts.torch_threads, "torch thread"))
    if facts.refresh_workers is not None:
        threads.append(_count(facts.refresh_workers, "refresh worker"))
    rows = [f"| threads | {', '.join(threads)} |"]
    if facts.load is not None:
        load = facts.load
        text = f"CPU {load.cpu_percent_mean:.0f} % mean, {load.cpu_percent_max:.0f} % max"
        if load.rss_peak_bytes is not None:
            text += f"; resident memory peak {_mib(load.rss_peak_bytes)}"
        rows.append(f"| machine load (whole host) | {text} |")
    return rows


def _model_line(model: dict[str, Any]) -> str:
    """What the run's metadata says of its model; an imported profile may say nothing."""
    parts = [
        f"{model[key]}{unit}"
        for key, unit in (
            ("n_layer", " layers"),
            ("n_embd", " wide"),
            ("n_head", " heads"),
            ("context", " context"),
        )
        if model.get(key) is not None
    ]
    if model.get("parameters"):
        parts.append(f"{model['parameters']:,} parameters")
    return ", ".join(parts) if parts else "not recorded"
