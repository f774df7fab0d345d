"""Every subcommand with random bad arguments: an exit status and at most one line, no traceback.

Each case starts from arguments that keep the work tiny (a one-step run of a
one-layer model, a two-step simulation, a quick profile) and adds a few
options with values drawn from what users get wrong: empty strings, negative,
huge, non-finite and non-numeric numbers, missing paths, files where folders
are expected. The command must end with 0, 1 (a run stopped early, said in
one line) or 2 (bad input, one line) and print no traceback.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from cli_runner import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
BAD = st.sampled_from(
    ["", " ", "-1", "0", "1e309", "nan", "inf", "-inf", "abc", "1.5", "99999999999999999999",
     "none", "100000000", "/proc/no/such/path", "bounded:", "pressure:1", "2GiBB", "sync,", ",", "\u00e9"]
)  # fmt: skip
RUN_OPTIONS = [  # not --steps: a huge valid count is a long run, not a bad input
    "--optimizer", "--seed", "--device", "--batch-size", "--eval-every",
    "--warmup-steps", "--lr-schedule", "--min-lr-ratio", "--grad-clip", "--lr", "--beta1",
    "--beta2", "--eps", "--weight-decay", "--precondition-frequency", "--block-size",
    "--max-precond-dim", "--staleness", "--workers", "--root-device", "--placement",
    "--device-budget", "--host-budget", "--update-mode", "--ranks-per-node", "--dist-timeout",
    "--n-head", "--context", "--dropout", "--data", "--eigenvalue-init", "--grafting",
]  # fmt: skip
SIMULATE_OPTIONS = [
    "--hardware", "--model", "--optimizer", "--staleness", "--root-device", "--nodes",
    "--gpus-per-node", "--steps", "--block-size", "--precondition-frequency", "--workers",
    "--placement", "--device-budget", "--update-mode", "--scenario", "--calibrate-on",
]  # fmt: skip
TINY_RUN = ["--steps", "1", "--n-layer", "1", "--n-embd", "8", "--n-head", "1", "--context", "4",
            "--batch-size", "1", "--eval-batches", "1", "--corpus-bytes", "10000", "-q",
            "--torch-threads", "1"]  # fmt: skip
counter = itertools.count()


@pytest.fixture(autouse=True)
def _inside_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A drawn value may be a relative path a command then writes ("--out nan"): into tmp."""
    monkeypatch.chdir(tmp_path)


def check(code: int, err: str) -> None:
    assert code in (0, 1, 2), (code, err)
    assert "Traceback" not in err, err
    if code in (1, 2):
        lines = [line for line in err.strip().splitlines() if line.startswith("asteria-bench")]
        assert len(lines) == 1, err


@FUZZ
@given(options=st.lists(st.tuples(st.sampled_from(RUN_OPTIONS), BAD), min_size=1, max_size=3))
def test_run_with_bad_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[tuple[str, str]]
) -> None:
    out = tmp_path / f"run{next(counter)}"
    args = ["run", *TINY_RUN, "--out", str(out)]
    for option, value in options:
        args += [option, value]
    code = run_cli(args)
    check(code, capsys.readouterr().err)
    if code == 2:
        assert not out.exists() and not out.with_name(out.name + ".incomplete").exists()


@FUZZ
@given(options=st.lists(st.tuples(st.sampled_from(SIMULATE_OPTIONS), BAD), min_size=1, max_size=3))
def test_simulate_with_bad_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[tuple[str, str]]
) -> None:
    args = ["simulate", "--model", "gpt-default", "--hardware", "h100-sxm", "--steps", "2"]
    for option, value in options:
        args += [option, value]
    check(run_cli(args), capsys.readouterr().err)


@FUZZ
@given(value=BAD, option=st.sampled_from(["--out", "--name", "--disk-dir"]))
def test_profile_with_bad_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, option: str
) -> None:
    out = tmp_path / f"p{next(counter)}.toml"
    args = ["profile", "--quick", "--no-disk", "--out", str(out), option, value]
    check(run_cli(args), capsys.readouterr().err)


@FUZZ
@given(path=BAD, option=st.sampled_from([None, "--calibrate-on", "--out"]), value=BAD)
def test_replay_with_bad_arguments(
    capsys: pytest.CaptureFixture[str], path: str, option: str | None, value: str
) -> None:
    args = ["replay", path] + ([option, value] if option else [])
    code = run_cli(args)
    check(code, capsys.readouterr().err)
    assert code == 2
