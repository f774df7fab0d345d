"""``asteria-bench report RUN ... --out DIR``: the HTML report and its Markdown twin."""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console

from asteria_bench.compare_cmd import read_runs
from asteria_bench.errors import UserError
from asteria_bench.outputs import check_out_folder, write_out_folder
from reports.report import HTML_FILENAME, build_report, write_report


def report_command(
    runs: list[Path], *, out: Path, target_loss: float | None, overwrite: bool
) -> None:
    if target_loss is not None and not math.isfinite(target_loss):
        raise UserError(f"--target-loss: expected a finite loss, got {target_loss}")
    check_out_folder(out, overwrite=overwrite)
    loaded = read_runs(runs)
    with Console(stderr=True).status("drawing the figures"):
        report = build_report(loaded, target_loss)
    write_out_folder(out, "report", lambda folder: write_report(report, folder))
    print(str(out / HTML_FILENAME))
