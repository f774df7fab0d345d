"""A data-parallel run, replayed and predicted from the traces of all its ranks.

A run under torchrun leaves one trace per rank (``trace/`` for rank 0,
``ranks/<r>/trace/`` for the others). The ranks differ in what they own, so no
one trace is the run: in replicated updates only a block's owner measured its
refresh; in sharded updates only its owner measured its hot path. The model
(``calibrate``) takes each block's costs from the ranks that ran them, the
per-step costs as the ranks' median, and the collectives from their spans:

- DDP's gradient all-reduce (``allreduce`` spans, one per bucket): its bytes
  per step and its time, the buckets' union from the first launch to the last
  completion, which the backward pass contains. It is taken out of the
  backward and put back at the target's size as a ring would scale it:
  2 (n − 1) / n of the bytes per rank. (With one bucket, as on the models
  this project trains, the all-reduce starts when the backward ends, so
  nothing of it overlaps compute.)
- sharded updates' ``allgather`` (inside the optimizer step): ns per byte,
  scaled to the bytes the target gathers (every rank's share padded to the
  largest one's, times the ranks).

``simulate_ranks`` then gives every rank of a layout (N ranks, ranks per
node, update mode) the blocks the plan's ``assign_owners`` gives it, over the
same ``ownership_work`` the runtime's optimizer balances: in replicated mode
every rank runs every block's hot path and only its own refreshes, in sharded
mode only its own blocks. Each rank is one simulation of the engine; DDP's
all-reduce keeps the ranks in lockstep, so a step of the run is the slowest
rank's step. Publication broadcasts are asynchronous and overlap training;
the model does not charge them (their bytes are in the traces).

Ranks on one machine share its cores. Each rank's trace counts the CPU time
its process used (``process_cpu_seconds``: every thread, training, refresh
workers and the collectives' own copies); per step, that is what the rank
asks of the host; the rest of its step it waited, for a core (when the
host has fewer than its ranks) or in the all-reduce and for the slowest rank.
A step cannot be shorter than what all the host's ranks ask divided by its
cores, plus the latter wait, which grows with the ring as the all-reduce does. So a run with more ranks than cores (4 ranks on 2 here) is
predicted from a run that had a core per rank: each rank's demand carries
over, less the owned work it hands to the new ranks (refreshes when
replicated, whole blocks when sharded), and the host's share decides. With a
core per rank the bound is below the step and changes nothing.

``replay_ranks`` simulates a run on its own costs; ``predict_ranks``
calibrates on one run (say 2 ranks) and predicts another (say 4 ranks) it
never looked at.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from runtime.plan.costmodel import CostConfig
from runtime.plan.ownership import Assignment, LinkCosts, Topology, assign_owners
from runtime.plan.spec import BlockConfig
from runtime.plan.work import ownership_work
from runtime.policies.levels import LevelStaleness
from simulator.engine import SimConfig, SimResult, simulate
from simulator.workload import BlockCost, WorkloadError, WorkloadModel, workload_from_trace
from traces.io import Trace, read_trace

RANKS_DIRNAME = "ranks"


def read_rank_traces(run_dir: Path) -> list[Trace]:
    """Rank 0's trace, then every other rank's (``ranks/<r>``), in rank order."""
    traces = [read_trace(run_dir)]
    folder = run_dir / RANKS_DIRNAME
    if folder.is_dir():
        ranks = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
        traces += [read_trace(folder / str(r)) for r in ranks]
    world = traces[0].metadata.world_size
    if len(traces) != world:
        raise WorkloadError(
            f"{run_dir}: a run of {world} ranks, but {len(traces)} rank traces were found"
            f" (rank 0 in trace/, the others in {RANKS_DIRNAME}/<r>/trace/)"
        )
    return traces


@dataclass(frozen=True)
class Layout:
    """How a data-parallel run is laid out: ranks, ranks per node, update mode, bounds."""

    world_size: int
    ranks_per_node: int
    update_mode: str = "replicated"
    inter_node_staleness: int | None = None
    links: LinkCosts | None = None  # the rates that kept blocks node-local (--owner-links)
    ranks_per_host: int | None = None  # ranks sharing a machine's cores; None: ranks_per_node
    host_cores: int = 0  # logical cores of each machine; 0: unknown (no host bound)

    @property
    def ranks_on_host(self) -> int:
        return self.ranks_per_node if self.ranks_per_host is None else self.ranks_per_host

    @property
    def topology(self) -> Topology:
        return Topology(self.world_size, self.ranks_per_node)

    @classmethod
    def of(cls, trace: Trace) -> Layout:
        meta = trace.metadata
        policies = meta.policies
        if policies.get("parallel") == "fsdp2":
            raise WorkloadError(
                f"run {meta.run_id}: an FSDP2 run (each rank updating its rows) is not modelled"
                " by the data-parallel replay; replay DDP runs"
            )
        inter = policies.get("inter_node_staleness")
        rate = policies.get("owner_links_flops_per_s")
        bandwidth = policies.get("owner_links_inter_node_bytes_per_s")
        links = None
        if rate is not None and bandwidth is not None:
            try:
                links = LinkCosts(float(rate), float(bandwidth))
            except ValueError:
                raise WorkloadError(
                    f"run {meta.run_id}: policies.owner_links_*: expected two positive rates,"
                    f" got {rate!r} and {bandwidth!r}"
                ) from None
        per_host = policies.get("ranks_per_host")
        return cls(
            world_size=meta.world_size,
            ranks_per_node=int(policies.get("ranks_per_node", meta.world_size)),
            update_mode=policies.get("parallel", "replicated"),
            inter_node_staleness=None if inter is None else int(inter),
            links=links,
            ranks_per_host=None if per_host is None else int(per_host),
            host_cores=max(0, int(meta.hardware.cpu_cores_logical)),
        )


def ring_factor(ranks: int) -> float:
    """Bytes a rank sends in a ring all-reduce, per byte of the payload: 2 (n − 1) / n."""
    return 2 * (ranks - 1) / ranks


@dataclass(frozen=True)
class Collectives:
    """What a step's collectives cost in the calibration run."""

    gradient_bytes: int  # DDP's all-reduce payload per step
    allreduce_ns: int  # median per step: first bucket launched to last bucket done
    allgather_ns_per_byte: float  # sharded updates' gather; 0 where none was measured


@dataclass(frozen=True)
class DataParallelModel:
    """A run's costs, every block's from the rank that ran it, and its collectives."""

    workload: WorkloadModel  # the step's costs without the collectives
    layout: Layout
    collectives: Collectives
    hyperparameters: dict[str, Any]
    cpu_ns_per_step: int = 0  # what a rank asked of its host's cores per step; 0: not measured
    wait_ns_per_step: int = 0  # the rest of its median step: waiting, not computing


def _steady(spans: pd.DataFrame) -> pd.DataFrame:
    return spans[spans["step"] > 1]


def _allreduce(trace: Trace) -> tuple[int, int]:
    """(payload bytes, union ns) per step of DDP's buckets, medians over steady steps."""
    spans = _steady(trace.spans)
    reduced = spans[spans["name"] == "allreduce"]
    if reduced.empty:
        return 0, 0
    per_step = reduced.groupby("step").agg(
        bytes=("bytes", "sum"), start=("start_ns", "min"), end=("end_ns", "max")
    )
    return int(per_step["bytes"].median()), int((per_step["end"] - per_step["start"]).median())


def _allgather(trace: Trace) -> tuple[int, float]:
    """(ns, bytes) per step of sharded updates' gathers, medians over steady steps."""
    spans = _steady(trace.spans)
    gathered = spans[spans["name"] == "allgather"]
    if gathered.empty:
        return 0, 0.0
    per_step = (
        gathered.assign(ns=gathered["end_ns"] - gathered["start_ns"])
        .groupby("step")[["ns", "bytes"]]
        .sum()
    )
    return int(per_step["ns"].median()), float(per_step["bytes"].median())


def cpu_ns_per_step(trace: Trace) -> int:
    """The CPU time the rank's process used per step (``process_cpu_seconds``), from the
    sample at the end of step 1 (after the optimizer's setup) to the last; 0 without two."""
    counters = trace.counters
    samples = counters[(counters["name"] == "process_cpu_seconds") & (counters["step"] >= 1)]
    samples = samples.sort_values("step")
    if len(samples) < 2:
        return 0
    steps = int(samples["step"].iloc[-1] - samples["step"].iloc[0])
    seconds = float(samples["value"].iloc[-1] - samples["value"].iloc[0])
    return max(0, int(seconds * 1e9 / steps)) if steps > 0 else 0


def _median_nonzero(values: list[int]) -> int:
    ran = [v for v in values if v > 0]
    return int(np.median(ran)) if ran else 0


def calibrate(run_dir: Path) -> DataParallelModel:
    """The model of a data-parallel run, from all of its ranks' traces."""
    traces = read_rank_traces(run_dir)
    models = [workload_from_trace(t) for t in traces]
    blocks = []
    for index, first in enumerate(models[0].blocks):
        costs = [m.blocks[index] for m in models]
        blocks.append(
            dataclasses.replace(
                first,
                hot_ns=_median_nonzero([c.hot_ns for c in costs]),
                refresh_ns=_median_nonzero([c.refresh_ns for c in costs]),
                snapshot_ns=_median_nonzero([c.snapshot_ns for c in costs]),
                install_ns=_median_nonzero([c.install_ns for c in costs]),
            )
        )
    reduced = [_allreduce(t) for t in traces]
    gathered = [_allgather(t) for t in traces]
    allreduce_ns = int(np.median([ns for _, ns in reduced]))
    gather_ns = int(np.median([ns for ns, _ in gathered]))
    gather_bytes = float(np.median([b for _, b in gathered]))

    def median_of(field: str) -> int:
        return int(np.median([getattr(m.step, field) for m in models]))

    step = dataclasses.replace(
        models[0].step,
        forward_ns=median_of("forward_ns"),
        backward_ns=max(0, median_of("backward_ns") - allreduce_ns),
        optimizer_other_ns=max(0, median_of("optimizer_other_ns") - gather_ns),
        loop_other_ns=median_of("loop_other_ns"),
        first_step_ns=median_of("first_step_ns"),
    )
    workload = dataclasses.replace(models[0], step=step, blocks=tuple(blocks))
    meta = traces[0].metadata
    cpu_ns = _median_nonzero([cpu_ns_per_step(t) for t in traces])
    layout = Layout.of(traces[0])
    return DataParallelModel(
        workload=workload,
        layout=layout,
        collectives=Collectives(
            gradient_bytes=int(np.median([b for b, _ in reduced])),
            allreduce_ns=allreduce_ns,
            allgather_ns_per_byte=gather_ns / gather_bytes if gather_bytes > 0 else 0.0,
        ),
        hyperparameters=dict(meta.hyperparameters),
        cpu_ns_per_step=cpu_ns,
        wait_ns_per_step=_wait_ns(traces, cpu_ns, layout),
    )


def _wait_ns(traces: list[Trace], cpu_ns: int, layout: Layout) -> int:
    """What of a rank's median step it neither computed nor waited for a core: its step
    less its CPU time, spread over the cores it had (all of its own, or a share)."""
    share = 1.0
    if layout.host_cores > 0:
        share = max(1.0, layout.ranks_on_host / layout.host_cores)
    return int(np.median([max(0.0, _median_step_ns(t) - cpu_ns * share) for t in traces]))


def _median_step_ns(trace: Trace) -> int:
    spans = _steady(trace.spans)
    steps = spans[spans["name"] == "step"]
    return int((steps["end_ns"] - steps["start_ns"]).median()) if len(steps) else 0


def assignment_of(model: DataParallelModel, layout: Layout) -> Assignment:
    """The plan's owners for ``layout``, from the same work the runtime's optimizer balances."""
    hp = model.hyperparameters
    optimizer = model.workload.optimizer
    limit = hp.get("max_precond_dim")
    config = BlockConfig(
        precondition_frequency=model.workload.precondition_frequency,
        start_preconditioning_step=hp.get("start_preconditioning_step"),
        max_precond_dim=limit,
        grafting=hp.get("grafting") != "none",
    )
    cost = CostConfig(
        optimizer,  # type: ignore[arg-type]
        max_precond_dim="reference" if optimizer == "shampoo" else limit,
        grafting=hp.get("grafting") != "none",
    )
    blocks = [(b.id, *b.shape) for b in model.workload.blocks]
    work = ownership_work(optimizer, blocks, config, cost, layout.update_mode)
    links = layout.links if layout.update_mode == "replicated" else None
    return assign_owners(work, layout.topology, links=links)


def allreduce_ns(model: DataParallelModel, layout: Layout) -> int:
    """DDP's all-reduce per step at ``layout``'s size, scaled as a ring from the calibration."""
    n = layout.world_size
    calibrated = model.layout.world_size
    if n < 2 or calibrated < 2:
        return 0
    return int(model.collectives.allreduce_ns * ring_factor(n) / ring_factor(calibrated))


def rank_workloads(model: DataParallelModel, layout: Layout) -> list[WorkloadModel]:
    """Each rank's share of the work under ``layout``, collectives included."""
    assignment = assignment_of(model, layout)
    n = layout.world_size
    base = model.workload
    collectives = model.collectives
    reduce_ns = allreduce_ns(model, layout)
    gather_ns = 0
    if layout.update_mode == "sharded" and n > 1:
        numel = [0] * n
        for block in base.blocks:
            if block.id in assignment.owners:
                numel[assignment.owners[block.id]] += block.shape[0] * block.shape[1]
        gather_ns = int(collectives.allgather_ns_per_byte * max(numel) * 4 * n)
    out = []
    for rank in range(n):
        blocks = []
        for block in base.blocks:
            owned = block.id in assignment.owners and assignment.owner_for(block.id, rank) == rank
            if layout.update_mode == "sharded" and not owned:
                blocks.append(_idle(block))
            elif not owned:  # replicated: the hot path here, the refresh on its owner
                blocks.append(dataclasses.replace(block, refresh_ns=0, snapshot_ns=0))
            else:
                blocks.append(block)
        step = dataclasses.replace(
            base.step,
            backward_ns=base.step.backward_ns + reduce_ns,
            optimizer_other_ns=base.step.optimizer_other_ns + gather_ns,
        )
        out.append(dataclasses.replace(base, step=step, blocks=tuple(blocks)))
    return out


def _owned_ns_per_step(model: DataParallelModel, layout: Layout) -> float:
    """The mean rank's per-step work on the blocks it owns under ``layout``: the refreshes
    (amortized over f) and, sharded, the hot paths; what ranks added or removed hand over."""
    f = max(1, model.workload.precondition_frequency)
    totals = [
        sum(b.hot_ns + b.refresh_ns / f for b in w.blocks) for w in rank_workloads(model, layout)
    ]
    return float(np.mean(totals)) if totals else 0.0


def host_bound_ns(model: DataParallelModel, layout: Layout) -> int:
    """The shortest step the host's cores allow ``layout`` (module docstring); 0: unknown."""
    if model.cpu_ns_per_step <= 0 or layout.host_cores <= 0:
        return 0
    own = _owned_ns_per_step(model, layout) - _owned_ns_per_step(model, model.layout)
    demand = max(0.0, model.cpu_ns_per_step + own)
    wait = model.wait_ns_per_step
    calibrated, n = model.layout.world_size, layout.world_size
    if calibrated > 1 and n > 1:
        wait = int(wait * ring_factor(n) / ring_factor(calibrated))
    return int(layout.ranks_on_host * demand / layout.host_cores) + wait


def _idle(block: BlockCost) -> BlockCost:
    return dataclasses.replace(block, hot_ns=0, refresh_ns=0, snapshot_ns=0, install_ns=0)


def simulate_ranks(model: DataParallelModel, layout: Layout, config: SimConfig) -> SimResult:
    """Every rank simulated; the run's step is the slowest rank's (DDP's lockstep).

    The result's arrays are per step over the ranks (the slowest rank's
    step, the mean of the rest); its recorder is rank 0's simulated trace.
    """
    config = _with_levels(model, layout, config)
    results = [simulate(w, config) for w in rank_workloads(model, layout)]
    first = results[0]
    step_ns = np.max([r.step_ns for r in results], axis=0)
    bound = host_bound_ns(model, layout)
    if bound > 0 and step_ns.size > 1:  # the first step is the optimizer's setup, not shared
        step_ns[1:] = np.maximum(step_ns[1:], bound)
    return dataclasses.replace(
        first,
        step_ns=step_ns,
        optimizer_ns=np.mean([r.optimizer_ns for r in results], axis=0).astype(np.int64),
        wait_ns=np.max([r.wait_ns for r in results], axis=0),
    )


def _with_levels(model: DataParallelModel, layout: Layout, config: SimConfig) -> SimConfig:
    """The inter-node bound of a replicated run on several nodes, as the runtime applies it."""
    if layout.inter_node_staleness is None or layout.topology.nodes < 2:
        return config
    assignment = assignment_of(model, layout)
    crossing = frozenset(b for b in assignment.owners if assignment.crosses_nodes(b))
    policy = LevelStaleness(config.staleness, layout.inter_node_staleness, crossing)
    return dataclasses.replace(config, staleness=policy)


def is_multirank(trace: Trace) -> bool:
    """Whether a run was data-parallel (more than one rank)."""
    return trace.metadata.world_size > 1 and trace.metadata.kind == "measured"
