"""The tables of ``simulate`` and ``replay``: which figures decide, and how they read.

The compact ``simulate`` table keeps the configuration and the figures a
choice turns on: median step, spikes (p99/p50), visible overhead, waits, the
peak optimizer state on the device (flagged past the budget), link traffic,
and the comparison with AdamW (step time, and time to AdamW's loss where the
convergence ratios are known). A setting column (hardware, model, ranks,
placement, ...) is printed only when the rows differ in it; otherwise it goes
into the title once. ``--wide`` prints everything; CSV and JSON carry every
raw figure, with the columns of ``simulate.csv``.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from asteria_bench.tables import Column, ResultTable, Row, Show
from simulator.convergence import StepsRatio, steps_ratio_for, time_to_target_ratio
from simulator.replay import Fidelity
from simulator.whatif import WhatIfResult


def _f(digits: int, suffix: str = "") -> Any:
    def fmt(value: Any) -> str:
        if value is None or (isinstance(value, float) and value != value):
            return "-"
        return f"{float(value):,.{digits}f}{suffix}"

    return fmt


def _pct(value: Any) -> str:
    return "-" if value is None or value != value else f"{100 * float(value):.1f} %"


def _memory(row: Row) -> str:
    text = f"{row['training_device_gib']:,.1f}"
    return text if row["fits"] else f"{text}!"


def _time_to_target(row: Row) -> str:
    value, pm = row.get("time_to_target_vs_adamw"), row.get("time_to_target_pm")
    if value is None:
        return row.get("time_to_target_note") or "-"
    return f"{value:.2f} ± {pm:.2f}" if pm else f"{value:.2f}"


SIMULATE_COLUMNS = (
    Column("label", "what-if", numeric=False),
    Column("hardware", "hardware", show=Show.VARIES, numeric=False),
    Column("model", "model", show=Show.VARIES, numeric=False),
    Column("ranks", "ranks", show=Show.VARIES, data=False),
    Column("placement", "placement", show=Show.VARIES, numeric=False),
    Column("update_mode", "update", show=Show.VARIES, numeric=False),
    Column("workers", "workers", show=Show.VARIES),
    Column("block_size", "block", show=Show.VARIES),
    Column("precondition_frequency", "freq.", show=Show.VARIES),
    Column("tokens_per_rank", "tokens/rank", show=Show.VARIES),
    Column("seq_len", "seq", show=Show.VARIES),
    Column("micro_batch", "micro-batch", show=Show.VARIES),
    Column("grad_accum", "accum.", show=Show.VARIES),
    Column("recompute", "recompute", show=Show.VARIES, numeric=False),
    Column("precision", "precision", show=Show.VARIES, numeric=False),
    Column("data_parallel", "dp", show=Show.VARIES, numeric=False),
    Column("steps", "steps", show=Show.VARIES),
    Column("device_budget", "device budget", show=Show.NEVER),
    Column("host_budget", "host budget", show=Show.NEVER),
    Column("optimizer", "optimizer", show=Show.NEVER),
    Column("staleness", "staleness", show=Show.NEVER),
    Column("root_device", "roots", show=Show.NEVER),
    Column("nodes", "nodes", show=Show.NEVER),
    Column("gpus_per_node", "GPUs/node", show=Show.NEVER),
    Column("median_ms", "median ms", _f(1)),
    Column("mean_ms", "mean ms", _f(1), show=Show.WIDE),
    Column("p99_ms", "p99 ms", _f(1), show=Show.WIDE),
    Column("max_ms", "max ms", _f(1), show=Show.WIDE),
    Column("spike", "p99/p50", _f(2), data=False),
    Column("overhead", "overhead", _pct),
    Column("wait_ms_per_step", "wait ms/step", _f(2)),
    Column("state_gib_per_rank", "opt. state GiB/rank", _f(1), show=Show.WIDE),
    Column("peak_device_state_gib", "opt. on dev. GiB", _f(1), show=Show.WIDE),
    Column("training_device_gib", "memory GiB", cell=_memory),
    Column("memory_gib_per_rank", "all state GiB", _f(1), show=Show.WIDE),
    Column("tokens_per_s_per_gpu", "tokens/s/GPU", _f(0), show=Show.WIDE),
    Column("event_steps", "event steps", show=Show.WIDE),
    Column("device_budget_gib", "device GiB", _f(0), show=Show.WIDE),
    Column("fits", "fits", show=Show.NEVER),
    Column("link_gb_per_step", "link GB/step", _f(2)),
    Column("transfer_wait_ms_per_step", "copy wait ms/step", _f(2), show=Show.WIDE),
    Column(
        "worker_utilisation",
        "workers busy",
        lambda v: f"{100 * v:.0f} %" if v else "-",
        show=Show.WIDE,
    ),
    Column("lower_bound_ms", "lower bound ms", _f(1), show=Show.WIDE),
    Column("publish_gb_per_step", "publish GB/step", _f(2), show=Show.WIDE),
    Column("allreduce_ms", "all-reduce ms", _f(1), show=Show.WIDE),
    Column("vs_adamw_mean", "step vs AdamW", _f(2), show=Show.WIDE),
    Column("time_to_target_vs_adamw", "time to AdamW's loss", cell=_time_to_target),
    Column("time_to_target_pm", "±", show=Show.NEVER),
)
"""Every column, in order; the first rows of settings are those of ``simulate.csv``."""

SIMULATE_NOTES = (
    "overhead: median step over forward+backward, minus 1. p99/p50: spikes. memory: the whole"
    " training state on the device at its peak (parameters, gradients, master weights, optimizer"
    " state, activations; on unified memory the one pool), ! where it exceeds the device."
    " step vs AdamW: mean step time over AdamW's on the same hardware and model. --wide: every"
    " column.",
)


def simulate_rows(
    results: list[WhatIfResult], frame: pd.DataFrame, ratios: list[StepsRatio]
) -> list[Row]:
    """``frame`` is ``results_frame(results)`` (the CSV's raw figures); AdamW comparisons added."""
    adamw = {
        (r.whatif.hardware, r.whatif.model, r.whatif.nodes, r.whatif.gpus_per_node): r.mean_ms
        for r in results
        if r.whatif.optimizer == "adamw"
    }
    rows = []
    for r, record in zip(results, frame.to_dict("records"), strict=True):
        w = r.whatif
        row: Row = {str(k): (None if _na(v) else v) for k, v in record.items()}
        row.update(ranks=f"{w.nodes}x{w.gpus_per_node}", spike=r.spike)
        if w.optimizer == "adamw":
            row["placement"] = "-"
        base = adamw.get((w.hardware, w.model, w.nodes, w.gpus_per_node))
        row["vs_adamw_mean"] = r.mean_ms / base if base else None
        row.update(_time_to_target_figures(r, base, ratios))
        rows.append(row)
    return rows


def _na(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _time_to_target_figures(
    r: WhatIfResult, adamw_mean_ms: float | None, ratios: list[StepsRatio]
) -> Row:
    """Time to AdamW's target loss over AdamW's: measured steps ratio x simulated step ratio."""
    if not adamw_mean_ms:
        return {"time_to_target_vs_adamw": None, "time_to_target_pm": None}
    if r.whatif.optimizer == "adamw":
        return {"time_to_target_vs_adamw": 1.0, "time_to_target_pm": 0.0}
    ratio = steps_ratio_for(ratios, r.whatif.optimizer, r.whatif.staleness)
    if ratio is None:
        return {
            "time_to_target_vs_adamw": None,
            "time_to_target_pm": None,
            "time_to_target_note": "not measured",
        }
    value, plus_minus = time_to_target_ratio(r.mean_ms, adamw_mean_ms, ratio)
    return {"time_to_target_vs_adamw": value, "time_to_target_pm": plus_minus}


def simulate_table(
    results: list[WhatIfResult],
    frame: pd.DataFrame,
    title: str,
    ratios: list[StepsRatio] | None = None,
    notes: tuple[str, ...] = (),
) -> ResultTable:
    rows = simulate_rows(results, frame, ratios or [])
    return ResultTable(title, SIMULATE_COLUMNS, rows, notes=SIMULATE_NOTES + notes)


FIDELITY_FIELDS = (
    ("median step", "median_ms", "{:.2f} ms"),
    ("p99 step", "p99_ms", "{:.2f} ms"),
    ("visible optimizer overhead", "overhead", "{:.1%}"),
)

FIDELITY_COLUMNS = (
    Column("figure", "figure", numeric=False),
    Column("field", "field", show=Show.NEVER),
    Column("measured", "measured", cell=lambda row: row["fmt"].format(row["measured"])),
    Column("simulated", "simulated", cell=lambda row: row["fmt"].format(row["simulated"])),
    Column("relative_error", "error", _pct),
    Column("fmt", "", show=Show.NEVER, data=False),
)


def fidelity_table(fidelity: Fidelity, title: str, notes: tuple[str, ...] = ()) -> ResultTable:
    """Measured against simulated, per figure; ``relative_error`` is |s − m| / |m|."""
    rows: list[Row] = [
        {
            "figure": label,
            "field": field,
            "measured": getattr(fidelity.measured, field),
            "simulated": getattr(fidelity.simulated, field),
            "relative_error": fidelity.error(field),
            "fmt": fmt,
        }
        for label, field, fmt in FIDELITY_FIELDS
    ]
    return ResultTable(title, FIDELITY_COLUMNS, rows, notes=notes)
