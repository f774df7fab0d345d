"""Data-parallel Asteria: balance of the owners' work, bytes per step, step time with 1 / 2 / 4 ranks.

Three tables, each from one run of this script (``--plan-only``: tables 1
and 3, which are deterministic):

1. **Owners' work** (no processes needed): the plan's ``assign_owners`` over
   the default GPT's SOAP blocks, per rank count and topology, for both update
   modes — max / mean of the work per rank (the goal is ≤ 1.10 at 4 ranks) and
   the largest rank's share of the optimizer state in sharded mode.
2. **Step time and bytes**: ``torchrun -m asteria_bench run`` on the default
   GPT at a fixed per-rank batch, with 1, 2 and 4 ranks, replicated vs sharded,
   sync vs ``bounded:4``; each run's median step (all ranks' median of
   medians, ms, and vs the 1-rank run) and the bytes its collectives moved per
   step, from the traces: ``publish`` (refresh results, replicated), ``allgather``
   (updated blocks, sharded) and DDP's gradient all-reduce (``allreduce``).
3. **Bytes per step per level** (no processes): the same payloads from the
   plan, split by the level they cross (gradients, publication within and
   across nodes, all-gather), for 1 and 2 nodes.

On a 2-core machine 4 ranks share 2 cores, so their step times measure
contention as much as distribution: read the bytes and the balance as the
figures that carry over, the times as this machine's.

    python benchmarks/bench_dist.py            # ~4 minutes on 2 cores
    python benchmarks/bench_dist.py --quick    # a smoke run
    python benchmarks/bench_dist.py --plan-only   # the deterministic tables, in seconds
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import environment_line, fmt, format_table, load_average, median  # noqa: E402


def balance_table() -> str:
    """Max / mean of owners' work for the default GPT's SOAP blocks (no processes)."""
    from asteria_bench.config import ModelSection
    from asteria_bench.workload.model import GPT, GPTConfig
    from runtime import SOAP
    from runtime.plan import Topology, assign_owners

    m = ModelSection()
    model = GPT(GPTConfig(context=m.context, n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd))
    opt = SOAP(model.parameters())
    rows = []
    for ranks, per_node in ((2, None), (4, None), (4, 2), (8, 4)):
        topology = Topology(ranks, per_node)
        replicated = assign_owners(opt.block_work(), topology)
        sharded_work = opt._ownership_work("sharded")
        sharded = assign_owners(sharded_work, topology)
        total_state = sum(w.nbytes for w in sharded_work)
        rows.append(
            [
                f"{ranks} ({topology.nodes} node{'s' if topology.nodes > 1 else ''})",
                str(len(replicated.owners)),
                fmt(replicated.imbalance),
                fmt(sharded.imbalance),
                fmt(max(sharded.memory_bytes) / total_state),
            ]
        )
    opt.close()
    return format_table(
        [
            "ranks",
            "blocks",
            "replicated: refresh max/mean",
            "sharded: update max/mean",
            "sharded: largest state share",
        ],
        rows,
    )


def levels_table() -> str:
    """Bytes per step each level of the network carries, by the plan (no processes).

    Payloads per step for the default GPT's SOAP blocks: DDP's gradient
    all-reduce (every fp32 gradient; a ring sends 2 (n - 1) / n of it per
    rank); replicated updates' publications, each block's result once every f
    steps, within every node (``intra``) and, for results that cross nodes,
    once from the owner to each other node's leader (``inter``); sharded
    updates' all-gather of every rank's owned blocks, padded to the largest
    rank's share.
    """
    from asteria_bench.config import ModelSection
    from asteria_bench.workload.model import GPT, GPTConfig
    from runtime import SOAP
    from runtime.plan import Topology, assign_owners

    m = ModelSection()
    model = GPT(GPTConfig(context=m.context, n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd))
    opt = SOAP(model.parameters())
    f = opt.defaults["precondition_frequency"]
    gradients = 4 * sum(p.numel() for p in model.parameters())
    numel = {b.id: b.numel for b in opt.blocks if b.is_matrix}
    rows = []
    for ranks, per_node in ((2, None), (4, None), (4, 2), (8, 4)):
        topology = Topology(ranks, per_node)
        label = f"{ranks} ({topology.nodes} node{'s' if topology.nodes > 1 else ''})"
        replicated = assign_owners(opt.block_work(), topology)
        results = {w.id: w.result_bytes for w in opt.block_work()}
        crossing = sum(r for b, r in results.items() if replicated.crosses_nodes(b))
        sharded = assign_owners(opt._ownership_work("sharded"), topology)
        owned = [sum(numel[b] for b in sharded.owned_by(r)) for r in range(ranks)]
        gathered = 4 * max(owned) * ranks
        for mode, intra, inter, gather in (
            ("replicated", sum(results.values()) / f, crossing * (topology.nodes - 1) / f, 0),
            ("sharded", 0, 0, gathered),
        ):
            rows.append(
                [
                    label,
                    mode,
                    f"{gradients / 1e3:.1f}",
                    f"{gradients * 2 * (ranks - 1) / ranks / 1e3:.1f}",
                    f"{intra / 1e3:.1f}",
                    f"{inter / 1e3:.1f}",
                    f"{gather / 1e3:.1f}",
                ]
            )
    opt.close()
    return format_table(
        ["ranks", "mode", "grads", "ring/rank", "publish intra", "publish inter", "allgather"],
        rows,
    )


@dataclass(frozen=True)
class Case:
    ranks: int
    mode: str
    staleness: str

    @property
    def name(self) -> str:
        return f"{self.ranks}r-{self.mode}-{self.staleness.replace(':', '')}"


def launch(case: Case, out: Path, steps: int, batch: int) -> Path:
    run = out / case.name
    args = [
        "-m",
        "asteria_bench",
        "run",
        "--steps",
        str(steps),
        "--batch-size",
        str(batch),
        "--staleness",
        case.staleness,
        "--update-mode",
        case.mode,
        "--torch-threads",
        "1",
        "--eval-every",
        str(steps),
        "--eval-batches",
        "1",
        "-q",
        "--out",
        str(run),
    ]
    if case.ranks == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={case.ranks}",
            *args,
        ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{case.name} failed:\n{proc.stderr[-3000:]}")
    return run


@dataclass(frozen=True)
class Measured:
    median_step_ms: float
    publish_bytes_per_step: float
    allgather_bytes_per_step: float
    allreduce_bytes_per_step: float


def measure(run: Path, ranks: int) -> Measured:
    from traces.io import read_trace

    traces = [read_trace(run)] + [read_trace(run / "ranks" / str(r)) for r in range(1, ranks)]
    medians, publish, gather, reduced = [], [], [], []
    for trace in traces:
        spans = trace.spans
        steps = spans[spans["name"] == "step"]
        steady = steps[steps["step"] > 1]
        medians.append(median(((steady["end_ns"] - steady["start_ns"]) / 1e6).tolist()))
        count = max(1, len(steady))
        publish.append(float(spans.loc[spans["name"] == "publish", "bytes"].sum()) / count)
        gather.append(float(spans.loc[spans["name"] == "allgather", "bytes"].sum()) / count)
        reduced.append(float(spans.loc[spans["name"] == "allreduce", "bytes"].sum()) / count)
    return Measured(median(medians), median(publish), median(gather), median(reduced))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=40, help="steps per run (default 40)")
    parser.add_argument("--batch-size", type=int, default=16, help="per rank (default 16)")
    parser.add_argument("--ranks", default="1,2,4", help="rank counts (default 1,2,4)")
    parser.add_argument(
        "--staleness", default="sync,bounded:4", help="policies (default sync,bounded:4)"
    )
    parser.add_argument("--quick", action="store_true", help="a few steps, 1 and 2 ranks, sync")
    parser.add_argument(
        "--plan-only", action="store_true", help="the plan's tables only (no runs, no timing)"
    )
    args = parser.parse_args()
    if args.quick:
        args.steps, args.ranks, args.staleness = 4, "1,2", "sync"
    print(environment_line())
    print("\n## Owners' work per rank (the plan's assignment of the default GPT's SOAP blocks)\n")
    print(balance_table())
    print("\n## kB per step per level (the plan, default GPT, SOAP; payloads)\n")
    print(levels_table())
    if args.plan_only:
        return

    ranks = [int(r) for r in args.ranks.split(",")]
    policies = args.staleness.split(",")
    cases = [Case(1, "replicated", s) for s in policies if 1 in ranks]
    cases += [
        Case(n, mode, s)
        for n in ranks
        if n > 1
        for mode in ("replicated", "sharded")
        for s in policies
    ]
    rows = []
    base: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            result = measure(launch(case, Path(tmp), args.steps, args.batch_size), case.ranks)
            if case.ranks == 1:
                base[case.staleness] = result.median_step_ms
            reference = base.get(case.staleness)
            rows.append(
                [
                    str(case.ranks),
                    case.mode if case.ranks > 1 else "-",
                    case.staleness,
                    fmt(result.median_step_ms, 1),
                    fmt(result.median_step_ms / reference) if reference else "n/a",
                    f"{result.publish_bytes_per_step / 1e3:.1f}",
                    f"{result.allgather_bytes_per_step / 1e3:.1f}",
                    f"{result.allreduce_bytes_per_step / 1e3:.1f}",
                ]
            )
            print(f"  {case.name}: median step {result.median_step_ms:.1f} ms", file=sys.stderr)
    print(
        f"\n## Step time and bytes per step (default GPT, SOAP, {args.batch_size} sequences"
        f" per rank, {args.steps} steps)\n"
    )
    print(
        format_table(
            [
                "ranks",
                "mode",
                "staleness",
                "median step ms",
                "vs 1 rank",
                "publish kB/step",
                "allgather kB/step",
                "grad all-reduce kB/step",
            ],
            rows,
        )
    )
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
