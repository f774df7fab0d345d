"""The simulator against published, measured LLM training throughput.

Every case of ``simulator/fidelity/cases.toml`` (model, GPUs, data-parallel
stage, sequence length, micro-batch and accumulation, recompute, precision,
the published tokens/s/GPU and its source) is projected with the profile's
``[training]`` efficiencies, as any what-if is; the table shows the published
and the simulated tokens/s/GPU and the error, then the median and the worst
|error|. The numbers are deterministic: nothing here is timed.

    python benchmarks/bench_fidelity.py
    python benchmarks/bench_fidelity.py --sources     # each case's source and table row
    python benchmarks/bench_fidelity.py --cases FILE  # other published cases, same format
    python benchmarks/bench_fidelity.py --quick       # the first five cases
    python benchmarks/bench_fidelity.py --fit         # redo the profile's fit, and hold out
                                                      # each model in turn (about a minute)

``--fit`` re-derives the four ``[training]`` numbers from the cases
(``simulator/fidelity_fit.py``), prints them beside the profile's, then
refits without each model's rows and prints the errors on those rows: what
a model the fit never saw should expect.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console
from rich.table import Table

from simulator.fidelity_cases import CASES_FILE, Case, load_cases, simulate_case
from simulator.fidelity_fit import fit_efficiency, held_out, model_of
from simulator.llm_step import ComputeEfficiency, compute_efficiency
from simulator.profiles import load_profile


def case_table(rows: list[tuple[Case, float]]) -> Table:
    table = Table(title="published vs simulated training throughput (tokens/s/GPU)")
    for column in ("case", "hw", "GPUs", "dp", "seq", "mb x ga", "rc", "published", "sim", "err"):
        left = column in ("case", "hw", "dp")
        table.add_column(column, justify="left" if left else "right", no_wrap=column == "case")
    for case, simulated in rows:
        error = simulated / case.published_tokens_per_s_per_gpu - 1
        table.add_row(
            case.name,
            case.hardware,
            str(case.gpus),
            case.data_parallel,
            str(case.seq_len),
            f"{case.micro_batch}x{case.grad_accum}",
            case.recompute[:3],
            f"{case.published_tokens_per_s_per_gpu:,.0f}",
            f"{simulated:,.0f}",
            f"{error:+.1%}",
        )
    return table


def _numbers(e: ComputeEfficiency) -> str:
    return (
        f"matmul {e.matmul:.3f}, attention {e.attention:.3f}, memory {e.memory:.3f},"
        f" interference {e.interference:.3f}"
    )


def _summary(errors: list[float]) -> str:
    worst = max(abs(e) for e in errors)
    return f"median |error| {statistics.median(abs(e) for e in errors):.1%}, worst {worst:.1%}"


def print_fit(cases: list[Case]) -> None:
    """The least-squares numbers against each profile's, then leave-one-model-out."""
    hardware = sorted({c.hardware for c in cases})
    for name in hardware:
        on = [c for c in cases if c.hardware == name]
        fit = fit_efficiency(on, compute_efficiency(load_profile(name)))
        bound = f" (at its bound: {', '.join(fit.at_bound)})" if fit.at_bound else ""
        print(f"{name}: fitted on {len(on)} cases: {_numbers(fit.efficiency)}{bound}")
        print(
            f"{name}: the profile states:       {_numbers(compute_efficiency(load_profile(name)))}"
        )
        print(f"{name}: fitted, {_summary(list(fit.errors))}")
        if len({model_of(c) for c in on}) < 2:
            continue
        table = Table(title=f"{name}: each model held out, predicted by a fit on the others")
        for column in ("held-out model", "cases", "median |err|", "worst err", "worst case"):
            table.add_column(column, justify="left" if "model" in column else "right")
        every: list[float] = []
        for held in held_out(on, fit.efficiency):
            worst = max(range(len(held.errors)), key=lambda i: abs(held.errors[i]))
            every.extend(held.errors)
            table.add_row(
                held.model,
                str(len(held.cases)),
                f"{statistics.median(abs(e) for e in held.errors):.1%}",
                f"{held.errors[worst]:+.1%}",
                held.cases[worst].name,
            )
        Console(width=100).print(table)
        print(f"{name}: held out, {_summary(every)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=Path, default=CASES_FILE, help="a cases TOML file")
    parser.add_argument("--sources", action="store_true", help="print each case's source")
    parser.add_argument("--quick", action="store_true", help="the first five cases only")
    parser.add_argument(
        "--fit", action="store_true", help="refit the efficiencies; hold out each model"
    )
    args = parser.parse_args(argv)
    cases = load_cases(args.cases)[: 5 if args.quick else None]
    if not cases:
        raise SystemExit(f"{args.cases}: no [[case]] entries")
    rows = [(case, simulate_case(case)) for case in cases]
    console = Console(width=100)
    console.print(case_table(rows))
    errors = [abs(sim / case.published_tokens_per_s_per_gpu - 1) for case, sim in rows]
    worst = max(range(len(rows)), key=lambda i: errors[i])
    print(
        f"{len(rows)} cases: median |error| {statistics.median(errors):.1%},"
        f" worst {errors[worst]:.1%} ({rows[worst][0].name});"
        f" {sum(e > 0.2 for e in errors)} above 20 %, {sum(e > 0.1 for e in errors)} above 10 %"
    )
    if args.fit:
        print_fit(cases)
    if args.sources:
        for case, _ in rows:
            print(f"{case.name} ({case.framework}):")
            for text in (case.source, case.table):
                print(textwrap.fill(text, width=100, initial_indent="  ", subsequent_indent="    "))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
