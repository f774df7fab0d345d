"""The benchmark scripts: their --quick runs print tables whose numbers parse.

Each script runs once in a fresh interpreter, exactly as a user runs it
(``python benchmarks/<script>.py --quick``); the heavyball table is checked only
where heavyball is installed, and its absence is checked in-process.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HAVE_HEAVYBALL = importlib.util.find_spec("heavyball") is not None
HAVE_MUON = hasattr(__import__("torch").optim, "Muon")


def run_quick(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def table(text: str, *first_headers: str) -> list[dict[str, str]]:
    """The rows of the pipe table whose header begins with ``first_headers``."""
    lines = text.splitlines()
    n = len(first_headers)
    start = next(
        i
        for i, line in enumerate(lines)
        if line.startswith("|") and cells(line)[:n] == [*first_headers]
    )
    headers = cells(lines[start])
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(headers, cells(line), strict=True)))
    assert rows, f"table {first_headers!r} has no rows"
    return rows


def test_bench_step_quick() -> None:
    out = run_quick("bench_step.py")
    first = out.splitlines()[0]
    assert first.startswith("torch ") and "threads 1" in first and "load average" in first

    rows = {r["optimizer"]: r for r in table(out, "optimizer", "hot-path median ms")}
    assert {"AdamW (torch)", "SOAP", "Shampoo", "KL-Shampoo"} <= rows.keys()
    assert float(rows["AdamW (torch)"]["ratio vs AdamW"]) == 1.0
    assert ("Muon (torch)" in rows) == HAVE_MUON
    if HAVE_MUON:
        assert float(rows["Muon (torch)"]["ratio vs AdamW"]) > 0
        assert rows["Muon (torch)"]["refresh ms"] == "-"
    for name in ("SOAP", "Shampoo", "KL-Shampoo"):
        row = rows[name]
        assert float(row["hot-path median ms"]) > 0
        assert float(row["ratio vs AdamW"]) > 0
        float(row["refresh ms"])  # a difference of medians: may be slightly negative
        float(row["amortized per step at f=10 ms"])
        assert float(row["total ratio vs AdamW"]) > 0

    batched = {r["optimizer"]: r for r in table(out, "optimizer", "per-block hot ms")}
    assert batched.keys() == {"SOAP", "Shampoo", "KL-Shampoo"}
    for row in batched.values():
        assert float(row["hot ratio batched/per-block"]) > 0
        assert float(row["batched hot ms"]) > 0
    assert {"SOAP batched", "Shampoo batched", "KL-Shampoo batched"} <= rows.keys()

    if HAVE_HEAVYBALL:
        peers = {r["optimizer"]: r for r in table(out, "optimizer", "ours hot ms")}
        assert peers.keys() == {"SOAP", "KL-Shampoo"}
        for row in peers.values():
            assert float(row["hot ratio ours/heavyball"]) > 0
            assert float(row["total ratio ours/heavyball"]) > 0
        assert "heavyball.utils.compile_mode = None" in out
    else:
        assert "heavyball: cannot import" in out


def test_bench_step_without_heavyball(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.bench_step import QUICK_MODEL, Bench, heavyball_candidates

    monkeypatch.setitem(sys.modules, "heavyball", None)  # import heavyball now fails
    candidates, notes = heavyball_candidates(Bench(QUICK_MODEL, seed=0, grad_scale=1e-2), 10)
    assert candidates == [] and notes == []
    assert "heavyball: cannot import" in capsys.readouterr().out


def test_bench_convergence_quick(tmp_path: Path) -> None:
    out = run_quick("bench_convergence.py", "--out", str(tmp_path))
    assert out.splitlines()[0].startswith("torch ")

    names = {"adamw", "soap", "soap@bounded:4", "kl-shampoo"} | ({"muon"} if HAVE_MUON else set())
    sweep = table(out, "optimizer", "lr")
    assert len(sweep) == 2 * len(names)  # every optimizer x 2 learning rates
    for row in sweep:
        assert float(row["median step ms"]) > 0 and float(row["mean step ms"]) > 0

    best = {r["optimizer"]: r for r in table(out, "optimizer", "best lr")}
    assert best.keys() == names
    assert float(best["adamw"]["ratio vs AdamW"]) == 1.0
    assert float(best["adamw"]["mean step time ratio vs AdamW"]) == 1.0
    for row in best.values():
        float(row["best lr"])
        float(row["final val loss"])
        assert float(row["mean step time ratio vs AdamW"]) > 0
        assert row["ratio vs AdamW"] == "n/a" or float(row["ratio vs AdamW"]) > 0
        assert row["steps ratio vs Muon"] == "n/a" or float(row["steps ratio vs Muon"]) > 0
        assert row["time ratio vs Muon"] == "n/a" or float(row["time ratio vs Muon"]) > 0
    if HAVE_MUON and best["muon"]["steps ratio vs Muon"] != "n/a":
        assert float(best["muon"]["steps ratio vs Muon"]) == 1.0

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["runs"]) == 2 * len(names) and summary["target_val_loss"] > 0
    header = (tmp_path / "curves.csv").read_text().splitlines()[0]
    assert header.startswith("optimizer,lr,step,train_loss,val_loss")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("adamw@bounded:4", "only soap, shampoo, kl-shampoo take @STALENESS"),
        ("soap@sometimes", "unknown staleness policy 'sometimes'"),
        ("sgd", "unknown optimizer(s) ['sgd']"),
    ],
)
def test_bench_convergence_names_a_bad_entry_and_exits_2(entry: str, message: str) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_convergence.py"),
            "--optimizers",
            f"adamw,{entry}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert message in proc.stderr.splitlines()[-1]


def test_steps_to_target_interpolates_between_evals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.bench_convergence import steps_to_target

    curve = [(10, 4.0), (20, 3.0), (30, 2.0), (40, 2.5)]
    assert steps_to_target(curve, 2.5) == pytest.approx(25.0)  # halfway from 3.0 to 2.0
    assert steps_to_target(curve, 3.0) == 20.0  # reached exactly at an eval
    assert steps_to_target(curve, 5.0) == 10.0  # first eval already below: no interpolation
    assert steps_to_target(curve, 1.0) is None
    assert steps_to_target([(10, float("nan")), (20, 1.0)], 2.0) == 20.0


def number(cell: str) -> float:
    """A table cell that must parse as a finite number."""
    value = float(cell)
    assert value == value and abs(value) != float("inf"), cell
    return value


def check_header_lines(out: str) -> None:
    lines = out.splitlines()
    assert lines[0].startswith("torch ") and "threads 1" in lines[0] and "load average" in lines[0]
    assert lines[1].startswith("thread split: 1 training thread")
    assert "load average at end" in lines[-1]


def test_bench_spikes_quick() -> None:
    out = run_quick("bench_spikes.py")
    check_header_lines(out)

    cost = table(out, "optimizer", "run", "median step ms (no refresh)")
    assert [r["optimizer"] for r in cost] == ["soap"]
    assert number(cost[0]["median step ms (no refresh)"]) > 0
    assert int(cost[0]["refresh cycles"]) >= 1
    number(cost[0]["cost in median steps"])
    assert "soap: one refresh costs" in out

    runs = table(out, "optimizer", "mode", "run", "p50 ms")
    assert [r["mode"] for r in runs] == ["sync", "bounded:4"]
    for row in runs:
        assert number(row["p99/p50"]) >= 1.0
        assert number(row["max/p50"]) >= number(row["p99/p50"])
        assert number(row["wait ms total"]) >= 0
        int(row["steps that waited"])
    summary = table(out, "optimizer", "mode", "runs", "p99/p50 (median)")
    assert {r["mode"] for r in summary} == {"sync", "bounded:4"}
    assert "Goal: async p99/p50 <= 1.2: soap bounded:4 p99/p50 " in out


def test_bench_overhead_quick() -> None:
    out = run_quick("bench_overhead.py")
    check_header_lines(out)

    rows = table(
        out,
        "optimizer",
        "mode",
        "mean step ms",
        "ratio vs AdamW",
        "mean optimizer ms",
        "wait ms total",
    )
    modes = {(r["optimizer"], r["mode"]) for r in rows}
    assert modes == {("AdamW", "-")} | {
        (name, mode) for name in ("SOAP", "Shampoo", "KL-Shampoo") for mode in ("sync", "bounded:4")
    }
    for row in rows:
        assert number(row["mean step ms"]) > 0
        assert number(row["ratio vs AdamW"]) > 0
        assert number(row["mean optimizer ms"]) > 0
        assert number(row["wait ms total"]) >= 0
    adamw = next(r for r in rows if r["optimizer"] == "AdamW")
    assert number(adamw["ratio vs AdamW"]) == 1.0


def test_bench_staleness_quick() -> None:
    out = run_quick("bench_staleness.py", "--taus", "2,8")
    check_header_lines(out)

    rows = table(out, "optimizer", "staleness", "stagger", "final val loss")
    assert [(r["optimizer"], r["staleness"]) for r in rows] == [
        ("adamw", "-"),
        ("soap", "sync"),
        ("soap", "bounded:2"),
        ("soap", "bounded:8"),
    ]
    for row in rows:
        assert number(row["final val loss"]) > 0
        assert number(row["median step ms"]) > 0
        steps = row["steps to AdamW's final loss"]
        assert steps == "not reached" or number(steps) > 0
        seconds = row["projected s to target"]
        assert seconds == "n/a" or number(seconds) >= 0
    sync = rows[1]
    assert number(sync["ratio vs sync"]) == 1.0 and sync["stagger"] == "off"
    for row in rows[2:]:
        number(row["ratio vs sync"])
        number(row["diff vs sync %"])
        assert row["within 1%"] in ("yes", "no") and row["stagger"] == "on"
    assert "PROJECTION" in out
    assert "Goal: τ <= 8 within 1% of sync: soap τ=2 " in out


def test_bench_pressure_quick_shows_oom_under_device_and_training_under_pressure(
    tmp_path: Path,
) -> None:
    out = run_quick("bench_pressure.py", "--host-budget", "64KiB", "--out", str(tmp_path))
    rows = {row["run"]: row for row in table(out, "run", "budget")}
    assert rows["soap device"]["outcome"] == "out of device memory"
    assert rows["soap lifecycle"]["outcome"] == "out of device memory"
    assert rows["soap pressure"]["outcome"] == "trained"
    budget = int(rows["adamw"]["peak device bytes at rest"].replace(",", ""))
    assert int(rows["soap pressure"]["peak device bytes at rest"].replace(",", "")) <= budget
    assert float(rows["adamw"]["vs AdamW"]) == 1.0
    assert float(rows["soap pressure"]["vs AdamW"]) > 0
    assert "shown: soap runs out of device memory under `device`" in out
    from traces.io import read_trace

    spans = read_trace(tmp_path / "soap-pressure").spans
    assert {"evict", "move"} <= set(spans["name"])
    assert "nvme" in set(spans["tier_to"].dropna().astype(str))  # past the host budget: spilled
    assert "device_out_of_memory" in set(read_trace(tmp_path / "soap-device").spans["name"])


def test_bench_projection_quick_prints_calibrated_efficiencies_and_errors() -> None:
    out = run_quick("bench_projection.py")
    fits = {row["op"]: row for row in table(out, "op", "calibrated efficiency")}
    assert {"gemm", "optimizer", "refresh_device"} <= set(fits)
    for row in fits.values():
        assert 0 < float(row["calibrated efficiency"]) <= 1
    figures = {row["target figure"]: row for row in table(out, "target figure")}
    assert set(figures) == {
        "forward+backward",
        "optimizer hot path",
        "refreshes (one round)",
        "median step",
    }
    for row in figures.values():
        assert float(row["measured ms"]) > 0 and float(row["projected ms"]) > 0
        assert row["error"].endswith("%")


@pytest.mark.slow
def test_bench_dist_quick_prints_balance_and_bytes_per_mode() -> None:
    out = run_quick("bench_dist.py")
    balance = {row["ranks"]: row for row in table(out, "ranks", "blocks")}
    four = balance["4 (1 node)"]
    assert float(four["replicated: refresh max/mean"]) <= 1.10
    assert 0 < float(four["sharded: largest state share"]) < 1
    runs = table(out, "ranks", "mode", "staleness")
    assert {(r["ranks"], r["mode"]) for r in runs} == {
        ("1", "-"),
        ("2", "replicated"),
        ("2", "sharded"),
    }
    for row in runs:
        assert float(row["median step ms"]) > 0
        if row["mode"] == "sharded":
            assert float(row["allgather kB/step"]) > 0 and float(row["publish kB/step"]) == 0
        if row["mode"] == "replicated":
            assert float(row["allgather kB/step"]) == 0
        if row["ranks"] == "2":  # DDP's all-reduce, traced: every fp32 gradient, every step
            assert float(row["grad all-reduce kB/step"]) > 0
    levels = {(r["ranks"], r["mode"]): r for r in table(out, "ranks", "mode", "grads")}
    assert float(levels[("4 (2 nodes)", "replicated")]["publish inter"]) > 0
    assert float(levels[("4 (1 node)", "replicated")]["publish inter"]) == 0
    for (_, mode), row in levels.items():
        assert float(row["ring/rank"]) >= float(row["grads"]) > 0
        if mode == "sharded":
            assert float(row["publish intra"]) == 0 and float(row["allgather"]) > 0


@pytest.mark.parametrize("placement", ["device", "host"])
def test_bench_ops_quick(placement: str) -> None:
    out = run_quick("bench_ops.py", "--no-peers", "--placement", placement)
    assert f"ours with placement {placement}" in out
    rows = {r["optimizer"]: r for r in table(out, "optimizer", "hot ops")}
    for family in ("SOAP", "Shampoo", "KL-Shampoo"):
        per_block, batched = rows[f"{family} ours per block"], rows[f"{family} ours batched"]
        assert float(per_block["vs ours per block"]) == 1.0
        assert 0 < int(batched["hot kernel ops"]) < int(per_block["hot kernel ops"])
        assert int(batched["hot kernel ops"]) <= int(batched["hot ops"])
        assert int(per_block["refresh-step ops"]) > int(per_block["hot ops"])
        assert f"{family}: batched / per block = " in out


def test_bench_ops_names_a_bad_placement_and_exits_2() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_ops.py"), "--placement", "attic"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert "--placement: unknown placement policy 'attic'" in proc.stderr.splitlines()[-1]


def test_count_ops_counts_top_level_operators_and_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """zeros, add_ and a float64 ``to`` launch kernels; view and a no-op ``to`` do not; the
    fill inside zeros is part of zeros."""
    monkeypatch.syspath_prepend(str(ROOT))
    import torch

    from benchmarks.bench_ops import count_ops

    def work() -> None:
        x = torch.zeros(4).add_(1).view(2, 2)
        x.to(torch.float32)
        x.to(torch.float64)

    assert count_ops(work) == (5, 3)


def test_bench_ops_counts_a_steady_step_after_one_warm_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """The counted hot step is steady: after the init call and the one hot step bench_ops
    makes, every further hot step of ours (per block and batched) counts the same."""
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.bench_ops import OURS, Counter, count_ops, our_subject
    from benchmarks.bench_step import QUICK_MODEL

    counter = Counter(QUICK_MODEL)
    for label, name in OURS:
        for batched in (False, True):
            subject = our_subject(counter, label, name, batched)
            for _ in range(2):
                counter.set_grads(subject)
                subject.optimizer.step()
            counts = []
            for _ in range(3):
                counter.set_grads(subject)
                counts.append(count_ops(subject.optimizer.step))
            assert counts[0] == counts[1] == counts[2], (subject.label, counts)
            assert counts[0][1] > 0
            subject.optimizer.close()  # type: ignore[attr-defined]
