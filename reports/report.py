"""``asteria-bench report``: one HTML page that opens offline, and its Markdown twin.

The HTML embeds every figure as a base64 PNG and carries its own style, no
script and no link to anything outside the file; the Markdown refers to the
same PNGs written beside it. Both are built from one ``Report``, so they
say the same things, and from the traces alone, so the same runs
give the same bytes.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from reports import figures
from reports.compare import Comparison, compare, fitting_columns, markdown_table
from reports.ranks import rank_metrics
from reports.runs import LoadedRun, aligned

HTML_FILENAME = "report.html"
MARKDOWN_FILENAME = "report.md"


@dataclass(frozen=True)
class FigureItem:
    name: str  # file name stem, e.g. "01-step-time"
    caption: str
    png: bytes


@dataclass(frozen=True)
class Report:
    title: str
    runs_table: str  # Markdown
    comparison_table: str  # Markdown
    notes: list[str]
    figures: list[FigureItem]
    skipped: list[str]  # figures no run had data for


def _runs_markdown(runs: list[LoadedRun]) -> str:
    lines = [
        "| run | kind | optimizer | policies | device | steps |",
        "|---|---|---|---|---|---:|",
    ]
    for run in runs:
        md = run.trace.metadata
        policies = ", ".join(f"{k}={v}" for k, v in sorted(md.policies.items()))
        ranks = f" x {md.world_size} ranks" if md.world_size > 1 else ""
        lines.append(
            f"| {run.label} | {md.kind} | {md.optimizer} | {policies} | {md.device}{ranks} |"
            f" {int(run.metrics['step'].max())} |"
        )
    return "\n".join(lines)


def build_report(runs: list[LoadedRun], target_loss: float | None = None) -> Report:
    comparison: Comparison = compare(runs, target_loss)
    same = [aligned(r, comparison.steps) for r in runs]
    target = comparison.target_loss
    columns, _ = fitting_columns(comparison.rows)
    planned: list[tuple[str, str, Callable[[], Figure | None]]] = [
        ("step-time", "Step time over steps, spikes marked", lambda: figures.step_times(same)),
        ("step-cdf", "Step-time CDF per run and policy", lambda: figures.step_cdf(same)),
        ("breakdown", "An average and the worst step, by part", lambda: figures.breakdown(same)),
        ("tiers", "Bytes resident per tier over time", lambda: figures.tier_residency(same)),
        ("staleness", "Staleness per block over steps", lambda: figures.staleness_map(same)),
        (
            "staleness-hist",
            "Staleness histogram",
            lambda: figures.staleness_histogram(same),
        ),
        ("loss-step", "Loss vs step", lambda: figures.loss_per_step(same, target)),
        ("loss-time", "Loss vs training time", lambda: figures.loss_per_second(same, target)),
        ("replay", "Simulated vs measured", lambda: figures.replay_vs_measured(same)),
    ]
    for run in runs:
        ranks = rank_metrics(run.path) if run.trace.metadata.world_size > 1 else []
        if len(ranks) > 1:
            planned.append(
                (f"ranks-{len(planned)}", f"Per rank: {run.label}", _rank_figure(run, ranks))
            )
    items: list[FigureItem] = []
    skipped: list[str] = []
    for name, caption, draw in planned:
        fig = draw()
        if fig is None:
            skipped.append(caption)
            continue
        items.append(FigureItem(f"{len(items) + 1:02d}-{name}", caption, figures.save_png(fig)))
    return Report(
        title="asteria-bench report: " + ", ".join(r.label for r in runs),
        runs_table=_runs_markdown(runs),
        comparison_table=markdown_table(comparison.rows, columns),
        notes=comparison.notes(),
        figures=items,
        skipped=skipped,
    )


def _rank_figure(
    run: LoadedRun, ranks: list[tuple[int, pd.DataFrame]]
) -> Callable[[], Figure | None]:
    return lambda: figures.per_rank(run, ranks)


def markdown(report: Report) -> str:
    lines = [f"# {report.title}", "", "## Runs", "", report.runs_table, ""]
    lines += ["## Comparison", "", report.comparison_table, "", *report.notes, ""]
    lines += ["`asteria-bench compare --wide` shows every column.", ""]
    for item in report.figures:
        lines += [f"## {item.caption}", "", f"![{item.caption}]({item.name}.png)", ""]
    if report.skipped:
        lines += ["No run holds data for: " + "; ".join(report.skipped) + ".", ""]
    return "\n".join(lines)


_STYLE = """
body { font-family: sans-serif; max-width: 60rem; margin: 2rem auto; color: #111; }
table { border-collapse: collapse; font-size: 0.9rem; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #999; padding: 0.2rem 0.5rem; text-align: left; }
.num { text-align: right; }
img { max-width: 100%; border: 1px solid #ccc; }
figure { margin: 1.5rem 0; }
figcaption { font-weight: bold; margin-bottom: 0.3rem; }
"""


def _html_table(markdown_table_text: str) -> str:
    """A Markdown table (as ``reports.compare`` writes them) as HTML, alignment kept."""
    rows = [line.strip().strip("|").split("|") for line in markdown_table_text.splitlines()]
    head, rule, body = rows[0], rows[1], rows[2:]
    right = [cell.strip().endswith(":") for cell in rule]

    def cells(tag: str, row: list[str]) -> str:
        return "".join(
            f'<{tag} class="{"num" if r else "text"}">{html.escape(c.strip())}</{tag}>'
            for c, r in zip(row, right, strict=True)
        )

    lines = ["<table>", f"<tr>{cells('th', head)}</tr>"]
    lines += [f"<tr>{cells('td', row)}</tr>" for row in body]
    return "\n".join([*lines, "</table>"])


def html_page(report: Report) -> str:
    title = html.escape(report.title)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        f"<title>{title}</title>",
        f"<style>{_STYLE}</style></head>",
        "<body>",
        f"<h1>{title}</h1>",
        "<h2>Runs</h2>",
        _html_table(report.runs_table),
        "<h2>Comparison</h2>",
        _html_table(report.comparison_table),
        *(f"<p>{html.escape(note)}</p>" for note in report.notes),
    ]
    for item in report.figures:
        data = base64.b64encode(item.png).decode("ascii")
        caption = html.escape(item.caption)
        parts.append(
            f'<figure><figcaption>{caption}</figcaption><img alt="{caption}"'
            f' src="data:image/png;base64,{data}"></figure>'
        )
    if report.skipped:
        parts.append(f"<p>No run holds data for: {html.escape('; '.join(report.skipped))}.</p>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def write_report(report: Report, folder: Path) -> None:
    """``report.html``, ``report.md`` and one PNG a figure into ``folder`` (which exists)."""
    from traces.atomic import atomic_write_bytes, atomic_write_text

    for item in report.figures:
        atomic_write_bytes(folder / f"{item.name}.png", item.png)
    atomic_write_text(folder / MARKDOWN_FILENAME, markdown(report))
    atomic_write_text(folder / HTML_FILENAME, html_page(report))
