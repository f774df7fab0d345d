"""``asteria-bench report``: figures from traces, an HTML page that opens offline, its Markdown twin.

The page is loaded in a real headless browser (Debian's ``chromium``): no
console error, every figure decoded, a screenshot that is not blank.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from cli_runner import run_cli

from reports import figures
from reports.runs import load_runs
from tests.samples import METADATA, TINY_RUN
from traces.io import write_trace
from traces.schema import Category, CounterSample, Span

TINY = [*TINY_RUN, "--eval-every", "4", "--eval-batches", "1", "--corpus-bytes", "20000"]
TINY += ["--precondition-frequency", "3"]
FIGURES = ("step-time", "step-cdf", "breakdown", "staleness", "staleness-hist", "loss-step")
FIGURES += ("loss-time", "replay")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A synchronous and a bounded-staleness run (tiered), and the replay of the first."""
    root = tmp_path_factory.mktemp("report")
    sync, bounded, replay = root / "sync", root / "bounded", root / "sync-replay"
    assert run_cli(["run", "--steps", "8", "--out", str(sync), *TINY]) == 0
    tiered = ["--placement", "lifecycle", "--device-budget", "700KiB"]
    args = ["run", "--steps", "8", "--staleness", "bounded:2", *tiered, *TINY]
    assert run_cli([*args, "--out", str(bounded)]) == 0
    assert run_cli(["replay", str(sync), "--out", str(replay)]) == 0
    return [sync, bounded, replay]


@pytest.fixture(scope="module")
def report(runs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out") / "report"
    assert run_cli(["report", *map(str, runs), "--out", str(out)]) == 0
    return out


def test_every_figure_is_drawn_and_the_markdown_twin_points_at_them(report: Path) -> None:
    pngs = sorted(p.name for p in report.glob("*.png"))
    for name in (*FIGURES, "tiers"):
        assert any(p.endswith(f"-{name}.png") for p in pngs), name
    md = (report / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(linked) == pngs
    assert "| run |" in md and "## Comparison" in md


def test_the_html_is_self_contained(report: Path) -> None:
    page = (report / "report.html").read_text()
    sources = re.findall(r'src="([^"]+)"', page)
    assert len(sources) == len(list(report.glob("*.png")))
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<script" not in page and "<link" not in page and "http" not in page.split("<body>")[1]


def test_the_same_runs_give_the_same_bytes(runs: list[Path], report: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    assert run_cli(["report", *map(str, runs), "--out", str(again)]) == 0
    for file in sorted(report.iterdir()):
        assert (again / file.name).read_bytes() == file.read_bytes(), file.name


def test_spike_markers_and_breakdown_parts_follow_the_metrics(runs: list[Path]) -> None:
    loaded = load_runs(runs[:2])
    fig = figures.step_times(loaded)
    ax = fig.axes[0]
    for i, run in enumerate(loaded):
        ms = run.metrics["step_time_ns"].to_numpy(dtype=np.float64) / 1e6
        expected = int((ms >= figures.SPIKE_FACTOR * np.median(ms)).sum())
        markers = ax.lines[2 * i + 1]  # each run: its line, then its spikes
        assert len(markers.get_xdata()) == expected
    for run in loaded:
        parts = figures.step_parts(run.metrics)
        total = run.metrics["step_time_ns"].to_numpy(dtype=np.float64) / 1e6
        assert np.allclose(parts.sum(axis=1).to_numpy(), total, rtol=0, atol=1e-9)
        assert (parts.to_numpy() >= 0).all()


def _two_ranks(folder: Path) -> Path:
    """A run directory of two ranks, rank 1 the slower, written by hand."""
    for rank in (0, 1):
        where = folder if rank == 0 else folder / "ranks" / "1"
        metadata = dataclasses.replace(METADATA, rank=rank, world_size=2, run_id="dp")
        spans = [
            Span("step", Category.STEP, s * 10**7, s * 10**7 + (4 + rank) * 10**6, "main", s)
            for s in range(1, 6)
        ]
        counters = [CounterSample("loss", s * 10**7, 3.0 - 0.1 * s, s) for s in range(1, 6)]
        write_trace(where, metadata, spans, counters)
    return folder


def test_a_run_of_several_ranks_gets_a_per_rank_figure(tmp_path: Path) -> None:
    run = _two_ranks(tmp_path / "dp")
    out = tmp_path / "out"
    assert run_cli(["report", str(run), "--out", str(out)]) == 0
    assert len(list(out.glob("*-ranks-*.png"))) == 1
    fig = figures.per_rank(load_runs([run])[0], [(0, _ms_frame(4)), (1, _ms_frame(5))])
    assert [line.get_label() for line in fig.axes[0].lines] == ["rank 0", "rank 1"]


def _ms_frame(ms: int) -> pd.DataFrame:
    return pd.DataFrame({"step": [1, 2], "step_time_ns": [ms * 10**6] * 2})


def test_out_follows_the_no_overwrite_rules(
    runs: list[Path], report: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ours = tmp_path / "ours"
    shutil.copytree(report, ours)
    before = len(list(ours.glob("*.png")))
    capsys.readouterr()
    assert run_cli(["report", str(runs[0]), "--out", str(ours)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert run_cli(["report", str(runs[0]), "--out", str(runs[0])]) == 2
    assert "is a measured run" in capsys.readouterr().err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert run_cli(["report", str(runs[0]), "--out", str(mine), "--overwrite"]) == 2
    assert (mine / "notes.txt").read_text() == "keep"
    assert run_cli(["report", str(runs[0]), "--out", str(ours), "--overwrite"]) == 0
    assert len(list(ours.glob("*.png"))) < before  # replaced whole: one run, fewer figures


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["MISSING"], "RUN: "),
        (["RUN", "--target-loss", "inf"], "--target-loss: expected a finite loss"),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(
    runs: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    args = [
        str(runs[0]) if a == "RUN" else str(tmp_path / a) if a == "MISSING" else a for a in args
    ]
    out = tmp_path / "out"
    capsys.readouterr()
    assert run_cli(["report", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not out.exists() and not out.with_name("out.partial").exists()


CHROMIUM = shutil.which("chromium")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_the_page_renders_in_a_headless_browser(report: Path, tmp_path: Path) -> None:
    assert CHROMIUM is not None
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    browser += [f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]
    page = report / "report.html"
    shot = tmp_path / "shot.png"
    loaded = subprocess.run(
        [*browser, "--window-size=1000,1400", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    console = [line for line in loaded.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[0] > 100 and float(pixels[..., :3].var()) > 0.0
    # A copy that counts, once loaded, the figures the browser decoded.
    probe = tmp_path / "probe.html"
    count = (
        "<script>addEventListener('load', () => { const images = [...document.images];"
        " document.body.dataset.decoded = images.filter(i => i.complete && i.naturalWidth > 0)"
        ".length; document.body.dataset.total = images.length; });</script></body>"
    )
    probe.write_text(page.read_text().replace("</body>", count))
    dom = subprocess.run(
        [*browser, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    body = re.search(r'<body data-decoded="(\d+)" data-total="(\d+)"', dom.stdout)
    assert body is not None, dom.stdout[:500]
    decoded, total = int(body.group(1)), int(body.group(2))
    assert total == len(list(report.glob("*.png"))) and decoded == total
