"""``asteria-bench run --batched`` (and ``--compile``): the batched path end to end.

The batched path is the per-block math on stacked blocks, so a run with it
trains to the same losses; its trace has one hot span per batch and one refresh
job per group, which the simulator's workload model shares out to the blocks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from cli_runner import refused_in_one_line, run_cli

from asteria_bench.config import RunConfig
from asteria_bench.errors import UserError
from asteria_bench.train import execution_config
from simulator.workload import GROUP_JOB, workload_from_trace
from tests.samples import TINY_RUN
from traces.io import read_trace
from traces.recorder import Recorder

STEPS = ["--steps", "8", "--precondition-frequency", "3", "--eval-every", "100"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("batched")
    out = {}
    for name, extra in {"per-block": [], "batched": ["--batched"]}.items():
        out[name] = root / name
        args = ["run", "--optimizer", "soap", "--out", str(out[name]), *TINY_RUN, *STEPS, *extra]
        assert run_cli(args) == 0
    return out


def test_a_batched_run_trains_to_the_per_block_losses(runs: dict[str, Path]) -> None:
    per_block = pd.read_parquet(runs["per-block"] / "metrics.parquet")["loss"]
    batched = pd.read_parquet(runs["batched"] / "metrics.parquet")["loss"]
    assert len(batched) == 8
    assert ((batched - per_block).abs() <= 1e-5 * per_block.abs()).all()
    assert json.loads((runs["batched"] / "config.json").read_text())["runtime"]["batched"] is True
    assert read_trace(runs["batched"]).metadata.policies["batched"] == "on"
    assert "batched" not in read_trace(runs["per-block"]).metadata.policies


def test_the_workload_model_shares_batched_spans_out_to_the_blocks(
    runs: dict[str, Path],
) -> None:
    """Each block gets a hot time in proportion to its matmul work and a share of its
    group's refresh jobs; together they are what the batched spans measured."""
    trace = read_trace(runs["batched"])
    model = workload_from_trace(trace)
    spans = trace.spans.assign(duration=trace.spans["end_ns"] - trace.spans["start_ns"])
    hot = spans[spans["name"].isin(("factor_update", "precondition")) & (spans["step"] > 1)]
    assert hot["block"].isna().all()  # one span per batch, not per block
    per_step = hot.groupby("step")["duration"].sum().median()
    assert sum(b.hot_ns for b in model.blocks) == pytest.approx(per_step, rel=1e-3)
    work = {b.id: b.shape[0] * b.shape[1] * sum(b.shape) for b in model.blocks}
    first, *rest = model.blocks
    for b in rest:
        assert b.hot_ns / first.hot_ns == pytest.approx(work[b.id] / work[first.id], rel=1e-3)
    jobs = spans[spans["name"] == "refresh"]
    assert len(jobs) and jobs["block"].map(lambda j: bool(GROUP_JOB.match(j))).all()
    for b in model.blocks:
        assert b.refresh_ns > 0 and b.install_ns > 0


def test_compile_without_batched_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    err = refused_in_one_line(["run", "--compile", "--out", str(out), *TINY_RUN], capsys)
    assert err == "asteria-bench: error: --compile: expected --batched with it, got True"
    assert not out.exists()


def test_batched_needs_a_second_order_optimizer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["run", "--batched", "--optimizer", "adamw", "--out", str(out), *TINY_RUN]
    err = refused_in_one_line(args, capsys)
    assert err.startswith("asteria-bench: error: --batched: expected --optimizer soap")
    assert not out.exists()


def test_a_config_file_with_a_batched_that_is_not_a_boolean_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "run.toml"
    config.write_text('[runtime]\nbatched = "yes"\n')
    out = tmp_path / "run"
    err = refused_in_one_line(["run", "--config", str(config), "--out", str(out)], capsys)
    assert "batched" in err and "'yes'" in err
    assert not out.exists()


def test_batched_is_refused_under_torchrun() -> None:
    """Owners are chosen per block; a group's job has none, so ranks cannot agree on it."""
    config = RunConfig()
    config.runtime.batched = True
    with pytest.raises(UserError, match=r"^--batched: not under torchrun yet"):
        execution_config(config, Recorder(), torch.device("cpu"), dist=object())  # type: ignore[arg-type]
