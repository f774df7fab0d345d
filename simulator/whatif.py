"""One what-if: a model on a machine under an optimizer and policies, simulated.

``run_whatif`` turns a ``WhatIf`` (plain data: names and numbers, as typed on
the command line) into a roofline-projected workload, simulates it with the
runtime's staleness and placement policy objects, and reduces the result to
``WhatIfResult`` figures. Sweeps and scenario presets are lists of ``WhatIf``.

Memory is the whole training state of a rank (``simulator.memory``):
parameters, gradients, master weights, optimizer state and activations; a
configuration fits when what rests on the device at its peak is within the
device's memory (on unified memory, when everything is within the one pool).

Placement: the policy decides for the profile's CPU-GPU link; the optimizer
state's budgets default to the profile's device and host memory less what the
rest of training holds there (on unified memory both are the one pool); the
NVMe tier is the profile's. Copies run at ``Efficiency.copy`` of the
link's bandwidth. AdamW's state is not tiered (as in the runtime).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.policies.placement import (
    DevicePlacement,
    LinkKind,
    check_budget,
    parse_placement,
)
from runtime.policies.staleness import parse_staleness
from simulator.engine import SimConfig, SimResult
from simulator.links import LinkRates
from simulator.memory import MemoryPerRank
from simulator.model_config import load_model
from simulator.periodic import simulate_long
from simulator.placement_model import MemoryBudget, SlotTable
from simulator.profiles import HardwareProfile, load_profile
from simulator.projection import Deployment, Efficiency, Projection, project
from simulator.tiering import Tiering


@dataclass(frozen=True)
class WhatIf:
    hardware: str
    model: str
    optimizer: str
    staleness: str = "sync"
    root_device: str = "device"
    nodes: int = 1
    gpus_per_node: int = 1
    steps: int = 200
    block_size: int | None = 1024
    precondition_frequency: int = 10
    tokens_per_rank: int = 8 * 2048
    workers: int = 4
    placement: str = "device"  # device | host | lifecycle | pressure[:LOW_MiB:HIGH_MiB]
    device_budget: int | None = None  # bytes; None: the profile's device memory
    host_budget: int | None = None  # bytes; None: the profile's host memory
    update_mode: str = "sharded"  # or replicated: what moves between ranks
    label: str = ""
    seq_len: int | None = None  # None: the model's context
    micro_batch: int | None = None  # None: from tokens_per_rank
    grad_accum: int = 1
    recompute: str = "none"  # none | selective | full
    precision: str = "bf16"  # bf16 | fp8
    data_parallel: str = "zero1"  # ddp | zero1 | zero2 | zero3 (fsdp)

    def tokens(self, context: int) -> int:
        """Tokens per rank and step: micro-batch x sequence length x accumulation when the
        micro-batch is given, else ``tokens_per_rank``."""
        if self.micro_batch is None:
            return self.tokens_per_rank
        return self.micro_batch * (self.seq_len or context) * self.grad_accum

    def describe(self) -> str:
        if self.label:
            return self.label
        if self.optimizer == "adamw":
            return "adamw"
        return f"{self.optimizer} {self.staleness} ({self.root_device} roots)"


@dataclass(frozen=True)
class WhatIfResult:
    whatif: WhatIf
    median_ms: float
    mean_ms: float
    p99_ms: float
    max_ms: float
    compute_ms: float
    overhead: float  # (median step − forward+backward) / forward+backward
    wait_ms_per_step: float
    state_gib_per_rank: float
    device_gib: float
    lower_bound_ms: float
    min_step_ms: float
    simulated: SimResult
    projection: Projection
    peak_device_state_gib: float = 0.0  # resting on the device plus the largest staged block
    link_gb_per_step: float = 0.0  # CPU-GPU link: fetches, write-backs, moves, in-place streams
    transfer_wait_ms_per_step: float = 0.0  # training waiting on copies
    worker_utilisation: float = 0.0  # refresh workers' busy time / (workers x run time)
    training_device_gib: float = 0.0  # everything on the device at its peak (unified: the pool)
    tokens_per_step: int = 0  # per rank
    event_steps: int = 0  # steps the event model ran; the rest repeat its last period

    @property
    def tokens_per_s_per_gpu(self) -> float:
        """Throughput at the median step."""
        return self.tokens_per_step / (self.median_ms / 1e3) if self.median_ms else 0.0

    @property
    def fits(self) -> bool:
        """The whole training state resting on the device at its peak within its memory."""
        return self.training_device_gib <= self.device_gib

    @property
    def memory(self) -> MemoryPerRank:
        memory = self.projection.memory
        assert memory is not None  # every what-if's projection counts it
        return memory

    @property
    def spike(self) -> float:
        return self.p99_ms / self.median_ms if self.median_ms else float("nan")


def run_whatif(w: WhatIf, efficiency: Efficiency | None = None) -> WhatIfResult:
    profile = load_profile(w.hardware)
    shape = load_model(w.model)
    staleness = parse_staleness(w.staleness)
    deploy = Deployment(
        optimizer=w.optimizer,
        block_size=w.block_size,
        precondition_frequency=w.precondition_frequency,
        tokens_per_rank=w.tokens(shape.context),
        nodes=w.nodes,
        gpus_per_node=w.gpus_per_node,
        root_device=w.root_device,
        workers=w.workers,
        shard_optimizer=w.update_mode == "sharded",
        seq_len=w.seq_len,
        grad_accum=w.grad_accum,
        recompute=w.recompute,
        precision=w.precision,
        data_parallel="zero3" if w.data_parallel == "fsdp" else w.data_parallel,
    )
    proj = project(shape, profile, deploy, efficiency)
    tiering = tiering_of(w, profile, proj, (efficiency or Efficiency()).copy)
    config = SimConfig(
        steps=w.steps,
        staleness=staleness,
        workers=w.workers,
        stagger=staleness.asynchronous,
        jobs_on_device=w.root_device == "device",
        tiering=tiering,
    )
    result, event_steps = simulate_long(proj.model, config, w.precondition_frequency)
    steps = result.step_ns.astype(np.float64) / 1e6
    compute = (proj.model.step.forward_ns + proj.model.step.backward_ns) / 1e6
    median = float(np.median(steps))
    peak = proj.state_bytes_per_rank
    if tiering is not None:
        peak = result.peak_device_state_bytes + tiering.memory.untiered_device_bytes
    memory = proj.memory
    assert memory is not None
    on_device = memory.besides_optimizer_state + peak
    if profile.shares_memory:  # host-placed state lives in the same pool
        on_device = memory.besides_optimizer_state + max(peak, proj.state_bytes_per_rank)
    return WhatIfResult(
        whatif=w,
        median_ms=median,
        mean_ms=float(steps.mean()),
        p99_ms=float(np.percentile(steps, 99)),
        max_ms=float(steps.max()),
        compute_ms=compute,
        overhead=(median - compute) / compute if compute else float("nan"),
        wait_ms_per_step=float(result.wait_ns.sum()) / 1e6 / w.steps,
        state_gib_per_rank=proj.state_bytes_per_rank / 2**30,
        device_gib=device_budget_of(w, profile) / 2**30,
        lower_bound_ms=proj.lower_bound_step_ns / 1e6,
        min_step_ms=float(steps.min()),
        simulated=result,
        projection=proj,
        peak_device_state_gib=peak / 2**30,
        link_gb_per_step=float(result.link_bytes.sum()) / 1e9 / w.steps,
        transfer_wait_ms_per_step=float(result.transfer_wait_ns.sum()) / 1e6 / w.steps,
        worker_utilisation=worker_utilisation(result, w.workers if staleness.asynchronous else 0),
        training_device_gib=on_device / 2**30,
        tokens_per_step=deploy.tokens_per_rank,
        event_steps=event_steps,
    )


def worker_utilisation(result: SimResult, workers: int) -> float:
    """The share of the run's time the refresh workers spent computing (0 without workers)."""
    total = float(result.step_ns.sum()) * workers
    if total <= 0:
        return 0.0
    busy = sum(
        s.end_ns - s.start_ns
        for s in result.recorder.spans
        if s.track is not None and s.track.startswith("refresh-worker")
    )
    return busy / total


class BudgetError(ValueError):
    """A device budget below one block's hot working set (the runtime refuses it too)."""


def device_budget_of(w: WhatIf, profile: HardwareProfile) -> int:
    return w.device_budget or int(profile.gpu.memory_bytes.value)


def _state_budgets(w: WhatIf, profile: HardwareProfile, proj: Projection) -> tuple[int, int]:
    """Device and host bytes left to the optimizer state: a given budget as given, else
    the memory less what parameters, gradients and activations hold there."""
    rest = proj.memory.besides_optimizer_state if proj.memory is not None else 0
    device = w.device_budget or max(1, int(profile.gpu.memory_bytes.value) - rest)
    host = w.host_budget or int(profile.host.memory_bytes.value)
    if profile.shares_memory and not w.host_budget:
        host = max(1, host - rest)
    return device, host


def tiering_of(
    w: WhatIf, profile: HardwareProfile, proj: Projection, copy_efficiency: float
) -> Tiering | None:
    """The what-if's placement on the profile's links (None for AdamW and for the device
    placement: nothing is moved).

    Raises ``ValueError`` for an unknown placement, ``BudgetError`` for a given
    device budget below one block's hot working set (``runtime.policies.check_budget``).
    When the rest of training leaves the state less than that, the run could not
    start: it is timed with the whole device memory and reported as not fitting.
    """
    policy = parse_placement(w.placement, link=LinkKind(profile.link.kind.value))
    if w.optimizer == "adamw":
        return None
    blocks = [(b.id, b.slots) for b in proj.model.blocks]
    device_budget, host_budget = _state_budgets(w, profile, proj)
    infos = SlotTable(blocks, policy).infos(1)
    try:
        check_budget(infos, device_budget)
    except ValueError as exc:
        if w.device_budget:
            raise BudgetError(str(exc)) from None
        device_budget = int(profile.gpu.memory_bytes.value)  # does not fit: timed anyway
        host_budget = w.host_budget or int(profile.host.memory_bytes.value)
    if isinstance(policy, DevicePlacement):  # every slot rests on the device: nothing moves
        return None
    tiered_bytes = sum(s.nbytes for _, slots in blocks for s in slots)
    return Tiering(
        policy,
        LinkRates.from_profile(profile, copy_efficiency),
        MemoryBudget(
            device_budget_bytes=device_budget,
            host_budget_bytes=host_budget,
            nvme_available=True,
            untiered_device_bytes=proj.state_bytes_per_rank - tiered_bytes,
        ),
    )


SCENARIOS: dict[str, tuple[str, list[WhatIf]]] = {}


def _scenario(name: str, summary: str, base: dict[str, object]) -> None:
    """AdamW, the synchronous references (all state on the device) and asteria:
    bounded staleness, roots on host workers, lifecycle placement."""
    variants = [
        dict(optimizer="adamw", label="AdamW"),
        dict(optimizer="soap", staleness="sync", root_device="device", label="SOAP, synchronous"),
        dict(
            optimizer="kl-shampoo",
            staleness="sync",
            root_device="device",
            label="KL-Shampoo, synchronous",
        ),
        dict(
            optimizer="soap",
            staleness="bounded:4",
            root_device="host",
            placement="lifecycle",
            label="SOAP, asteria (bounded:4, host roots)",
        ),
        dict(
            optimizer="kl-shampoo",
            staleness="bounded:4",
            root_device="host",
            placement="lifecycle",
            label="KL-Shampoo, asteria (bounded:4, host roots)",
        ),
    ]
    SCENARIOS[name] = (summary, [WhatIf(**{**base, **v}) for v in variants])  # type: ignore[arg-type]


_scenario(
    "gb10-1b",
    "a 1B LLaMA-like model on one DGX Spark (GB10, unified memory)",
    dict(
        hardware="gb10", model="1b", nodes=1, gpus_per_node=1, tokens_per_rank=8 * 2048, steps=300
    ),
)
_scenario(
    "gh200-7b",
    "a 7B LLaMA-like model on 8 nodes x 4 GH200 (ZeRO-1: every optimizer's state sharded)",
    dict(
        hardware="gh200",
        model="7b",
        nodes=8,
        gpus_per_node=4,
        seq_len=4096,
        micro_batch=1,
        grad_accum=4,
        recompute="selective",
        data_parallel="zero1",
        steps=300,
    ),
)
_scenario(
    "gh200-7b-1gpu",
    "a 7B LLaMA-like model on one GH200 (full recompute): with parameters, gradients and"
    " master weights in HBM, no synchronous optimizer's state fits beside them; lifecycle"
    " placement keeps the moments there and streams the rest over NVLink-C2C",
    dict(
        hardware="gh200",
        model="7b",
        nodes=1,
        gpus_per_node=1,
        seq_len=4096,
        micro_batch=1,
        grad_accum=4,
        recompute="full",
        precondition_frequency=20,
        steps=60,
    ),
)
