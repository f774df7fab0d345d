"""Data-parallel training under torchrun (gloo): one version everywhere, owners, failures.

Every test launches real processes with ``python -m torch.distributed.run``
(torchrun), 2 or 4 ranks on this machine, one torch thread each. What they
check:

- after every step the parameters are bitwise identical on every rank
  (hashed), in both update modes, for every optimizer, sync and bounded;
- replicated updates (owners compute refreshes, results broadcast) and
  sharded updates (owners update their blocks, parameters all-gathered) give
  bitwise the same parameters: they move different things between the same
  computations;
- an N-rank run matches a single process on the same global batch to 1e-5;
- a rank that hangs is named by the others within the timeout, and a run
  whose rank dies never looks finished.

SOAP is compared with the single process only on 2 ranks: its basis refresh
sorts by estimated eigenvalue and its first update divides by ε-sized
moments, so float-level differences in the averaged gradient (4 partial sums
instead of 2) can move it by 1e-4 after a few steps, as a 1e-7 change of the
single process's own loss does (measured on this model). The distributed
invariants above hold for it exactly.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.samples import TINY_RUN

ROOT = Path(__file__).resolve().parents[1]
WORKER = str(ROOT / "tests" / "dist_worker.py")
OPTIMIZERS = ("soap", "shampoo", "kl-shampoo")
DIM = 12  # tests/dist_worker.py's layers: DIM x DIM weights and DIM biases

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR"):
        env.pop(key, None)
    return env


def torchrun_cmd(nproc: int, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        *args,
    ]


def torchrun(nproc: int, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    cmd = torchrun_cmd(nproc, *args)
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=ROOT
    )


def _kill_tree(launcher: subprocess.Popen[str]) -> None:
    """SIGKILL the launcher and every process under it (torchrun starts ranks in new sessions)."""
    import psutil

    try:
        family = psutil.Process(launcher.pid).children(recursive=True)
    except psutil.Error:
        family = []
    for process in [*family]:
        with contextlib.suppress(psutil.Error):
            process.kill()
    launcher.kill()
    launcher.wait()


def single(*args: str) -> None:
    proc = subprocess.run(
        [sys.executable, WORKER, *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=_env(),
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def max_relative_error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((p - q).norm() / q.norm()) for p, q in zip(a, b, strict=True))


def run_matrix(
    tmp_path: Path, nproc: int, runs: list[str], batch: int, *extra: str
) -> dict[str, list[dict]]:
    """Every run on ``nproc`` ranks: {spec: [rank 0's result, rank 1's, ...]}."""
    out = tmp_path / f"ranks{nproc}"
    out.mkdir()
    proc = torchrun(
        nproc, WORKER, "--runs", ",".join(runs), "--batch", str(batch), "--out", str(out), *extra
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {
        spec: [load(out / f"{i}-rank{r}.pt") for r in range(nproc)] for i, spec in enumerate(runs)
    }


def references(tmp_path: Path, runs: list[str], batch: int, ranks: int) -> dict[str, dict]:
    """The single-process run of each spec on the same global batch (mode is moot there)."""
    out = tmp_path / f"single{ranks}"
    out.mkdir()
    single(
        "--runs",
        ",".join(runs),
        "--batch",
        str(batch),
        "--global-ranks",
        str(ranks),
        "--out",
        str(out),
    )
    return {spec: load(out / f"{i}-rank0.pt") for i, spec in enumerate(runs)}


def check_one_version_everywhere(results: dict[str, list[dict]]) -> None:
    for spec, ranks in results.items():
        for r, result in enumerate(ranks[1:], start=1):
            assert torch.equal(result["hashes"], ranks[0]["hashes"]), f"{spec}: rank {r} differs"
        name, mode, staleness = spec.split(":", 2)
        other = f"{name}:{'sharded' if mode == 'replicated' else 'replicated'}:{staleness}"
        if other in results:
            assert torch.equal(results[other][0]["hashes"], ranks[0]["hashes"]), (
                f"{spec} and {other} part"
            )


def test_two_ranks_every_optimizer_mode_and_staleness(tmp_path: Path) -> None:
    runs = [
        f"{name}:{mode}:{staleness}"
        for name in OPTIMIZERS
        for mode in ("replicated", "sharded")
        for staleness in ("sync", "bounded:3")
    ]
    results = run_matrix(tmp_path, 2, runs, batch=128)
    check_one_version_everywhere(results)
    reference_runs = [f"{n}:replicated:{s}" for n in OPTIMIZERS for s in ("sync", "bounded:3")]
    refs = references(tmp_path, reference_runs, batch=128, ranks=2)
    parameter_bytes = 3 * (DIM * DIM + DIM) * 4
    for spec, ranks in results.items():
        name, mode, staleness = spec.split(":", 2)
        ref = refs[f"{name}:replicated:{staleness}"]
        assert max_relative_error(ranks[0]["params"], ref["params"]) <= 1e-5, spec
        # DDP's gradient all-reduce, traced by its comm hook: every gradient, every step
        for r in ranks:
            assert (r["allreduce_steps"], r["allreduce_bytes"]) == (8, 8 * parameter_bytes), spec
        if mode == "replicated":
            # roots move: one broadcast per refreshed block version, nothing gathered
            assert all(r["collectives"] > 0 and r["collective_bytes"] > 0 for r in ranks), spec
            assert all(r["state_blocks"] == ranks[0]["state_blocks"] for r in ranks), spec
        else:
            # updates move: one all-gather per update (SOAP's and KL-Shampoo's first call only
            # initialises); each rank holds only its own blocks' state
            updates = 8 if name == "shampoo" else 7
            assert all(r["collectives"] == updates for r in ranks), spec
            owned = [r["owned_blocks"] for r in ranks]
            assert sum(owned) == 3, spec  # three matrix blocks, each owned once
            assert all(r["state_blocks"] == 3 + o for r, o in zip(ranks, owned, strict=True))


def test_four_ranks_on_two_emulated_nodes(tmp_path: Path) -> None:
    """2 nodes x 2 ranks: one version everywhere, with one bound and with a bound per level.

    ``+inter5``: results that cross nodes install at τ = 5, the others at 3;
    every block of this model crosses, so the run is the single process's
    ``bounded:5``. ``+local``: the plan keeps every refresh inside its node,
    nothing crosses, so the run is bitwise the one-level ``bounded:3`` run.
    """
    runs = [f"{n}:{m}:bounded:3" for n in OPTIMIZERS for m in ("replicated", "sharded")]
    runs += [f"{n}:replicated:bounded:3+inter5" for n in OPTIMIZERS]
    runs += ["shampoo:replicated:bounded:3+inter5+local"]
    results = run_matrix(tmp_path, 4, runs, 32, "--ranks-per-node", "2")
    check_one_version_everywhere(results)
    fast = ("shampoo", "kl-shampoo")
    refs = references(
        tmp_path, [f"{n}:replicated:bounded:{tau}" for n in fast for tau in (3, 5)], 32, 4
    )
    for name in fast:
        ref = refs[f"{name}:replicated:bounded:3"]
        for mode in ("replicated", "sharded"):
            got = results[f"{name}:{mode}:bounded:3"][0]["params"]
            assert max_relative_error(got, ref["params"]) <= 1e-5, (name, mode)
        leveled = results[f"{name}:replicated:bounded:3+inter5"][0]["params"]
        assert max_relative_error(leveled, refs[f"{name}:replicated:bounded:5"]["params"]) <= 1e-5
    for name in OPTIMIZERS:
        leveled = results[f"{name}:replicated:bounded:3+inter5"]
        one_level = results[f"{name}:replicated:bounded:3"]
        assert not torch.equal(leveled[0]["hashes"], one_level[0]["hashes"]), name
        # each result crosses nodes once (owner to the other node's leader), then each
        # node's leader forwards it within its node
        for rank, result in enumerate(leveled):
            assert set(result["group_bytes"]) == {"inter", "intra"}, (name, rank)
            # the nodes synchronise over the slow link in rounds, every τ_inter - 2 = 3 updates
            rounds = result["inter_updates"]
            assert rounds and all(t % 3 == 0 for t in rounds), (name, rank, rounds)
    local = results["shampoo:replicated:bounded:3+inter5+local"]
    assert torch.equal(local[0]["hashes"], results["shampoo:replicated:bounded:3"][0]["hashes"])
    assert all(set(r["group_bytes"]) == {"intra"} for r in local)
    assert [r["owned_blocks"] for r in local] == [2, 1, 2, 1]  # 3 blocks, on each node


def test_fsdp2_updates_each_ranks_rows_as_one_process_with_the_same_row_slices(
    tmp_path: Path,
) -> None:
    """FSDP2 on gloo: each rank's blocks are its rows; the run is one process's with those slices."""
    runs = ["shampoo:fsdp2:sync", "kl-shampoo:fsdp2:bounded:3"]
    results = run_matrix(tmp_path, 2, runs, 128)
    refs = references(tmp_path, runs, 128, 2)
    for spec, ranks in results.items():
        whole = [r["params"] for r in ranks]
        assert all(len(w) == 4 for w in whole), spec  # 2 weights, 2 biases, gathered
        for other in whole[1:]:  # every rank gathers the same parameters
            assert all(torch.equal(a, b) for a, b in zip(whole[0], other, strict=True)), spec
        assert max_relative_error(whole[0], refs[spec]["params"]) <= 1e-5, spec
        for r in ranks:  # nothing of the optimizer moves; 2 weight slices, 2 bias slices
            assert r["collectives"] == 0 and r["state_blocks"] == 4, spec


def test_a_hung_rank_is_named_within_the_timeout(tmp_path: Path) -> None:
    """Rank 1 freezes (SIGSTOP) in step 3: rank 0 says so, naming it, within the timeout."""
    cmd = torchrun_cmd(
        2,
        WORKER,
        "--runs",
        "shampoo:replicated:sync",
        "--batch",
        "16",
        "--hang-rank",
        "1",
        "--timeout",
        "5",
        "--out",
        str(tmp_path),
    )
    start = time.monotonic()
    launcher = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_env(),
        cwd=ROOT,
    )
    try:
        assert launcher.stdout is not None
        line = ""
        while "a collective failed" not in line:
            line = launcher.stdout.readline()
            assert line or launcher.poll() is None, "the launcher ended without the message"
            assert time.monotonic() - start < 90
        elapsed = time.monotonic() - start
    finally:
        _kill_tree(launcher)
    assert line.startswith("rank 0: a collective failed or timed out after up to 5 s"), line
    assert "suspect: rank 1 (no sign of life for" in line, line
    assert elapsed < 60, f"took {elapsed:.0f} s with a 5 s timeout"


# ----------------------------------------------------------------------- the CLI
TINY = (*TINY_RUN, "--steps", "6", "--eval-every", "100", "--eval-batches", "1")


def test_torchrun_run_writes_one_run_directory_with_a_trace_per_rank(tmp_path: Path) -> None:
    from traces.io import read_trace

    out = tmp_path / "run"
    proc = torchrun(
        2,
        "-m",
        "asteria_bench",
        "run",
        *TINY,
        "--update-mode",
        "sharded",
        "--ranks-per-node",
        "1",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "summary.md").is_file() and not (out / "INCOMPLETE").exists()
    leader = read_trace(out)
    follower = read_trace(out / "ranks" / "1")
    assert (leader.metadata.rank, leader.metadata.world_size) == (0, 2)
    assert (follower.metadata.rank, follower.metadata.world_size) == (1, 2)
    assert leader.metadata.policies["parallel"] == "sharded"
    assert leader.metadata.policies["ranks_per_node"] == "1"  # two emulated nodes
    for trace in (leader, follower):
        gathers = trace.spans[trace.spans["name"] == "allgather"]
        assert len(gathers) == 5 and (gathers["bytes"] > 0).all()  # SOAP's first call inits
        reduced = trace.spans[trace.spans["name"] == "allreduce"]  # DDP's, every step
        assert sorted(set(reduced["step"])) == list(range(1, 7))
        assert reduced["detail"].str.endswith("(group default)").all()
        per_step = reduced.groupby("step")["bytes"].sum()
        assert per_step.nunique() == 1 and per_step.iloc[0] % 4 == 0  # every fp32 gradient
    summary = (out / "summary.md").read_text()
    assert "## Ranks (2)" in summary
    rows = [line for line in summary.splitlines() if line.startswith(("| 0", "| 1"))]
    assert len(rows) == 2 and all(" 0.0 kB" not in row for row in rows), rows


def test_a_killed_rank_leaves_no_finished_run(tmp_path: Path) -> None:
    import psutil

    out = tmp_path / "run"
    cmd = torchrun_cmd(
        2,
        "-m",
        "asteria_bench",
        "run",
        *TINY,
        "--steps",
        "100000",
        "--out",
        str(out),
    )
    launcher = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT
    )
    staging = out.with_name("run.incomplete")
    deadline = time.monotonic() + 120
    victim = None
    while time.monotonic() < deadline and victim is None:
        time.sleep(0.5)
        if not staging.exists():
            continue
        for child in psutil.Process(launcher.pid).children(recursive=True):
            try:
                if child.environ().get("RANK") == "1":
                    victim = child
            except psutil.Error:
                continue
    assert victim is not None, "rank 1 never started"
    time.sleep(2)  # a few steps in
    victim.send_signal(signal.SIGKILL)
    start = time.monotonic()
    _, err = launcher.communicate(timeout=120)
    assert time.monotonic() - start < 60
    assert launcher.returncode != 0
    assert not out.exists(), "a run whose rank died must not look finished"
    assert (staging / "INCOMPLETE").is_file()
    assert "rank" in err.lower()


def test_update_mode_and_adaptive_staleness_are_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.cli_runner import run_cli

    assert run_cli(["run", "--update-mode", "mirrored", "--out", str(tmp_path / "x")]) == 2
    assert (
        "--update-mode: expected replicated or sharded, got 'mirrored'" in capsys.readouterr().err
    )
    proc = torchrun(
        2,
        "-m",
        "asteria_bench",
        "run",
        *TINY,
        "--staleness",
        "adaptive:4",
        "--out",
        str(tmp_path / "y"),
        timeout=120,
    )
    assert proc.returncode != 0
    assert "--staleness: adaptive:4 picks install steps from each rank's own timings" in (
        proc.stderr
    )


def test_a_refused_out_is_one_line_on_every_rank_at_once(tmp_path: Path) -> None:
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    start = time.monotonic()
    proc = torchrun(
        2, "-m", "asteria_bench", "run", *TINY, "--out", str(precious), "--overwrite", timeout=120
    )
    assert proc.returncode != 0
    assert time.monotonic() - start < 40, "the other rank must not wait for a timeout"
    assert proc.stderr.count("is not a run directory of asteria-bench") == 2, proc.stderr[-2000:]
    assert (precious / "notes.txt").read_text() == "mine"


def test_run_publishes_across_two_nodes_with_an_inter_node_bound(tmp_path: Path) -> None:
    """2 emulated nodes of one rank: each result crosses nodes once, at τ_inter."""
    from traces.io import read_trace

    out = tmp_path / "run"
    proc = torchrun(
        2,
        "-m",
        "asteria_bench",
        "run",
        *TINY,
        "--optimizer",
        "shampoo",
        "--precondition-frequency",
        "2",
        "--staleness",
        "bounded:1",
        "--inter-node-staleness",
        "3",
        "--ranks-per-node",
        "1",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for trace in (read_trace(out), read_trace(out / "ranks" / "1")):
        assert trace.metadata.policies["inter_node_staleness"] == "3"
        published = trace.spans[trace.spans["name"] == "publish"]
        assert len(published) > 0 and published["detail"].str.endswith("(group inter)").all()
        taus = trace.counters[trace.counters["name"] == "staleness"]["value"]
        assert len(taus) > 0 and set(taus) == {3.0}  # every block crosses: τ_inter


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--inter-node-staleness", "-1"], "expected an integer in [0, 1000000], got -1"),
        (
            ["--inter-node-staleness", "2", "--update-mode", "sharded"],
            "expected --update-mode replicated, got 'sharded'",
        ),
        (
            ["--inter-node-staleness", "2", "--staleness", "adaptive:4"],
            "expected --staleness sync or bounded:TAU, got 'adaptive:4'",
        ),
        (
            ["--inter-node-staleness", "2", "--staleness", "bounded:4"],
            "expected at least --staleness's τ (4), got 2",
        ),
    ],
)
def test_inter_node_staleness_is_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    from tests.cli_runner import refused_in_one_line

    out = tmp_path / "x"
    err = refused_in_one_line(["run", *args, "--out", str(out)], capsys)
    assert err.endswith(f"--inter-node-staleness: {message}"), err
    assert not out.exists()


def test_run_with_fsdp2_shards_the_model_and_the_optimizer(tmp_path: Path) -> None:
    """--parallel fsdp2 on gloo: each rank's blocks are its rows; nothing of the optimizer moves."""
    from tests.cli_runner import run_cli
    from traces.io import read_trace

    out = tmp_path / "run"
    proc = torchrun(
        2, "-m", "asteria_bench", "run", *TINY, "--parallel", "fsdp2", "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    leader, follower = read_trace(out), read_trace(out / "ranks" / "1")
    assert leader.metadata.policies["parallel"] == "fsdp2"
    whole = {"p0.r0.c0": [256, 32]}  # the tied embedding / head: 256 rows, 32 columns
    for trace in (leader, follower):
        blocks = trace.metadata.model["blocks"]
        assert blocks["p0.r0.c0"] == [whole["p0.r0.c0"][0] // 2, 32]  # this rank's half
        names = set(trace.spans["name"])
        assert not names & {"publish", "allgather", "allreduce"}  # FSDP moves the tensors
    assert run_cli(["replay", str(out)]) == 2  # not modelled: one line


def test_fsdp2_options_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.cli_runner import run_cli

    assert run_cli(["run", "--parallel", "zero3", "--out", str(tmp_path / "x")]) == 2
    assert "--parallel: expected ddp or fsdp2, got 'zero3'" in capsys.readouterr().err
    args = ["run", "--parallel", "fsdp2", "--inter-node-staleness", "2"]
    assert run_cli([*args, "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "--inter-node-staleness: expected --parallel ddp (under fsdp2" in err


def test_collective_device_is_the_current_gpu_under_nccl(monkeypatch: pytest.MonkeyPatch) -> None:
    """NCCL has no host transport: a flag all-reduced there must be on the rank's GPU."""
    from runtime.distributed import collective_device

    assert collective_device("gloo") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert collective_device("nccl") == torch.device("cuda", 3)


def test_flags_all_reduced_each_step_are_made_where_the_backend_wants_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop flag (every step) and the checkpoint's agreement flag ask for the backend's device.

    A GPU cannot be had here, so ``collective_device`` is replaced by one that notes the
    backend and hands out the host; the real one is checked above.
    """
    import torch.distributed as torch_dist

    import asteria_bench.train as train_module
    import runtime.distributed.context as context_module
    from asteria_bench.checkpointing import StopRequest
    from runtime.checkpoint import CheckpointManager
    from runtime.distributed import DistContext
    from runtime.plan.ownership import Topology

    asked: list[str] = []
    reduced: list[torch.device] = []

    def host_for(backend: str) -> torch.device:
        asked.append(backend)
        return torch.device("cpu")

    def all_reduce(tensor: torch.Tensor, op: object = None) -> None:
        reduced.append(tensor.device)

    monkeypatch.setattr(train_module, "collective_device", host_for)
    monkeypatch.setattr(context_module, "collective_device", host_for)
    monkeypatch.setattr(torch_dist, "all_reduce", all_reduce)
    monkeypatch.setattr(torch_dist, "get_backend", lambda group=None: "nccl")
    ctx = DistContext(rank=0, world_size=2, topology=Topology(2, 2), backend="nccl", timeout_s=1)
    assert train_module._stop_agreed(StopRequest(), ctx) is False
    manager = CheckpointManager(tmp_path, rank=0, world_size=2)
    assert manager._all_ok(True) is True
    assert asked == ["nccl", "nccl"] and reduced == [torch.device("cpu")] * 2


def test_each_rank_of_a_machine_gets_its_own_gpu_even_across_emulated_nodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Four ranks on one 4-GPU machine emulating two nodes of two: rank 2 is the first of
    its node, and still the third of its machine, so it takes cuda:2, not cuda:0."""
    from runtime.distributed.context import DistContext, host_gpu
    from runtime.plan.ownership import Topology

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    devices = [
        DistContext(
            rank=r,
            world_size=4,
            topology=Topology(4, 2),
            backend="nccl",
            timeout_s=1,
            ranks_per_host=4,
        ).device(torch.device("cuda"))
        for r in range(4)
    ]
    assert devices == [torch.device("cuda", i) for i in range(4)]
    assert DistContext(0, 1, Topology(1, 1), "gloo", 1).device(torch.device("cpu")).type == "cpu"
    monkeypatch.setenv("LOCAL_RANK", "3")  # torchrun's word wins where it is set
    assert host_gpu(0, 4) == 3
