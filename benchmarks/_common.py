"""What the benchmark scripts share: the environment line, threads, tables, a run's counters.

Nothing here measures anything; it only formats and reports, so that the
scripts print their context the same way.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Iterable, Sequence

import torch

from traces.schema import CounterSample

DEFAULT_THREADS = 1
"""Intra-op threads unless ``--threads`` says otherwise.

On a shared 2-core machine, OpenMP with 2 threads stalls at every barrier while
the other core runs someone else's job (steps of a few ms become tens of ms), so
one thread gives ratios that repeat. Pass ``--threads 2`` on an idle machine.
"""


def set_threads(threads: int | None) -> None:
    """Fix torch's intra-op threads; None keeps torch's default."""
    if threads is not None:
        if threads < 1:
            raise SystemExit(f"--threads: expected a positive integer, got {threads}")
        torch.set_num_threads(threads)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, or 'n/a' where the OS has none."""
    try:
        one, five, fifteen = os.getloadavg()
    except (AttributeError, OSError):
        return "n/a"
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def environment_line() -> str:
    """torch version, threads, CPUs and load: the context every timing needs."""
    return (
        f"torch {torch.__version__} | threads {torch.get_num_threads()} "
        f"(interop {torch.get_num_interop_threads()}) | cpus {os.cpu_count()} | "
        f"load average {load_average()} | "
        f"fp32 matmul precision {torch.get_float32_matmul_precision()}"
    )


def median(values: Iterable[float]) -> float:
    values = [v for v in values if math.isfinite(v)]
    return statistics.median(values) if values else math.nan


def mean(values: Iterable[float]) -> float:
    values = [v for v in values if math.isfinite(v)]
    return statistics.fmean(values) if values else math.nan


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """25th and 75th percentiles (the spread printed beside a median)."""
    if len(values) < 2:
        v = values[0] if values else math.nan
        return v, v
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def fmt(value: float | None, digits: int = 2) -> str:
    """A number for a table cell; None and NaN print as 'n/a'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown pipe table with padded columns (pastes into a report as is)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(line(row) for row in rows)
    return "\n".join(out)


def peak_device_state_bytes(counters: Iterable[CounterSample]) -> int:
    """The largest device-tier ``state_bytes`` counter of a run (0 when none was recorded)."""
    device = [c.value for c in counters if c.name == "state_bytes" and c.key == "device"]
    return int(max(device, default=0))
