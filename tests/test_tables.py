"""The CLI's tables fit 100 columns with no cell cut, and their data forms carry every figure."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from cli_runner import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from asteria_bench.sim_tables import simulate_table
from asteria_bench.simulate_cmd import results_frame
from asteria_bench.tables import (
    TABLE_WIDTH,
    Column,
    OutputFormat,
    ResultTable,
    Show,
    emit,
    fit_widths,
)
from simulator.whatif import SCENARIOS, WhatIf, run_whatif

SIM = ["simulate", "--hardware", "h100-pcie,gh200", "--model", "gpt-small", "--steps", "12"]
SIM += ["--placement", "device,lifecycle", "--staleness", "sync,bounded:4"]
SIM += ["--tokens-per-rank", "4096", "--precondition-frequency", "4"]


def rendered(table: ResultTable, wide: bool = False, width: int = TABLE_WIDTH) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(table.rich(wide, width))
    return console.export_text()


def assert_fits_uncut(table: ResultTable, text: str, width: int = TABLE_WIDTH) -> None:
    """No line is wider than ``width``, no ellipsis, and every word of every cell appears whole."""
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    tokens = set(re.split(r"\s+", text))
    for row in table.cells(False):
        for cell in row:
            for word in cell.split():
                assert word in tokens, f"{word!r} of {cell!r} is cut"


@pytest.fixture(scope="module")
def scenario_results():  # type: ignore[no-untyped-def]
    _, whatifs = SCENARIOS["gb10-1b"]
    return [run_whatif(WhatIf(**{**w.__dict__, "steps": 12})) for w in whatifs]


def test_the_scenario_table_fits_100_columns_without_a_cut_number(scenario_results) -> None:  # type: ignore[no-untyped-def]
    frame = results_frame(scenario_results)
    table = simulate_table(scenario_results, frame, "scenario gb10-1b", ratios=[])
    text = rendered(table)
    assert_fits_uncut(table, text)
    # the deciding figures are there, the wide-only ones are not
    headers = [c.header for c in table.shown(False)]
    assert "median ms" in headers and "p99/p50" in headers and "wait ms/step" in headers
    assert "mean ms" not in headers and "all-reduce ms" not in headers
    # hardware and model do not vary: named once in the title, not as columns
    assert "hardware" not in headers and "hardware gb10" in text
    for r in scenario_results:
        assert f"{r.median_ms:,.1f}" in text


def test_wide_shows_every_printed_column(scenario_results) -> None:  # type: ignore[no-untyped-def]
    frame = results_frame(scenario_results)
    table = simulate_table(scenario_results, frame, "scenario", ratios=[])
    wide = table.shown(True)
    assert len(wide) > len(table.shown(False))
    assert {c.header for c in wide} >= {"mean ms", "p99 ms", "all-reduce ms", "hardware"}
    text = rendered(table, wide=True, width=240)
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 240


def test_simulate_prints_a_sweep_in_100_columns(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(SIM) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    assert max(len(line) for line in out.splitlines()) <= TABLE_WIDTH
    # two hardware profiles and two placements vary: both are columns
    header = next(line for line in out.splitlines() if "what-if" in line)
    assert "hardware" in header and "placement" in header


def test_simulate_csv_and_json_carry_the_figures_of_simulate_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli([*SIM, "--format", "csv", "--out", str(tmp_path / "sim")]) == 0
    captured = capsys.readouterr()
    printed = pd.read_csv(io.StringIO(captured.out))
    written = pd.read_csv(tmp_path / "sim" / "simulate.csv")
    assert set(written.columns) <= set(printed.columns)
    pd.testing.assert_series_equal(printed["median_ms"], written["median_ms"])
    assert "simulated run(s)" in captured.err  # status lines leave stdout to the data
    assert run_cli([*SIM, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["rows"]) == 8
    assert data["rows"][0]["median_ms"] == pytest.approx(written["median_ms"][0])
    assert run_cli([*SIM, "--format", "md", "--wide"]) == 0
    md = capsys.readouterr().out.splitlines()
    table_lines = [line for line in md if line.startswith("|")]
    assert len(table_lines) == 2 + 8 and "mean ms" in table_lines[0]


def test_an_unknown_format_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli([*SIM, "--format", "xml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "asteria-bench: error: --format: expected one of table, csv, json, md, got 'xml'"
    ]


def test_replay_writes_its_fidelity_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "soap"
    tiny = ["--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--context", "16"]
    tiny += ["--batch-size", "4", "--eval-every", "100", "--eval-batches", "1", "--quiet"]
    tiny += ["--corpus-bytes", "20000", "--steps", "6", "--torch-threads", "1"]
    assert run_cli(["run", "--optimizer", "soap", "--out", str(run), *tiny]) == 0
    capsys.readouterr()
    assert run_cli(["replay", str(run), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    fields = {row["field"]: row for row in data["rows"]}
    assert set(fields) == {"median_ms", "p99_ms", "overhead"}
    median = fields["median_ms"]
    expected = abs(median["simulated"] - median["measured"]) / median["measured"]
    assert median["relative_error"] == pytest.approx(expected)
    assert run_cli(["replay", str(run), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["figure"] for r in rows] == ["median step", "p99 step", "visible optimizer overhead"]


WORDS = st.lists(st.integers(1, 30), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(WORDS, st.data())
def test_fit_widths_never_go_below_a_word_and_fit_when_the_words_do(
    words: list[int], data: st.DataObject
) -> None:
    longest = [w + data.draw(st.integers(0, 60)) for w in words]
    room = data.draw(st.integers(1, 400))
    numeric = data.draw(st.lists(st.booleans(), min_size=len(words), max_size=len(words)))
    widths = fit_widths(longest, words, room, numeric)
    assert all(w >= least for w, least in zip(widths, words, strict=True))
    assert all(w <= most for w, most in zip(widths, longest, strict=True))
    if sum(words) <= room:
        assert sum(widths) <= room
    else:
        assert widths == words


def test_a_column_shown_only_where_it_varies_or_has_values() -> None:
    columns = (
        Column("name", "name", numeric=False),
        Column("hw", "hardware", show=Show.VARIES, numeric=False),
        Column("x", "x"),
        Column("none", "empty"),
        Column("raw", "raw", show=Show.NEVER),
    )
    rows = [{"name": "a", "hw": "gh200", "x": 1, "none": None, "raw": 3}]
    rows += [{"name": "b", "hw": "gh200", "x": 2, "none": None, "raw": 4}]
    table = ResultTable("t", columns, rows)
    assert [c.key for c in table.shown(False)] == ["name", "x"]
    assert table.heading(False) == "t (hardware gh200)"
    out = io.StringIO()
    emit([table], OutputFormat.CSV, out=out)
    assert out.getvalue().splitlines() == ["name,hw,x,none,raw", "a,gh200,1,,3", "b,gh200,2,,4"]
    out = io.StringIO()
    emit([table], OutputFormat.JSON, out=out)
    assert json.loads(out.getvalue())["rows"][1] == {
        "name": "b",
        "hw": "gh200",
        "x": 2,
        "none": None,
        "raw": 4,
    }


def test_a_table_too_wide_for_the_terminal_is_printed_wider_not_cut() -> None:
    columns = tuple(Column(f"c{i}", f"column{i}") for i in range(14))
    rows = [{f"c{i}": 1234567.25 + i for i in range(14)}]
    table = ResultTable("many columns", columns, rows)
    assert table.least_width() > TABLE_WIDTH
    out = io.StringIO()
    emit([table], OutputFormat.TABLE, out=out)
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) == table.least_width()
    for i in range(14):
        assert f"{1234567.25 + i}" in text
