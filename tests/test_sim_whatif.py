"""What-ifs on hardware profiles: the physical limit, the scenarios, the CLI."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from cli_runner import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.projection import Efficiency
from simulator.whatif import SCENARIOS, WhatIf, run_whatif


@settings(max_examples=25, deadline=None)
@given(
    hardware=st.sampled_from(["gb10", "gh200", "h100-sxm", "h100-pcie", "h200"]),
    model=st.sampled_from(["gpt-default", "125m", "350m"]),
    optimizer=st.sampled_from(["adamw", "shampoo", "soap", "kl-shampoo"]),
    staleness=st.sampled_from(["sync", "bounded:2", "adaptive:6"]),
    root_device=st.sampled_from(["host", "device"]),
    gpus=st.sampled_from([1, 4]),
    block_size=st.sampled_from([None, 256, 1024]),
    efficiency=st.floats(0.05, 1.0),
)
def test_no_simulated_step_beats_its_roofline(
    hardware: str,
    model: str,
    optimizer: str,
    staleness: str,
    root_device: str,
    gpus: int,
    block_size: int | None,
    efficiency: float,
) -> None:
    eff = Efficiency(
        gemm=efficiency,
        optimizer=efficiency,
        refresh_device=efficiency,
        refresh_host=efficiency,
        copy=efficiency,
        collective=efficiency,
    )
    w = WhatIf(
        hardware=hardware,
        model=model,
        optimizer=optimizer,
        staleness=staleness,
        root_device=root_device,
        gpus_per_node=gpus,
        steps=25,
        block_size=block_size,
        precondition_frequency=5,
    )
    result = run_whatif(w, eff)
    assert result.min_step_ms >= result.lower_bound_ms * (1 - 1e-9)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenarios_show_the_claims(name: str) -> None:
    _, whatifs = SCENARIOS[name]
    results = {w.describe(): run_whatif(w) for w in whatifs}
    sync = results["SOAP, synchronous"]
    asteria = results["SOAP, asteria (bounded:4, host roots)"]
    assert asteria.spike <= sync.spike  # fewer latency spikes
    assert asteria.mean_ms <= sync.mean_ms  # lower visible overhead on average
    assert results["AdamW"].mean_ms <= asteria.mean_ms  # second order is not free


def test_simulate_sweep_writes_one_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = run_cli(
        [
            "simulate",
            "--hardware",
            "gh200,h100-sxm",
            "--model",
            "125m",
            "--staleness",
            "sync,bounded:4",
            "--steps",
            "30",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    frame = pd.read_csv(tmp_path / "simulate.csv")
    assert len(frame) == 4
    assert set(frame["hardware"]) == {"gh200", "h100-sxm"} and set(frame["staleness"]) == {
        "sync",
        "bounded:4",
    }
    assert "simulated" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "70b"], "--model"),
        (["--hardware", "tpu-v9"], "--hardware"),
        (["--optimizer", "lion"], "--optimizer"),
        (["--staleness", "later"], "--staleness"),
        (["--nodes", "0"], "--nodes"),
        (["--scenario", "moon-1t"], "--scenario"),
    ],
)
def test_simulate_bad_input(
    capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    assert run_cli(["simulate", "--steps", "5", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err


def test_profile_file_with_a_bad_field_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simulator.profiles import PROFILES_DIR

    text = (PROFILES_DIR / "gh200.toml").read_text().replace("value = 450e9", "value = -1", 1)
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    assert run_cli(["simulate", "--hardware", str(bad), "--model", "125m", "--steps", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.toml" in err


def test_convergence_ratios_and_time_to_target(tmp_path: Path) -> None:
    import json

    from simulator.convergence import (
        ConvergenceError,
        load_ratios,
        steps_ratio_for,
        time_to_target_ratio,
    )

    summary = {
        "settings": {"eval_every": 10},
        "best": [
            {"optimizer": "adamw", "steps_to_target": 200.0, "steps_ratio": 1.0},
            {"optimizer": "soap", "steps_to_target": 120.0, "steps_ratio": 0.6},
            {
                "optimizer": "soap",
                "staleness": "bounded:8",
                "steps_to_target": 130.0,
                "steps_ratio": 0.65,
            },
            {"optimizer": "kl-shampoo", "steps_to_target": None, "steps_ratio": None},
        ],
    }
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))
    ratios = load_ratios(path)
    soap_sync = steps_ratio_for(ratios, "soap", "sync")
    assert soap_sync is not None and soap_sync.ratio == 0.6 and soap_sync.plus_minus == 10 / 200
    bounded = steps_ratio_for(ratios, "soap", "bounded:8")
    assert bounded is not None and bounded.ratio == 0.65
    fallback = steps_ratio_for(ratios, "soap", "bounded:4")
    assert fallback is soap_sync
    assert steps_ratio_for(ratios, "kl-shampoo", "sync") is None
    value, plus_minus = time_to_target_ratio(150.0, 100.0, soap_sync)
    assert value == pytest.approx(0.9) and plus_minus == pytest.approx(0.075)
    path.write_text("{}")
    with pytest.raises(ConvergenceError, match=r"summary\.json"):
        load_ratios(path)


def test_update_modes_move_what_the_runtime_moves(tmp_path: Path) -> None:
    """Replicated: every rank runs every hot path and owners publish bases; sharded: neither."""
    common = dict(hardware="gh200", model="1b", optimizer="soap", nodes=2, gpus_per_node=2)
    sharded = run_whatif(WhatIf(**common, steps=20, update_mode="sharded"))  # type: ignore[arg-type]
    replicated = run_whatif(WhatIf(**common, steps=20, update_mode="replicated"))  # type: ignore[arg-type]
    assert sharded.projection.publish_bytes_per_step == 0
    assert replicated.projection.publish_bytes_per_step > 0
    assert replicated.state_gib_per_rank > 3 * sharded.state_gib_per_rank  # 4 ranks share it
    assert replicated.median_ms > sharded.median_ms  # the whole hot path on every rank
    out = tmp_path / "sweep"
    assert (
        run_cli(
            [
                "simulate",
                "--model",
                "1b",
                "--nodes",
                "2",
                "--gpus-per-node",
                "2",
                "--update-mode",
                "sharded,replicated",
                "--steps",
                "10",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    frame = pd.read_csv(out / "simulate.csv")
    assert list(frame["update_mode"]) == ["sharded", "replicated"]
    assert (frame["publish_gb_per_step"] > 0).tolist() == [False, True]
    assert run_cli(["simulate", "--update-mode", "mirrored"]) == 2
