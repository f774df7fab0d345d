"""What-if workloads: a model shape on a hardware profile, by roofline.

Every op's time is its roofline on the target (``max(FLOPs / peak, bytes /
bandwidth)``, ALGORITHMS.md §8) divided by an efficiency: the fraction of the
roofline that kind of op reaches in practice. The efficiencies are
assumptions until calibrated on a measured trace (``calibrate``), and every
projection prints the ones it used.

Blocks are aggregated per (matrix kind, block position) over layers, so a 7B
model has a few hundred simulated block groups, not thousands of blocks; each
group's refresh is one job (all layers' copies of that block), which is the
granularity the runtime's workers would pick up anyway.

Forward and backward are an LLM step (``simulator.llm_step``: matmuls,
causal attention from the sequence length, memory-bound ops, recompute,
precision) at the profile's measured training efficiencies; a calibration
replaces them with one measured fraction of that roofline (``Efficiency.gemm``).

Data parallelism: every rank runs the same forward and backward; the
collectives of the deployment's ZeRO stage (``simulator.data_parallel``)
overlap with it as the engines do, and only their exposed part holds the
training thread. The optimizer state is sharded for every optimizer alike
(ZeRO-1 and up) or for none (DDP). Blocks are owned as the runtime assigns them
(``runtime.plan.ownership.assign_owners``: greedy LPT over the ranks, by the
§8 cost of what the owner does): with ``shard_optimizer`` (Distributed
Shampoo's layout, the default) a rank runs the hot path and the refreshes of
its own blocks only and the updated parameters are all-gathered; without it
every rank runs every block's hot path and the refreshes of its own. The
simulated rank is the most loaded one, which sets the step time.
Publication of refreshed bases is off the critical path (asynchronous
collectives); its bytes are reported.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.plan.costmodel import (
    WORD_BYTES,
    BlockSpec,
    CostConfig,
    Optimizer,
    block_hot_path_bytes,
    block_hot_path_flops,
    block_refresh_flops,
    block_state,
    blocks_of,
    roofline_time_s,
)
from runtime.plan.ownership import BlockWork, LinkCosts, Topology, assign_owners
from simulator.data_parallel import collectives, exposed_seconds, ring_seconds
from simulator.llm_step import (
    ComputeEfficiency,
    DataParallel,
    MicroBatchTime,
    Precision,
    Recompute,
    TrainingSetup,
    compute_efficiency,
    micro_batch_time,
)
from simulator.memory import MemoryPerRank, memory_per_rank
from simulator.placement_model import block_slot_bytes
from simulator.profiles import HardwareProfile, LinkKind
from simulator.shapes import ModelShape
from simulator.workload import BlockCost, StepCost, WorkloadModel

NS = 1e9


@dataclass(frozen=True)
class Efficiency:
    """Fraction of the roofline each op class reaches (assumptions unless calibrated)."""

    gemm: float | None = None  # None: the profile's [training] efficiencies; else one
    # measured fraction of the forward/backward roofline (a calibration)
    optimizer: float = 0.5  # hot-path fp32 matmuls and elementwise work on the GPU
    refresh_device: float = 0.1  # eigh / QR / small matmuls on a GPU stream: latency-bound
    refresh_host: float = 0.25  # the same on CPU cores (LAPACK, fp32)
    copy: float = 0.8  # bulk copies over a link
    collective: float = 0.7  # ring all-reduce bus efficiency

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value is not None and not 0 < value <= 1:
                raise ValueError(f"efficiency {name} must be in (0, 1], got {value}")


@dataclass(frozen=True)
class Deployment:
    """How the optimizer is run: where refreshes compute and over how many ranks."""

    optimizer: str
    block_size: int | None = 1024
    precondition_frequency: int = 10
    tokens_per_rank: int = 8 * 2048
    nodes: int = 1
    gpus_per_node: int = 1
    root_device: str = "device"  # device | host
    workers: int = 4
    shard_optimizer: bool = True  # False (replicated updates): DDP, whole state on every rank
    seq_len: int | None = None  # None: the model's context
    grad_accum: int = 1
    recompute: str = "none"  # none | selective | full
    precision: str = "bf16"  # bf16 | fp8
    data_parallel: str = "zero1"  # ddp | zero1 | zero2 | zero3

    @property
    def ranks(self) -> int:
        return self.nodes * self.gpus_per_node

    def setup(self, shape: ModelShape) -> TrainingSetup:
        """The step's micro-batches: ``tokens_per_rank`` = micro-batch x seq_len x grad_accum."""
        seq = self.seq_len or shape.context
        per_micro_batch = seq * self.grad_accum
        if self.tokens_per_rank % per_micro_batch:
            raise ValueError(
                f"tokens per rank ({self.tokens_per_rank}) must be a multiple of seq_len x"
                f" grad_accum ({seq} x {self.grad_accum})"
            )
        stage = DataParallel(self.data_parallel)
        if not self.shard_optimizer and stage is DataParallel.ZERO1:
            stage = DataParallel.DDP
        return TrainingSetup(
            seq_len=seq,
            micro_batch=self.tokens_per_rank // per_micro_batch,
            grad_accum=self.grad_accum,
            recompute=Recompute(self.recompute),
            precision=Precision(self.precision),
            data_parallel=stage,
        )


@dataclass(frozen=True)
class Projection:
    model: WorkloadModel
    allreduce_ns: int
    publish_bytes_per_step: float
    lower_bound_step_ns: int  # every op at 100 % of its roofline, refreshes off the critical path
    state_bytes_per_rank: int
    memory: MemoryPerRank | None = None  # the whole training memory of the simulated rank
    collective_bytes_per_step: float = 0.0  # sent by each rank (data-parallel collectives)


def _ns(seconds: float) -> int:
    return max(0, round(seconds * NS))


def allreduce_parts(
    nbytes: float, profile: HardwareProfile, deploy: Deployment, eff: float
) -> tuple[float, float]:
    """Hierarchical ring, in seconds: (intra-node over NVLink / PCIe, inter-node per GPU)."""
    if deploy.ranks <= 1:
        return 0.0, 0.0
    intra = inter = 0.0
    net = profile.network
    if deploy.gpus_per_node > 1 and net.intra_node is not None:
        g = deploy.gpus_per_node
        intra += 2 * (g - 1) / g * nbytes / (net.intra_node.bandwidth.value * eff)
        intra += 2 * (g - 1) * net.intra_node.latency.value
    if deploy.nodes > 1:
        if net.inter_node is None:
            raise ValueError(
                f"profile {profile.name} has no inter-node network for {deploy.nodes} nodes"
            )
        n = deploy.nodes
        shard = nbytes / max(1, deploy.gpus_per_node)
        inter += 2 * (n - 1) / n * shard / (net.inter_node.bandwidth.value * eff)
        inter += 2 * (n - 1) * net.inter_node.latency.value
    return intra, inter


def allreduce_seconds(
    nbytes: float, profile: HardwareProfile, deploy: Deployment, eff: float
) -> float:
    """Hierarchical ring: intra-node over NVLink / PCIe, then inter-node per GPU."""
    intra, inter = allreduce_parts(nbytes, profile, deploy, eff)
    return intra + inter


def project(
    shape: ModelShape,
    profile: HardwareProfile,
    deploy: Deployment,
    efficiency: Efficiency | None = None,
) -> Projection:
    eff = efficiency or Efficiency()
    gpu, host, link = profile.gpu, profile.host, profile.link
    params = shape.parameters()
    setup = deploy.setup(shape)
    ideal = micro_batch_time(shape, setup, profile, ComputeEfficiency.ideal())
    if eff.gemm is None:
        micro = micro_batch_time(shape, setup, profile, compute_efficiency(profile))
    else:  # calibrated: one measured fraction of the whole roofline
        micro = MicroBatchTime(ideal.forward_s / eff.gemm, ideal.backward_s / eff.gemm)
    forward_s, backward_s = setup.grad_accum * micro.forward_s, setup.grad_accum * micro.backward_s
    ring = ring_seconds(profile, deploy.nodes, deploy.gpus_per_node, eff.collective)
    parts = collectives(params, setup)
    interference = compute_efficiency(profile).interference
    allreduce_s = (
        exposed_seconds(parts, ring, setup, micro, shape.n_layer, interference)
        if deploy.ranks > 1
        else 0.0
    )
    intra_s = allreduce_s * ring.intra_share
    sharded = deploy.ranks > 1 and setup.data_parallel is not DataParallel.DDP
    bound_s = setup.grad_accum * ideal.total_s

    name = deploy.optimizer
    blocks: list[BlockCost] = []
    state_bytes = 0
    publish_bytes = 0.0
    hbm = gpu.memory_bandwidth.value
    if name == "adamw":
        updated = -(-params // deploy.ranks) if sharded else params  # ZeRO: own shard only
        adam_bytes = 4 * WORD_BYTES * updated  # read w, g, m, v; write w, m, v (≈4 words each)
        adam_s = roofline_time_s(12.0 * updated, adam_bytes, gpu.fp32_flops.value, hbm)
        optimizer_other_s = adam_s / eff.optimizer
        bound_s += adam_s
        state_bytes = 2 * WORD_BYTES * updated
    else:
        config = CostConfig(Optimizer(name), block_size=deploy.block_size)
        optimizer_other_s = 0.0
        specs = blocks_of(shape, deploy.block_size)
        links = (
            owner_link_costs(profile, deploy.root_device, deploy.gpus_per_node, eff)
            if not sharded and deploy.nodes > 1 and profile.network.inter_node is not None
            else None
        )
        owners = _owners(specs, config, deploy, sharded, links)
        for spec in specs:
            a, b, count = spec.rows, spec.cols, spec.count
            hot_flops = block_hot_path_flops(a, b, config) * count
            hot_bytes = block_hot_path_bytes(a, b, config).total_bytes * count
            owned = owners[_group_id(spec)]
            runs_hot_path = owned or not sharded
            hot_s = (
                roofline_time_s(hot_flops, hot_bytes, gpu.fp32_flops.value, hbm)
                if runs_hot_path
                else 0.0
            )
            bound_s += hot_s
            state = block_state(a, b, config)
            state_bytes += state.bytes * count if runs_hot_path else 0
            matrix_bytes = (state.factors + state.bases) * WORD_BYTES * count
            basis_bytes = state.bases * WORD_BYTES * count
            refresh_flops = block_refresh_flops(a, b, config) * count
            if deploy.root_device == "host":
                rate = host.cpu_fp32_flops.value * eff.refresh_host / max(1, deploy.workers)
                if link.kind == LinkKind.UNIFIED:
                    snapshot_s = matrix_bytes / (host.memory_bandwidth.value * eff.copy)
                    install_s = basis_bytes / (hbm * eff.copy)
                else:
                    snapshot_s = matrix_bytes / (link.d2h_bandwidth.value * eff.copy)
                    install_s = basis_bytes / (link.h2d_bandwidth.value * eff.copy)
            else:
                rate = gpu.fp32_flops.value * eff.refresh_device
                snapshot_s = matrix_bytes / (hbm * eff.copy)
                install_s = basis_bytes / (hbm * eff.copy)
            blocks.append(
                BlockCost(
                    id=_group_id(spec),
                    shape=(a, b),
                    hot_ns=_ns(hot_s / eff.optimizer),
                    refresh_ns=_ns(refresh_flops / rate) if owned else 0,
                    snapshot_ns=_ns(snapshot_s) if owned else 0,
                    install_ns=_ns(install_s) if runs_hot_path else 0,
                    slots=block_slot_bytes(a, b, config.optimizer, count=count)
                    if runs_hot_path
                    else (),
                )
            )
            if not sharded:  # replicated: refreshed bases go from owners to every rank
                publish_bytes += basis_bytes / deploy.precondition_frequency
        # the AdamW fallback of 1-D parameters, elementwise and bandwidth-bound
        vectors = sum(v.size * v.count for v in shape.vectors())
        optimizer_other_s = (
            roofline_time_s(12.0 * vectors, 7 * WORD_BYTES * vectors, gpu.fp32_flops.value, hbm)
            / eff.optimizer
        )
        state_bytes += 2 * WORD_BYTES * vectors

    model = WorkloadModel(
        optimizer=name,
        precondition_frequency=deploy.precondition_frequency,
        start_preconditioning_step=deploy.precondition_frequency,
        step=StepCost(
            forward_ns=_ns(forward_s),
            backward_ns=_ns(backward_s),
            optimizer_other_ns=_ns(optimizer_other_s),
            loop_other_ns=0,
            first_step_ns=0,
            allreduce_intra_node_ns=_ns(intra_s),
            allreduce_inter_node_ns=_ns(allreduce_s) - _ns(intra_s),
        ),
        blocks=tuple(blocks),
    )
    return Projection(
        model=model,
        allreduce_ns=_ns(allreduce_s),
        publish_bytes_per_step=publish_bytes * (deploy.ranks - 1) / max(1, deploy.ranks),
        lower_bound_step_ns=_ns(bound_s),
        state_bytes_per_rank=state_bytes,
        memory=memory_per_rank(shape, setup, deploy.ranks, state_bytes),
        collective_bytes_per_step=parts.sent_bytes(deploy.ranks, setup.grad_accum),
    )


def _group_id(spec: BlockSpec) -> str:
    return f"{spec.matrix}.r{spec.row}.c{spec.col}"


def owner_link_costs(
    profile: HardwareProfile,
    root_device: str = "host",
    ranks_per_node: int = 1,
    efficiency: Efficiency | None = None,
) -> LinkCosts:
    """The rates by which the plan keeps a block's refresh inside each node
    (``runtime.plan.keeps_in_node``), from a hardware profile.

    One rank's refresh rate where its refreshes compute (host cores or the
    GPU, at the projection's efficiency for them), and a node's inter-node
    bandwidth: one NIC per GPU, at the collectives' efficiency. The runtime
    takes the same rates from ``asteria-bench run --owner-links PROFILE``.
    """
    eff = efficiency or Efficiency()
    inter = profile.network.inter_node
    if inter is None:
        raise ValueError(f"profile {profile.name} has no inter-node network ([network.inter_node])")
    if root_device == "host":
        rate = profile.host.cpu_fp32_flops.value * eff.refresh_host
    else:
        rate = profile.gpu.fp32_flops.value * eff.refresh_device
    return LinkCosts(rate, inter.bandwidth.value * max(1, ranks_per_node) * eff.collective)


def _owners(
    specs: list[BlockSpec],
    config: CostConfig,
    deploy: Deployment,
    sharded: bool,
    links: LinkCosts | None = None,
) -> dict[str, bool]:
    """Whether the simulated rank (the most loaded) owns each block group.

    The owner's work: the refresh when updates are replicated (with the
    bytes its result weighs on the wire, which ``links`` prices against
    computing it on every node), the refresh over f plus the hot path per
    step when they are sharded, with the group's state as its memory.
    """
    work = []
    for spec in specs:
        a, b, count = spec.rows, spec.cols, spec.count
        refresh = block_refresh_flops(a, b, config)
        state = block_state(a, b, config)
        if sharded:
            cost = refresh / deploy.precondition_frequency + block_hot_path_flops(a, b, config)
            work.append(BlockWork(_group_id(spec), cost * count, state.bytes * count))
        else:
            result = state.bases * WORD_BYTES * count
            work.append(BlockWork(_group_id(spec), refresh * count, result_bytes=result))
    topology = Topology(deploy.ranks, deploy.gpus_per_node)
    assignment = assign_owners(work, topology, links=links)
    busiest = max(range(deploy.ranks), key=lambda r: (assignment.load[r], -r))
    return {block: assignment.owner_for(block, busiest) == busiest for block in assignment.owners}
