"""The report's figures, one message each, drawn with matplotlib's Agg backend.

Every function takes runs read by ``reports.runs`` and returns a ``Figure``
with a title that states its message and axes with units, or ``None`` when
no run holds what it shows. Runs are told apart by line style, marker and
hatch as well as colour, so a figure reads in grayscale. Nothing here
depends on the clock or on global pyplot state: the same runs give the same
pixels (``save_png`` fixes the file's metadata too).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from reports.compare import SPIKE_FACTOR
from reports.facts import tier_bytes
from reports.runs import LoadedRun

MAX_PANELS = 6
"""Figures with a panel per run show at most this many runs."""


@dataclass(frozen=True)
class Style:
    color: str
    linestyle: str
    marker: str
    hatch: str


STYLES = (
    Style("#1f4e79", "-", "o", ""),
    Style("#c55a11", "--", "s", "//"),
    Style("#548235", ":", "^", ".."),
    Style("#7030a0", "-.", "D", "xx"),
    Style("#404040", (0, (5, 1)), "v", "\\\\"),  # type: ignore[arg-type]
    Style("#b8860b", (0, (1, 3)), "P", "++"),  # type: ignore[arg-type]
)


def style(index: int) -> Style:
    return STYLES[index % len(STYLES)]


def _figure(width: float = 8.0, height: float = 4.0) -> Figure:
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _plain_log_axis(axis: Axis) -> None:
    """Log scale ticked at 1, 2 and 5 of each decade, as plain numbers (200, not 2x10^2)."""
    formatter = ScalarFormatter()
    formatter.set_scientific(False)
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(formatter)
    axis.set_minor_formatter(NullFormatter())


def _positions(run: LoadedRun) -> np.ndarray:
    """1, 2, ... for the run's steps: runs line up by position (a profiled job may start at 553)."""
    return np.arange(1, len(run.metrics) + 1)


def _ms(run: LoadedRun) -> np.ndarray:
    return run.metrics["step_time_ns"].to_numpy(dtype=np.float64) / 1e6


def step_times(runs: list[LoadedRun]) -> Figure:
    fig = _figure()
    ax = fig.add_subplot()
    for i, run in enumerate(runs):
        s, ms = style(i), _ms(run)
        steps = _positions(run)
        ax.plot(steps, ms, color=s.color, linestyle=s.linestyle, linewidth=1.2, label=run.label)
        spikes = ms >= SPIKE_FACTOR * np.median(ms)
        ax.plot(steps[spikes], ms[spikes], linestyle="none", marker=s.marker, color=s.color)
    ax.set_xlabel("training step")
    ax.set_ylabel("step time (ms)")
    ax.set_yscale("log")
    _plain_log_axis(ax.yaxis)
    ax.set_title(f"Step time per step; markers: spikes (>= {SPIKE_FACTOR}x the run's median)")
    ax.legend(fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    return fig


def step_cdf(runs: list[LoadedRun]) -> Figure:
    fig = _figure()
    ax = fig.add_subplot()
    for i, run in enumerate(runs):
        s, ms = style(i), np.sort(_ms(run))
        fraction = np.arange(1, len(ms) + 1) / len(ms)
        policy = f"{run.label} ({run.policy('staleness')}, {run.policy('placement')})"
        ax.step(ms, fraction, where="post", color=s.color, linestyle=s.linestyle, label=policy)
    ax.set_xscale("log")
    _plain_log_axis(ax.xaxis)
    ax.set_xlabel("step time (ms)")
    ax.set_ylabel("fraction of steps at or below")
    ax.set_title("Step-time distribution per run and policy: the tail is the spikes")
    ax.legend(fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    return fig


PARTS = (
    "compute",
    "hot-path optimizer",
    "refresh on training thread",
    "transfers",
    "waits",
    "other",
)


def step_parts(metrics: pd.DataFrame) -> pd.DataFrame:
    """Each step split into ``PARTS`` (ms); the parts add up to the step time."""
    m = metrics
    refresh, transfer, wait = m["refresh_ns"], m["transfer_ns"], m["wait_ns"]
    hot = (m["optimizer_ns"] - refresh - transfer - wait).clip(lower=0)
    parts = pd.DataFrame(
        {
            "compute": m["forward_ns"] + m["backward_ns"],
            "hot-path optimizer": hot,
            "refresh on training thread": refresh,
            "transfers": transfer,
            "waits": wait,
        }
    )
    parts["other"] = (m["step_time_ns"] - parts.sum(axis=1)).clip(lower=0)
    return parts / 1e6


def worst_step(metrics: pd.DataFrame) -> int:
    """Row of the longest step after the first (which also pays one-time set-up)."""
    times = metrics["step_time_ns"].to_numpy()
    if len(times) > 2:
        return 1 + int(np.argmax(times[1:]))
    return int(np.argmax(times))


def breakdown(runs: list[LoadedRun]) -> Figure:
    fig = _figure(8.0, 1.8 + 0.55 * len(runs) * 2)
    ax = fig.add_subplot()
    labels, rows = [], []
    for run in runs:
        parts = step_parts(run.metrics)
        worst = worst_step(run.metrics)
        rows += [parts.mean().to_numpy(), parts.iloc[worst].to_numpy()]
        step = int(run.metrics["step"].iloc[worst])
        labels += [f"{run.label}: mean step", f"{run.label}: worst (step {step})"]
    values = np.array(rows)
    y = np.arange(len(labels))[::-1]
    left = np.zeros(len(labels))
    for k, part in enumerate(PARTS):
        s = style(k)
        ax.barh(
            y,
            values[:, k],
            left=left,
            height=0.7,
            color=s.color,
            hatch=s.hatch,
            edgecolor="white",
            label=part,
        )
        left += values[:, k]
    ax.set_yticks(y, labels)
    ax.set_xlabel("time within the step (ms)")
    ax.set_title("Where an average and the worst step go (worst: after step 1)")
    ax.legend(fontsize="small", ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    return fig


def _panels(count: int, height: float = 2.4) -> tuple[Figure, list[Axes]]:
    fig = _figure(8.0, 0.8 + height * count)
    axes = [fig.add_subplot(count, 1, i + 1) for i in range(count)]
    return fig, axes


def tier_residency(runs: list[LoadedRun]) -> Figure | None:
    shown = [r for r in runs if tier_bytes(r.trace.counters)][:MAX_PANELS]
    if not shown:
        return None
    fig, axes = _panels(len(shown))
    for ax, run in zip(axes, shown, strict=True):
        c = run.trace.counters
        state = c[(c["name"] == "state_bytes") & c["key"].notna()]
        for k, (tier, group) in enumerate(state.groupby("key", sort=True)):
            s = style(k)
            ax.plot(
                group["step"],
                group["value"] / 2**20,
                color=s.color,
                linestyle=s.linestyle,
                marker=s.marker,
                markevery=max(1, len(group) // 8),
                label=str(tier),
            )
        ax.set_ylabel("MiB resident")
        ax.set_title(f"{run.label} ({run.policy('placement')})", fontsize="medium", loc="left")
        ax.legend(fontsize="small")
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("training step")
    fig.suptitle("Optimizer state resident on each tier over training")
    return fig


def _staleness(run: LoadedRun) -> pd.DataFrame:
    c = run.trace.counters
    return c[(c["name"] == "staleness") & c["key"].notna()]


def staleness_map(runs: list[LoadedRun]) -> Figure | None:
    shown = [r for r in runs if not _staleness(r).empty][:MAX_PANELS]
    if not shown:
        return None
    top = max(float(_staleness(r)["value"].max()) for r in shown)
    fig, axes = _panels(len(shown))
    for ax, run in zip(axes, shown, strict=True):
        taus = _staleness(run)
        blocks = sorted(set(taus["key"]))
        row = taus["key"].map({b: i for i, b in enumerate(blocks)})
        points = ax.scatter(
            taus["step"],
            row,
            c=taus["value"],
            cmap="Greys",
            vmin=0,
            vmax=max(top, 1),
            marker="s",
            edgecolors="black",
            linewidths=0.3,
        )
        ax.set_ylabel("block (index)")
        ax.set_title(f"{run.label} ({run.policy('staleness')})", fontsize="medium", loc="left")
    axes[-1].set_xlabel("training step of the install")
    last = max(int(r.metrics["step"].max()) for r in shown)
    for ax in axes:
        ax.set_xlim(0.5, last + 0.5)
    fig.colorbar(points, ax=axes, label="staleness τ (steps)", shrink=0.6, aspect=30)
    fig.suptitle("Staleness of each block's preconditioner at every install")
    return fig


def staleness_histogram(runs: list[LoadedRun]) -> Figure | None:
    shown = [r for r in runs if not _staleness(r).empty]
    if not shown:
        return None
    top = int(max(float(_staleness(r)["value"].max()) for r in shown))
    bins = [k - 0.5 for k in range(top + 2)]
    fig = _figure()
    ax = fig.add_subplot()
    for i, run in enumerate(shown):
        s = style(i)
        ax.hist(
            _staleness(run)["value"],
            bins=bins,
            histtype="step",
            linewidth=1.5,
            color=s.color,
            linestyle=s.linestyle,
            hatch=s.hatch,
            label=run.label,
        )
    ax.set_xlabel("staleness τ at install (steps)")
    ax.set_ylabel("installs")
    ax.set_title("How stale the installed preconditioners were")
    ax.legend(fontsize="small")
    return fig


def _with_loss(runs: list[LoadedRun]) -> list[tuple[int, LoadedRun]]:
    return [(i, r) for i, r in enumerate(runs) if r.metrics["loss"].notna().any()]


def _loss_figure(
    runs: list[LoadedRun], target: float | None, x_of: str, xlabel: str, title: str
) -> Figure | None:
    shown = _with_loss(runs)
    if not shown:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for i, run in shown:
        s, m = style(i), run.metrics
        x = pd.Series(_positions(run)) if x_of == "step" else m["step_time_ns"].cumsum() / 1e9
        ax.plot(x, m["loss"], color=s.color, linestyle=s.linestyle, linewidth=0.8, alpha=0.5)
        val = m["val_loss"].notna()
        ax.plot(
            x[val],
            m.loc[val, "val_loss"],
            color=s.color,
            linestyle=s.linestyle,
            marker=s.marker,
            label=f"{run.label} (validation)",
        )
    if target is not None:
        ax.axhline(target, color="black", linewidth=1, linestyle=(0, (2, 2)))
        ax.annotate(
            f"target {target:.3f}",
            (1.0, target),
            xycoords=("axes fraction", "data"),
            ha="right",
            va="bottom",
            fontsize="small",
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss (nats per byte)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(True, alpha=0.3)
    return fig


def loss_per_step(runs: list[LoadedRun], target: float | None) -> Figure | None:
    return _loss_figure(
        runs,
        target,
        "step",
        "training step",
        "Loss per step: does staleness cost progress? (thin: training, markers: validation)",
    )


def loss_per_second(runs: list[LoadedRun], target: float | None) -> Figure | None:
    return _loss_figure(
        runs,
        target,
        "time",
        "training time (s, sum of step times)",
        "Loss over training time: which run reaches the target first",
    )


def replay_pairs(runs: list[LoadedRun]) -> list[tuple[LoadedRun, LoadedRun]]:
    """(measured, replay) pairs: a simulated run whose id is a measured run's id + ``-replay``."""
    by_id = {r.trace.metadata.run_id: r for r in runs if r.kind != "simulated"}
    pairs = []
    for run in runs:
        run_id = run.trace.metadata.run_id
        if run.kind == "simulated" and run_id.endswith("-replay"):
            source = by_id.get(run_id.removesuffix("-replay"))
            if source is not None:
                pairs.append((source, run))
    return pairs


def replay_vs_measured(runs: list[LoadedRun]) -> Figure | None:
    pairs = replay_pairs(runs)[:MAX_PANELS]
    if not pairs:
        return None
    fig, axes = _panels(len(pairs))
    for ax, (measured, simulated) in zip(axes, pairs, strict=True):
        for k, (run, what) in enumerate(((measured, "measured"), (simulated, "simulated"))):
            s = style(k)
            ax.plot(
                run.metrics["step"],
                _ms(run),
                color=s.color,
                linestyle=s.linestyle,
                marker=s.marker,
                markevery=max(1, len(run.metrics) // 10),
                label=what,
            )
        ax.set_ylabel("step time (ms)")
        ax.set_title(
            f"{measured.label} and its replay {simulated.label}", fontsize="medium", loc="left"
        )
        ax.legend(fontsize="small")
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("training step")
    fig.suptitle("Simulated vs measured step time (the replay on the run's own costs)")
    return fig


def per_rank(run: LoadedRun, rank_metrics: list[tuple[int, pd.DataFrame]]) -> Figure:
    fig = _figure()
    ax = fig.add_subplot()
    for rank, metrics in rank_metrics:
        s = style(rank)
        ax.plot(
            metrics["step"],
            metrics["step_time_ns"] / 1e6,
            color=s.color,
            linestyle=s.linestyle,
            marker=s.marker,
            markevery=max(1, len(metrics) // 10),
            label=f"rank {rank}",
        )
    ax.set_xlabel("training step")
    ax.set_ylabel("step time (ms)")
    ax.set_title(f"{run.label}: step time per rank (the slowest rank sets the pace)")
    ax.legend(fontsize="small")
    ax.grid(True, alpha=0.3)
    return fig


def save_png(fig: Figure) -> bytes:
    """The figure as PNG bytes, with no software tag or date: same figure, same bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()
