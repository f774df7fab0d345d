"""One training step of a decoder LLM on one GPU: the work, and its time on a profile.

The step is ``grad_accum`` micro-batches of ``micro_batch`` sequences of
``seq_len`` tokens. Each micro-batch's work has three parts, each timed on
its own roof, because each reaches a different fraction of it in practice:

- **matmuls**: 2 FLOPs per weight and token in the forward pass (every
  projection and the LM head; the embedding lookup is not a matmul), twice
  that in the backward pass (input and weight gradients). At the profile's
  dense bf16 rate, or its fp8 rate with ``precision = fp8`` (Transformer
  Engine runs the linear layers in fp8 and keeps attention in bf16).
- **attention**: causal ``softmax(QKᵀ)V`` on a sequence of s tokens is two
  matmuls over the lower triangle: 2 · 2 · (s²/2) · hidden FLOPs per layer
  forward. Flash attention's backward recomputes the scores: five matmuls
  against the forward's two, so the backward is 2.5 x the forward. Its
  kernels exist for head dimensions in steps of 32 (FlashAttention-2: 32 to
  256); a head dimension in between runs padded to the next one (112 as 128).
- **memory-bound ops**: norms, rotary embeddings, the MLP activation,
  residual adds and the loss's softmax over the vocabulary move bytes, not
  FLOPs (see ``elementwise_bytes_per_token``); at the profile's HBM bandwidth.
  A backward pass moves about twice the forward's bytes (saved input and
  incoming gradient read, input gradient written).

Activation recompute adds forward work to the backward pass: ``full`` the
whole forward of every layer, ``selective`` only the layers' memory-bound ops
(the matmul inputs are kept; norms and activations are recomputed from
them). The LM head and the loss sit outside the checkpointed layers and are
not recomputed.

The fraction of each roof a profile reaches (``ComputeEfficiency``) comes
from the profile's ``[training]`` section: fitted to published measured
training throughput, with the sources in the profile file.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from simulator.profiles import HardwareProfile
from simulator.shapes import Family, ModelShape

__all__ = [
    "BF16_BYTES",
    "ComputeEfficiency",
    "DataParallel",
    "MicroBatchTime",
    "MicroBatchWork",
    "Precision",
    "Recompute",
    "TrainingSetup",
    "attention_flops_per_sequence",
    "attention_padding",
    "compute_efficiency",
    "elementwise_bytes_per_token",
    "matmul_flops_per_token",
    "micro_batch_time",
    "micro_batch_work",
]

BF16_BYTES = 2
FLASH_BACKWARD_RATIO = 2.5
"""Flash attention's backward: five s x s x d matmuls (scores recomputed) against two forward."""
LOSS_BYTES_PER_ENTRY = 12
"""The loss per vocabulary entry and token: bf16 logits written, read as fp32, gradient both."""
FLASH_HEAD_DIM_STEP = 32
"""FlashAttention-2 is compiled for head dimensions 32, 64, ..., 256; others run padded."""


def attention_padding(shape: ModelShape) -> float:
    """Executed over useful attention work: the head dimension padded to the kernel's."""
    d = shape.head_dim
    return -(-d // FLASH_HEAD_DIM_STEP) * FLASH_HEAD_DIM_STEP / d


class Recompute(str, Enum):
    NONE = "none"
    SELECTIVE = "selective"  # norms and activation functions recomputed, matmul inputs kept
    FULL = "full"  # only each layer's input kept; the whole layer recomputed in backward


class Precision(str, Enum):
    BF16 = "bf16"
    FP8 = "fp8"  # linear layers in fp8 (Transformer Engine), attention and the rest in bf16


class DataParallel(str, Enum):
    """What data-parallel ranks shard (ZeRO stages, Rajbhandari et al. 2020, arXiv 1910.02054)."""

    DDP = "ddp"  # nothing: gradients all-reduced, every rank holds everything
    ZERO1 = "zero1"  # optimizer state (and fp32 master weights)
    ZERO2 = "zero2"  # ... and gradients
    ZERO3 = "zero3"  # ... and parameters (FSDP FULL_SHARD)


@dataclass(frozen=True)
class TrainingSetup:
    """How a step is cut into micro-batches and what the training engine does."""

    seq_len: int
    micro_batch: int = 1
    grad_accum: int = 1
    recompute: Recompute = Recompute.NONE
    precision: Precision = Precision.BF16
    data_parallel: DataParallel = DataParallel.ZERO1
    bucket_bytes: int = 25 * 2**20  # PyTorch DDP's bucket_cap_mb = 25

    def __post_init__(self) -> None:
        for name in ("seq_len", "micro_batch", "grad_accum", "bucket_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        object.__setattr__(self, "recompute", Recompute(self.recompute))
        object.__setattr__(self, "precision", Precision(self.precision))
        object.__setattr__(self, "data_parallel", DataParallel(self.data_parallel))

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.seq_len * self.micro_batch

    @property
    def tokens_per_step(self) -> int:
        """Tokens each rank trains on per optimizer step."""
        return self.tokens_per_micro_batch * self.grad_accum


def matmul_flops_per_token(shape: ModelShape) -> float:
    """Forward matmul FLOPs per token: 2 per weight of every projection and of the LM head."""
    flops = 0.0
    for m in shape.matrices():
        if m.name == "position":  # a lookup
            continue
        if m.name == "embedding" and shape.family is Family.LLAMA and not shape.tied_embeddings:
            continue  # a lookup; the untied head is its own matrix
        flops += 2.0 * m.rows * m.cols * m.count
    return flops


def attention_flops_per_sequence(shape: ModelShape, seq_len: int) -> float:
    """Forward FLOPs of causal attention on one sequence: QKᵀ and AV over the lower triangle."""
    return 2.0 * 2.0 * (seq_len * seq_len / 2.0) * shape.hidden * shape.n_layer


def elementwise_bytes_per_token(shape: ModelShape) -> float:
    """Forward bytes of the memory-bound ops per token, bf16 activations and fp32 logits.

    Per layer (elements, read + written): two norms 2 x (h + h); two residual
    adds 2 x (2h + h); LLaMA: rotary embedding on q and k 2(h + kv) and SwiGLU
    (read gate and up, write their product) 3i; GPT: GELU 2i. Loss: the logits
    written in bf16 and read back as fp32 for the softmax, its gradient
    written and read: 12 bytes per vocabulary entry.
    """
    h, i = shape.hidden, shape.intermediate
    per_layer = 4 * h + 6 * h
    if shape.family is Family.LLAMA:
        per_layer += 2 * (h + shape.kv_heads * shape.head_dim) + 3 * i
    else:
        per_layer += 2 * i
    return float(BF16_BYTES * per_layer * shape.n_layer + LOSS_BYTES_PER_ENTRY * shape.vocab)


@dataclass(frozen=True)
class MicroBatchWork:
    """One micro-batch's forward work on one rank; the backward follows from it.
    ``head_*``: the part of the totals in the LM head and the loss (never recomputed)."""

    matmul_flops: float
    attention_flops: float
    elementwise_bytes: float
    head_matmul_flops: float = 0.0
    head_elementwise_bytes: float = 0.0


def micro_batch_work(shape: ModelShape, setup: TrainingSetup) -> MicroBatchWork:
    tokens = setup.tokens_per_micro_batch
    return MicroBatchWork(
        matmul_flops=matmul_flops_per_token(shape) * tokens,
        attention_flops=attention_flops_per_sequence(shape, setup.seq_len) * setup.micro_batch,
        elementwise_bytes=elementwise_bytes_per_token(shape) * tokens,
        head_matmul_flops=2.0 * shape.vocab * shape.hidden * tokens,
        head_elementwise_bytes=float(LOSS_BYTES_PER_ENTRY * shape.vocab * tokens),
    )


@dataclass(frozen=True)
class ComputeEfficiency:
    """The fraction of each roof reached: matmuls and attention of the tensor-core peak,
    memory-bound ops of the HBM bandwidth; and ``interference``, what of the
    intra-node collective time that compute hides still costs the step
    (``simulator.data_parallel``)."""

    matmul: float
    attention: float
    memory: float
    interference: float = 0.0

    def __post_init__(self) -> None:
        for name in ("matmul", "attention", "memory"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"efficiency {name} must be in (0, 1], got {value}")
        if not 0 <= self.interference <= 1:
            raise ValueError(f"interference must be in [0, 1], got {self.interference}")

    @classmethod
    def ideal(cls) -> ComputeEfficiency:
        return cls(1.0, 1.0, 1.0)


DEFAULT_EFFICIENCY = ComputeEfficiency(matmul=0.6, attention=0.4, memory=0.7)
"""For a profile without a ``[training]`` section: an assumption, said so in reports."""


def compute_efficiency(profile: HardwareProfile) -> ComputeEfficiency:
    """The profile's measured training efficiencies, or ``DEFAULT_EFFICIENCY``."""
    training = profile.training
    if training is None:
        return DEFAULT_EFFICIENCY
    interference = training.collective_interference
    return ComputeEfficiency(
        matmul=training.matmul_efficiency.value,
        attention=training.attention_efficiency.value,
        memory=training.memory_efficiency.value,
        interference=0.0 if interference is None else interference.value,
    )


@dataclass(frozen=True)
class MicroBatchTime:
    """Seconds of one micro-batch: the forward, and the backward with its recompute."""

    forward_s: float
    backward_s: float

    @property
    def total_s(self) -> float:
        return self.forward_s + self.backward_s


def micro_batch_time(
    shape: ModelShape, setup: TrainingSetup, profile: HardwareProfile, eff: ComputeEfficiency
) -> MicroBatchTime:
    """One micro-batch on one GPU, each part on its roof at its efficiency."""
    gpu = profile.gpu
    work = micro_batch_work(shape, setup)
    matmul_rate = gpu.bf16_dense_flops.value
    if setup.precision is Precision.FP8:
        if gpu.fp8_dense_flops is None:
            raise ValueError(f"profile {profile.name} states no fp8 rate (gpu.fp8_dense_flops)")
        matmul_rate = gpu.fp8_dense_flops.value
    matmul = work.matmul_flops / (matmul_rate * eff.matmul)
    attention = (
        work.attention_flops
        * attention_padding(shape)
        / (gpu.bf16_dense_flops.value * eff.attention)
    )
    memory = work.elementwise_bytes / (gpu.memory_bandwidth.value * eff.memory)
    forward = matmul + attention + memory
    backward = 2 * matmul + FLASH_BACKWARD_RATIO * attention + 2 * memory
    head = work.head_matmul_flops / (matmul_rate * eff.matmul)
    loss = work.head_elementwise_bytes / (gpu.memory_bandwidth.value * eff.memory)
    if setup.recompute is Recompute.FULL:
        backward += forward - head - loss
    elif setup.recompute is Recompute.SELECTIVE:
        backward += memory - loss
    return MicroBatchTime(forward, backward)
