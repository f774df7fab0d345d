"""``asteria-bench`` in-process for tests: its exit status instead of a SystemExit."""

from __future__ import annotations

import pytest

from asteria_bench.cli import main


def run_cli(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def refused_in_one_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``args``, which must be refused: exit status 2 and one line on stderr; that line."""
    capsys.readouterr()
    assert run_cli(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err
