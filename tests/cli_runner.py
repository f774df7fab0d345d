"""``asteria-bench`` in-process for tests: its exit status instead of a SystemExit."""

from __future__ import annotations

from asteria_bench.cli import main


def run_cli(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
