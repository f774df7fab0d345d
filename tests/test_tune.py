"""``simulate --tune``: the search finds the best setting within the budget, deterministically."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pytest
from cli_runner import run_cli

from simulator.convergence import StepsRatio, load_ratios
from simulator.tune import TuneSpace, default_space, tune
from simulator.whatif import WhatIf, run_whatif

BASE = WhatIf(hardware="h100-sxm", model="gpt-small", optimizer="soap", steps=14,
              precondition_frequency=4, tokens_per_rank=4096)  # fmt: skip
GIB = 2**30
RATIOS = [
    StepsRatio("soap", "sync", 0.5, 0.03, "test"),
    StepsRatio("soap", "bounded:2", 0.55, 0.03, "test"),
    StepsRatio("adamw", "sync", 1.0, 0.03, "test"),
]
SMALL = TuneSpace(
    placement=("device", "lifecycle"),
    staleness=("sync", "bounded:2"),
    block_size=(128, 256),
    workers=(1, 2),
    root_device=("host",),
)


def test_a_small_space_is_searched_whole_and_its_best_is_the_minimum() -> None:
    result = tune(BASE, 40 * GIB, RATIOS, SMALL)
    assert result.exhaustive
    # every combination, synchronous ones once (workers do not matter there)
    assert len(result.candidates) == 2 * 2 * (1 + 2)
    ratio = {r.staleness: r.ratio for r in RATIOS if r.optimizer == "soap"}
    brute = {}
    for placement, staleness, block, workers in itertools.product(
        SMALL.placement, SMALL.staleness, SMALL.block_size, SMALL.workers
    ):
        if staleness == "sync" and workers != 1:
            continue
        w = replace(BASE, placement=placement, staleness=staleness, block_size=block,
                    workers=workers, root_device="host", device_budget=40 * GIB)  # fmt: skip
        brute[(placement, staleness, block, workers)] = run_whatif(w).mean_ms * ratio[staleness]
    best = result.best
    assert best is not None
    key = (
        best.whatif.placement,
        best.whatif.staleness,
        best.whatif.block_size,
        best.whatif.workers,
    )
    assert best.objective_ms == pytest.approx(min(brute.values()))
    assert brute[key] == pytest.approx(min(brute.values()))
    ranked = result.ranked()
    assert [c.objective_ms for c in ranked] == sorted(c.objective_ms for c in ranked)


def test_the_budget_rules_out_what_does_not_fit() -> None:
    base = replace(BASE, model="125m", block_size=1024, steps=8)
    device = run_whatif(replace(base, placement="device"))
    tiered = run_whatif(replace(base, placement="lifecycle"))
    figure = (
        "training_device_gib" if hasattr(device, "training_device_gib") else "peak_device_state_gib"
    )
    low, high = getattr(tiered, figure), getattr(device, figure)
    assert low < high
    budget = int((low + high) / 2 * GIB)
    space = replace(SMALL, placement=("device", "lifecycle"), block_size=(1024,), workers=(1,))
    result = tune(base, budget, RATIOS, space)
    ranked = result.ranked()
    assert ranked and all(c.whatif.placement == "lifecycle" for c in ranked)
    assert all(not c.feasible for c in result.candidates if c.whatif.placement == "device")
    assert all(getattr(c.result, figure) <= budget / GIB for c in ranked)


def test_coordinate_descent_is_deterministic_and_no_worse_than_its_start() -> None:
    space = replace(default_space(BASE, RATIOS), block_size=(128, 256, 512))
    assert space.size() > 64
    first = tune(BASE, 40 * GIB, RATIOS, space)
    second = tune(BASE, 40 * GIB, RATIOS, space)
    assert not first.exhaustive
    assert [(c.whatif, c.objective_ms) for c in first.candidates] == [
        (c.whatif, c.objective_ms) for c in second.candidates
    ]
    start = first.candidates[0]
    assert first.best is not None and first.best.objective_ms <= start.objective_ms
    keys = [(c.whatif.placement, c.whatif.staleness, c.whatif.root_device, c.whatif.workers,
             c.whatif.block_size) for c in first.candidates]  # fmt: skip
    assert len(keys) == len(set(keys))  # each setting simulated once


def test_default_space_searches_only_measured_staleness() -> None:
    ratios = load_ratios()
    space = default_space(BASE, ratios)
    measured = {r.staleness for r in ratios if r.optimizer == "soap"}
    assert set(space.staleness) <= measured and "sync" in space.staleness
    assert space.update_mode == ("sharded",)  # one rank: the modes are the same
    assert default_space(replace(BASE, gpus_per_node=4), ratios).update_mode == (
        "sharded",
        "replicated",
    )
    # an optimizer with no measured ratio keeps its staleness and is ranked by step time
    kl = replace(BASE, optimizer="kl-shampoo", staleness="bounded:2")
    assert default_space(kl, RATIOS).staleness == ("bounded:2",)
    result = tune(kl, 40 * GIB, RATIOS, replace(SMALL, staleness=("bounded:2",), block_size=(256,)))
    assert result.by_step_time
    assert result.best is not None and result.best.objective_ms == result.best.result.mean_ms  # type: ignore[union-attr]


TUNE = [
    "simulate",
    "--tune",
    "--hardware",
    "h100-sxm",
    "--model",
    "gpt-small",
    "--tune-steps",
    "12",
]
TUNE += ["--precondition-frequency", "4", "--tokens-per-rank", "4096"]


def test_simulate_tune_prints_the_best_few(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli([*TUNE, "--memory-budget", "40", "--top", "3", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert 1 <= len(rows) <= 3 and rows[0]["rank"] == 1 and rows[0]["vs_best"] == 0
    times = [r["time_to_target_ms"] for r in rows]
    assert times == sorted(times)
    assert all(r["device_gib"] <= 40 for r in rows)
    assert run_cli([*TUNE, "--memory-budget", "40GiB"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 100 and "…" not in out
    assert "ms per AdamW step: mean step time" in out and "best of" in out


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ([], "--memory-budget: needed"),
        (["--memory-budget", "abc"], "--memory-budget"),
        (["--memory-budget", "0"], "--memory-budget"),
        (["--memory-budget", "1e-9"], "--memory-budget: no setting fits"),
        (["--memory-budget", "40", "--staleness", "sync,bounded:2"], "--staleness: one value"),
        (["--memory-budget", "40", "--scenario", "gb10-1b"], "--tune: not with"),
        (["--memory-budget", "40", "--tune-steps", "1"], "--tune-steps"),
        (["--memory-budget", "40", "--top", "0"], "--top"),
        (["--memory-budget", "40", "--hardware", "h900"], "--hardware"),
    ],
)
def test_bad_tune_options_are_one_line(
    capsys: pytest.CaptureFixture[str], extra: list[str], needle: str
) -> None:
    assert run_cli([*TUNE, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
