"""The simulator on data-parallel runs: calibrated on all ranks' traces, replayed, held out.

Records (once, through ``benchmarks/bench_dist_heldout.py --quick --keep``) a
2-rank and a 4-rank run of a tiny model under torchrun, then checks:

- the script's pipeline: prediction of 4 ranks from 2, and each run replayed;
- the calibration merges what only owners measured (every block's refresh)
  and reads DDP's all-reduce from its spans (every gradient byte, every step);
- the simulator's owners are the runtime's: a block's refreshes appear in
  exactly the trace of the rank the plan's assignment names;
- ``ownership_work`` is the optimizer's own list (the same function);
- ``replay`` of a multi-rank run through the CLI, and a one-rank run refused
  as the calibration of a multi-rank prediction, in one line.

Not checked here: the 10 % goal, a timing figure that needs a machine with a
core per rank and nothing else running (see benchmarks/README.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.samples import TINY_RUN

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    folder = tmp_path_factory.mktemp("heldout") / "runs"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_dist_heldout.py"),
            "--quick",
            "--keep",
            str(folder),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return folder / "ranks2", folder / "ranks4", proc.stdout


def test_the_heldout_script_predicts_and_replays(runs: tuple[Path, Path, str]) -> None:
    *_, out = runs
    rows = [line for line in out.splitlines() if line.startswith("| ") and " ms" not in line]
    cases = {row.split("|")[1].strip(): row.split("|")[2:5] for row in rows}
    assert set(cases) == {"4 ranks predicted from 2", "2 ranks replayed", "4 ranks replayed"}
    for measured, simulated, error in cases.values():
        assert float(measured) > 0 and float(simulated) > 0
        assert error.strip().endswith("%")


def test_calibration_merges_the_ranks_and_reads_the_allreduce(
    runs: tuple[Path, Path, str],
) -> None:
    from simulator.multirank import Layout, calibrate, read_rank_traces

    two, four, _ = runs
    model = calibrate(two)
    cores = os.cpu_count() or 0
    assert model.layout == Layout(2, 2, "replicated", None, ranks_per_host=2, host_cores=cores)
    target = Layout.of(read_rank_traces(four)[0])
    assert target == Layout(4, 4, "replicated", None, ranks_per_host=4, host_cores=cores)
    assert model.cpu_ns_per_step > 0  # every rank sampled its process's CPU time
    assert model.wait_ns_per_step >= 0
    # only an owner measures a block's refresh; the model has every block's
    assert all(b.refresh_ns > 0 and b.hot_ns > 0 for b in model.workload.blocks)
    parameters = read_rank_traces(two)[0].metadata.model["parameters"]
    assert model.collectives.gradient_bytes == 4 * parameters  # fp32 gradients, all of them
    assert model.collectives.allreduce_ns > 0
    assert model.collectives.allgather_ns_per_byte == 0.0  # replicated: nothing gathered


def test_a_host_with_fewer_cores_than_ranks_bounds_the_step(
    runs: tuple[Path, Path, str],
) -> None:
    """The host bound by hand; it binds on a host short of cores, never on one with plenty."""
    import dataclasses

    import numpy as np

    from simulator.engine import SimConfig
    from simulator.multirank import (
        Layout,
        calibrate,
        host_bound_ns,
        rank_workloads,
        read_rank_traces,
        ring_factor,
        simulate_ranks,
    )

    two, four, _ = runs
    model = dataclasses.replace(calibrate(two), cpu_ns_per_step=50_000_000)
    target = Layout.of(read_rank_traces(four)[0])
    f = model.workload.precondition_frequency

    def owned(layout: Layout) -> float:
        works = rank_workloads(model, layout)
        return sum(b.hot_ns + b.refresh_ns / f for w in works for b in w.blocks) / len(works)

    demand = 50_000_000 + owned(target) - owned(model.layout)
    for cores in (1, 2, 64):
        layout = dataclasses.replace(target, host_cores=cores)
        wait = int(model.wait_ns_per_step * ring_factor(4) / ring_factor(2))
        expected = int(4 * demand / cores) + wait
        assert host_bound_ns(model, layout) == expected
    config = SimConfig(steps=6)
    free = simulate_ranks(model, dataclasses.replace(target, host_cores=0), config).step_ns
    plenty = simulate_ranks(model, dataclasses.replace(target, host_cores=4096), config).step_ns
    assert np.array_equal(free, plenty)
    short = dataclasses.replace(target, host_cores=1)
    bound = host_bound_ns(model, short)
    squeezed = simulate_ranks(model, short, config).step_ns
    assert bound > free[1:].max() and (squeezed[1:] == bound).all()
    assert squeezed[0] == free[0]  # the setup step is not shared out


def test_the_simulated_owners_are_the_runtimes(runs: tuple[Path, Path, str]) -> None:
    from simulator.multirank import Layout, assignment_of, calibrate, read_rank_traces

    two, four, _ = runs
    model = calibrate(two)
    for run in (two, four):
        traces = read_rank_traces(run)
        assignment = assignment_of(model, Layout.of(traces[0]))
        for rank, trace in enumerate(traces):
            spans = trace.spans
            refreshed = set(spans.loc[spans["name"] == "refresh", "block"])
            assert refreshed and refreshed <= set(assignment.owned_by(rank)), (run, rank)


@pytest.mark.parametrize("optimizer", ["soap", "shampoo", "kl-shampoo"])
@pytest.mark.parametrize("mode", ["replicated", "sharded"])
def test_ownership_work_is_the_optimizers_own(optimizer: str, mode: str) -> None:
    from asteria_bench.workload.model import GPT, GPTConfig
    from runtime import SOAP, KLShampoo, Shampoo
    from runtime.plan import BlockConfig
    from runtime.plan.costmodel import CostConfig
    from runtime.plan.work import ownership_work

    cls = {"soap": SOAP, "shampoo": Shampoo, "kl-shampoo": KLShampoo}[optimizer]
    shampoo = optimizer == "shampoo"
    limit = {} if shampoo else {"max_precond_dim": 20}  # both sides > 20: nothing to refresh
    model = GPT(GPTConfig(context=16, n_layer=2, n_head=2, n_embd=32))
    opt = cls(model.parameters(), precondition_frequency=3, **limit)
    try:
        config = BlockConfig(precondition_frequency=3, max_precond_dim=limit.get("max_precond_dim"))
        cost = CostConfig(optimizer, max_precond_dim="reference" if shampoo else 20)  # type: ignore[arg-type]
        blocks = [(b.id, *b.shape) for b in opt.blocks if b.is_matrix]
        expected = opt._ownership_work(mode)
        assert ownership_work(optimizer, blocks, config, cost, mode) == expected
        skipped = mode == "replicated" and not shampoo
        assert 0 < len(expected) < len(blocks) if skipped else len(expected) == len(blocks)
    finally:
        opt.close()


def test_replay_of_a_multirank_run_and_a_refused_calibration(
    runs: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.cli_runner import run_cli

    _, four, _ = runs
    assert run_cli(["replay", str(four)]) == 0
    assert "median step" in capsys.readouterr().out
    single = tmp_path / "one"
    args = [*TINY_RUN, "--steps", "4", "--eval-every", "100", "--eval-batches", "1"]
    assert run_cli(["run", *args, "--out", str(single)]) == 0
    capsys.readouterr()
    assert run_cli(["replay", str(four), "--calibrate-on", str(single)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a run of one rank cannot calibrate" in err, err
