"""Data-parallel collectives of one step: what moves, and what of it training waits for.

Per step and rank, by ``DataParallel`` stage (payload S = 2 bytes per
parameter: bf16 gradients and parameters):

- ``ddp``: one all-reduce of the gradients, after the last micro-batch's
  backward (earlier ones accumulate locally, ``no_sync``).
- ``zero1``: a reduce-scatter of the gradients (last micro-batch), then an
  all-gather of the updated parameters.
- ``zero2``: the gradients are sharded, so every micro-batch's are
  reduce-scattered; one all-gather of the parameters per step.
- ``zero3`` (FSDP): every micro-batch gathers each layer's parameters for its
  forward and again for its backward, and reduce-scatters its gradients.

Rings over two levels, as NCCL runs them on rail-optimised clusters: over the
node's GPUs at the intra-node bandwidth, then between nodes where each GPU's
NIC carries 1/g of the payload. An all-reduce is a reduce-scatter and an
all-gather, each moving (n - 1)/n of the payload per rank.

Overlap, as the engines do it: gradients leave in buckets (``bucket_bytes``,
DDP's 25 MiB; one layer under FSDP) while the backward pass computes, so
only what the backward cannot cover, and at least the last bucket, is
exposed; parameter all-gathers run ahead of the forward pass (Megatron's
``overlap_param_gather``, FSDP's prefetch), so at least the first bucket is.

Hidden is not free. A collective beside compute runs its own kernels on the
same GPU: over NVLink, NCCL moves the data with SM loads and stores at HBM
speed, taking SMs and memory bandwidth from the matmuls (and pushing a
full-wave GEMM into a second wave). Measured on H100, A100 and MI250,
overlapped compute runs 18.9 % slower on average and up to 40 % (arXiv
2507.03114). So each second of intra-node collective that compute hides
still costs the step ``interference`` seconds (0: perfect overlap, 1: as if
not overlapped). The inter-node leg is read by the NIC's DMA at a ninth of
that rate and is not charged.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.llm_step import BF16_BYTES, DataParallel, MicroBatchTime, TrainingSetup
from simulator.profiles import HardwareProfile

__all__ = [
    "Collectives",
    "RingTime",
    "collectives",
    "exposed_seconds",
    "ring_seconds",
    "total_seconds",
]


@dataclass(frozen=True)
class Collectives:
    """Payloads (bytes of the whole tensor set) of one step's collectives on one rank."""

    all_reduce: float = 0.0  # once per step, in the last backward
    reduce_scatter_per_step: float = 0.0  # once per step, in the last backward
    reduce_scatter_per_micro_batch: float = 0.0  # in every backward
    all_gather_per_step: float = 0.0  # after the update, ahead of the next forward
    all_gather_per_micro_batch: float = 0.0  # in every forward and again in every backward

    def sent_bytes(self, ranks: int, micro_batches: int) -> float:
        """Bytes each rank sends per step on a flat ring of ``ranks``: (n-1)/n per pass."""
        if ranks <= 1:
            return 0.0
        share = (ranks - 1) / ranks
        passes = (
            2 * self.all_reduce
            + self.reduce_scatter_per_step
            + self.all_gather_per_step
            + micro_batches * (self.reduce_scatter_per_micro_batch)
            + micro_batches * 2 * self.all_gather_per_micro_batch
        )
        return share * passes


def collectives(parameters: int, setup: TrainingSetup) -> Collectives:
    """The step's collectives for ``parameters`` trained under ``setup.data_parallel``."""
    payload = float(BF16_BYTES * parameters)
    stage = setup.data_parallel
    if stage is DataParallel.DDP:
        return Collectives(all_reduce=payload)
    if stage is DataParallel.ZERO1:
        return Collectives(reduce_scatter_per_step=payload, all_gather_per_step=payload)
    if stage is DataParallel.ZERO2:
        return Collectives(reduce_scatter_per_micro_batch=payload, all_gather_per_step=payload)
    return Collectives(reduce_scatter_per_micro_batch=payload, all_gather_per_micro_batch=payload)


@dataclass(frozen=True)
class RingTime:
    """Seconds of one ring pass (a reduce-scatter or an all-gather) per byte of payload."""

    intra_s_per_byte: float
    inter_s_per_byte: float
    latency_s: float

    def seconds(self, payload: float, passes: int = 1) -> float:
        if payload <= 0:
            return 0.0
        per_byte = self.intra_s_per_byte + self.inter_s_per_byte
        return passes * (payload * per_byte + self.latency_s)

    @property
    def intra_share(self) -> float:
        total = self.intra_s_per_byte + self.inter_s_per_byte
        return self.intra_s_per_byte / total if total > 0 else 1.0


def ring_seconds(
    profile: HardwareProfile, nodes: int, gpus_per_node: int, efficiency: float
) -> RingTime:
    """The two-level ring of ``nodes`` x ``gpus_per_node`` ranks at ``efficiency`` of the links."""
    net = profile.network
    intra = inter = latency = 0.0
    if gpus_per_node > 1 and net.intra_node is not None:
        g = gpus_per_node
        intra = (g - 1) / g / (net.intra_node.bandwidth.value * efficiency)
        latency += (g - 1) * net.intra_node.latency.value
    if nodes > 1:
        if net.inter_node is None:
            raise ValueError(f"profile {profile.name} has no inter-node network for {nodes} nodes")
        n = nodes
        inter = (n - 1) / n / max(1, gpus_per_node) / (net.inter_node.bandwidth.value * efficiency)
        latency += (n - 1) * net.inter_node.latency.value
    return RingTime(intra, inter, latency)


def _behind(comm_s: float, cover_s: float, first_fraction: float) -> float:
    """What of ``comm_s`` sent in buckets alongside ``cover_s`` of compute is not hidden.

    Buckets become ready evenly through the compute; the stream cannot finish
    before the last bucket is sent, nor before the whole volume is.
    """
    if comm_s <= 0:
        return 0.0
    last = comm_s * first_fraction
    return max(last, comm_s - cover_s * (1.0 - first_fraction))


def total_seconds(parts: Collectives, ring: RingTime, setup: TrainingSetup) -> float:
    """Seconds per step the step's collectives take on the ring, overlapped or not."""
    per_step = (
        ring.seconds(parts.all_reduce, passes=2)
        + ring.seconds(parts.reduce_scatter_per_step)
        + ring.seconds(parts.all_gather_per_step)
    )
    per_micro_batch = ring.seconds(parts.reduce_scatter_per_micro_batch) + ring.seconds(
        parts.all_gather_per_micro_batch, passes=2
    )
    return per_step + setup.grad_accum * per_micro_batch


def exposed_seconds(
    parts: Collectives,
    ring: RingTime,
    setup: TrainingSetup,
    step: MicroBatchTime,
    n_layer: int,
    interference: float = 0.0,
) -> float:
    """Seconds per step the collectives add: what compute cannot cover, plus
    ``interference`` of the intra-node time it does cover (see the module docstring)."""
    if not 0.0 <= interference <= 1.0:
        raise ValueError(f"interference must be in [0, 1], got {interference}")
    if ring.intra_s_per_byte + ring.inter_s_per_byte <= 0:
        return 0.0
    behind = _waited_seconds(parts, ring, setup, step, n_layer)
    hidden = max(0.0, total_seconds(parts, ring, setup) - behind)
    return behind + interference * ring.intra_share * hidden


def _waited_seconds(
    parts: Collectives,
    ring: RingTime,
    setup: TrainingSetup,
    step: MicroBatchTime,
    n_layer: int,
) -> float:
    """Seconds per step that training waits on collectives, after overlap with compute."""
    payload = max(
        parts.all_reduce,
        parts.reduce_scatter_per_step,
        parts.reduce_scatter_per_micro_batch,
        parts.all_gather_per_step,
        parts.all_gather_per_micro_batch,
    )
    bucket = min(1.0, setup.bucket_bytes / payload) if payload > 0 else 1.0
    layer = 1.0 / n_layer
    exposed = 0.0
    # gradients, in the (last) backward
    last_backward = ring.seconds(parts.all_reduce, passes=2) + ring.seconds(
        parts.reduce_scatter_per_step
    )
    exposed += _behind(last_backward, step.backward_s, bucket)
    # per-step parameter all-gather, ahead of the next forward
    exposed += _behind(ring.seconds(parts.all_gather_per_step), step.forward_s, bucket)
    # per micro-batch: ZeRO-2's reduce-scatter, FSDP's gathers and reduce-scatter by layer
    per_mb_backward = ring.seconds(parts.reduce_scatter_per_micro_batch) + ring.seconds(
        parts.all_gather_per_micro_batch
    )
    fraction = layer if parts.all_gather_per_micro_batch > 0 else bucket
    per_mb = _behind(per_mb_backward, step.backward_s, fraction)
    per_mb += _behind(ring.seconds(parts.all_gather_per_micro_batch), step.forward_s, layer)
    return exposed + setup.grad_accum * per_mb
