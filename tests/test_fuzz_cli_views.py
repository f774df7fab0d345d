"""The viewing and importing commands with random bad arguments: one line, exit 0 or 2, no traceback.

``hardware``, ``import-kineto``, ``replay --staleness`` (the what-if),
``simulate --tune`` and every ``--format``, in the style of
``test_fuzz_cli.py``: tiny valid arguments plus a few drawn from what users
get wrong.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from cli_runner import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
BAD = st.sampled_from(
    ["", " ", "-1", "0", "1e309", "nan", "inf", "abc", "1.5", "99999999999999999999",
     "/proc/no/such/path", "bounded:", "sync,", ",", "\u00e9", "table,csv", "40GiBB"]
)  # fmt: skip
counter = itertools.count()


@pytest.fixture(autouse=True)
def _inside_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def check(code: int, err: str) -> None:
    assert code in (0, 2), (code, err)
    assert "Traceback" not in err, err
    if code == 2:
        lines = [line for line in err.strip().splitlines() if line.startswith("asteria-bench")]
        assert len(lines) == 1, err


def one_step_trace(path: Path) -> Path:
    events = [
        {"ph": "X", "cat": "user_annotation", "name": f"ProfilerStep#{n}", "ts": 1000 * n,
         "dur": 900, "tid": 1}
        for n in range(4)
    ]  # fmt: skip
    path.write_text(json.dumps({"traceEvents": events}))
    return path


@FUZZ
@given(name=BAD, option=st.sampled_from(["--format", None]), value=BAD)
def test_hardware(
    capsys: pytest.CaptureFixture[str], name: str, option: str | None, value: str
) -> None:
    extra = [option, value] if option else []
    check(run_cli(["hardware", "show", name, *extra]), capsys.readouterr().err)
    if option:
        check(run_cli(["hardware", "list", *extra]), capsys.readouterr().err)


@FUZZ
@given(
    options=st.lists(
        st.tuples(st.sampled_from(["--refresh-ops", "--precondition-frequency", "--out"]), BAD),
        min_size=1,
        max_size=2,
    )
)
def test_import_kineto(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[tuple[str, str]]
) -> None:
    trace = one_step_trace(tmp_path / "t.json")
    args = ["import-kineto", str(trace), "--out", str(tmp_path / f"r{next(counter)}")]
    for option, value in options:
        args += [option, value]
    check(run_cli(args), capsys.readouterr().err)


@FUZZ
@given(
    options=st.lists(
        st.tuples(
            st.sampled_from(["--staleness", "--workers", "--root-device", "--worker-speed",
                             "--format"]),
            BAD,
        ),
        min_size=1,
        max_size=3,
    )
)  # fmt: skip
def test_replay_what_if(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[tuple[str, str]]
) -> None:
    run = tmp_path / "imported"
    if not run.exists():
        assert (
            run_cli(["import-kineto", str(one_step_trace(tmp_path / "t.json")), "--out", str(run)])
            == 0
        )
    args = ["replay", str(run), "--staleness", "bounded:2"]
    for option, value in options:
        args += [option, value]
    check(run_cli(args), capsys.readouterr().err)


@FUZZ
@given(
    options=st.lists(
        st.tuples(st.sampled_from(["--memory-budget", "--tune-steps", "--top", "--format",
                                   "--staleness", "--placement"]), BAD),
        min_size=1,
        max_size=2,
    )
)  # fmt: skip
def test_simulate_tune(capsys: pytest.CaptureFixture[str], options: list[tuple[str, str]]) -> None:
    args = ["simulate", "--tune", "--model", "gpt-small", "--hardware", "h100-sxm"]
    args += ["--tune-steps", "4", "--precondition-frequency", "2", "--memory-budget", "40"]
    for option, value in options:
        args += [option, value]
    check(run_cli(args), capsys.readouterr().err)
