"""A run without --out is named after its optimizer, seed and time, and never refused for the name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from asteria_bench.config import RunConfig
from asteria_bench.job import default_out


def test_runs_started_in_the_same_second_get_distinct_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = RunConfig()
    first = default_out(config)
    assert re.fullmatch(rf"{config.optim.name}-s{config.train.seed}-\d{{8}}-\d{{6}}", first.name)
    first.mkdir(parents=True)
    second = default_out(config)
    second.with_name(second.name + ".incomplete").mkdir()  # a run still going
    third = default_out(config)
    assert len({first, second, third}) == 3
    if second.name.startswith(first.name):  # the same second
        assert second.name == first.name + "-2"
        assert third.name == first.name + "-3"
