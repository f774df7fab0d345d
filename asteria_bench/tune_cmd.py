"""``simulate --tune``: search the runtime's settings (``simulator.tune``) and print the best few."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from asteria_bench.errors import UserError
from asteria_bench.tables import Column, OutputFormat, ResultTable, Row, Show, emit
from simulator.convergence import DEFAULT_FILE, ConvergenceError, StepsRatio, load_ratios
from simulator.tune import Candidate, TuneResult, tune


def _device_gib(c: Candidate) -> float | None:
    """The device memory that ``fits`` compares with the budget."""
    if c.result is None:
        return None
    r = c.result
    return float(getattr(r, "training_device_gib", 0.0) or r.peak_device_state_gib)


def _f(digits: int) -> Any:
    def fmt(value: Any) -> str:
        return "-" if value is None else f"{float(value):,.{digits}f}"

    return fmt


COLUMNS = (
    Column("rank", "#"),
    Column("placement", "placement", show=Show.VARIES, numeric=False),
    Column("staleness", "staleness", show=Show.VARIES, numeric=False),
    Column("block_size", "block", show=Show.VARIES),
    Column("workers", "workers", show=Show.VARIES),
    Column("root_device", "roots", show=Show.VARIES, numeric=False),
    Column("update_mode", "update", show=Show.VARIES, numeric=False),
    Column("time_to_target_ms", "ms per AdamW step", _f(1)),
    Column("vs_best", "vs best", lambda v: "-" if v is None else f"+{100 * v:.1f}%"),
    Column("steps_ratio", "steps ratio", _f(3), show=Show.WIDE),
    Column("median_ms", "median ms", _f(1)),
    Column("p99_ms", "p99 ms", _f(1), show=Show.WIDE),
    Column("wait_ms_per_step", "wait ms/step", _f(2)),
    Column("device_gib", "device GiB", _f(1)),
    Column("link_gb_per_step", "link GB/step", _f(2)),
    Column("worker_utilisation", "workers busy", lambda v: f"{100 * v:.0f}%" if v else "-", show=Show.WIDE),
)  # fmt: skip


def candidate_row(rank: int, c: Candidate, best_ms: float) -> Row:
    r = c.result
    assert r is not None
    w = c.whatif
    return {
        "rank": rank,
        "placement": w.placement,
        "staleness": w.staleness,
        "block_size": w.block_size,
        "workers": w.workers,
        "root_device": w.root_device,
        "update_mode": w.update_mode,
        "time_to_target_ms": c.objective_ms,
        "vs_best": c.objective_ms / best_ms - 1 if best_ms else None,
        "steps_ratio": c.steps_ratio,
        "median_ms": r.median_ms,
        "p99_ms": r.p99_ms,
        "wait_ms_per_step": r.wait_ms_per_step,
        "device_gib": _device_gib(c),
        "link_gb_per_step": r.link_gb_per_step,
        "worker_utilisation": r.worker_utilisation,
    }


def tune_table(result: TuneResult, top: int, budget_gib: float, source: str) -> ResultTable:
    ranked = result.ranked()
    best_ms = ranked[0].objective_ms if ranked else 0.0
    rows: list[Row] = []
    equal = 0
    shown = [c for c in COLUMNS if c.show is Show.ALWAYS and c.key not in ("rank", "vs_best")]
    for c in ranked:
        row = candidate_row(len(rows) + 1, c, best_ms)
        figures = [col.text(row) for col in shown]
        if rows and figures == [col.text(rows[-1]) for col in shown]:
            equal += 1  # the same figures as the row above: not another trade-off
            continue
        if len(rows) == top:
            break
        rows.append(row)
    b = result.base
    title = (
        f"best of {len(result.candidates)} simulated settings: {b.optimizer}, {b.model} on"
        f" {b.nodes}x{b.gpus_per_node} {b.hardware}, device budget {budget_gib:g} GiB"
    )
    search = (
        "every combination"
        if result.exhaustive
        else "coordinate descent from the given settings (a local optimum)"
    )
    objective = (
        f"ms per AdamW step: mean step time x the steps to AdamW's final loss over AdamW's"
        f" ({source}, --wide shows it): the time it takes to make the progress AdamW makes in"
        " one step. Lower is better."
        if not result.by_step_time
        else f"no measured steps ratio for {b.optimizer} ({source}): ranked by mean step time at"
        f" staleness {b.staleness}."
    )
    infeasible = [c for c in result.candidates if not c.feasible]
    notes = [
        objective,
        f"Searched: {search}; {len(result.candidates)} simulated, {len(infeasible)} over the"
        f" budget or refused; {equal} left out for figures equal to the row above (more"
        " workers, or a placement that moves nothing more). Block size's effect on"
        " convergence is not modelled.",
    ]
    refused = sorted({c.refused for c in infeasible if c.refused})
    notes += [f"refused: {r}" for r in refused[:3]]
    return ResultTable(title, COLUMNS, rows, notes=tuple(notes))


def tune_command(
    base_values: dict[str, str],
    *,
    memory_budget: str | None,
    tune_steps: int,
    top: int,
    convergence: Path | None,
    fmt: OutputFormat,
    wide: bool,
) -> None:
    from asteria_bench.config import parse_bytes
    from asteria_bench.simulate_cmd import expand_sweep, validate_whatif

    swept = sorted(k for k, v in base_values.items() if "," in v)
    if swept:
        option = "--" + swept[0].replace("_", "-")
        raise UserError(f"{option}: one value with --tune (the search chooses the settings)")
    if memory_budget is None:
        raise UserError("--memory-budget: needed with --tune, e.g. --memory-budget 40GiB")
    text = memory_budget.strip()
    budget = parse_bytes(text + "GiB" if _is_number(text) else text, "--memory-budget")
    if budget <= 0:
        raise UserError(f"--memory-budget: expected a positive size, got {memory_budget!r}")
    if tune_steps < 2 or tune_steps > 100_000:
        raise UserError(f"--tune-steps: expected 2..100000, got {tune_steps}")
    if top < 1:
        raise UserError(f"--top: expected a positive integer, got {top}")
    (base,) = expand_sweep(base_values)
    base = replace(base, steps=tune_steps)
    validate_whatif(base)
    ratios: list[StepsRatio] = []
    source = convergence if convergence is not None else DEFAULT_FILE
    try:
        ratios = load_ratios(source)
    except ConvergenceError as exc:
        raise UserError(f"--convergence: {exc}") from None
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("tuning", total=None)

        def advance(done: int, planned: int) -> None:
            progress.update(task, completed=done, total=max(planned, done))

        result = tune(base, budget, ratios, progress=advance)
    table = tune_table(result, top, budget / 2**30, source.name)
    if not table.rows:
        raise UserError(
            f"--memory-budget: no setting fits {memory_budget} (smallest device memory simulated:"
            f" {_smallest(result):.1f} GiB)"
        )
    emit([table], fmt, wide=wide)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _smallest(result: TuneResult) -> float:
    sizes = [g for c in result.candidates if (g := _device_gib(c)) is not None]
    return min(sizes) if sizes else float("nan")
