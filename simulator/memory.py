"""The whole training memory of one rank: what "fits" has to mean.

Mixed-precision training as the ZeRO paper counts it (Rajbhandari et al.
2020, arXiv 1910.02054, §3.1 and Figure 1): bf16 parameters (2 bytes each)
and gradients (2), fp32 master weights (4), and the optimizer's own state
(AdamW: fp32 m and v, 8 bytes; Shampoo, SOAP, KL-Shampoo: their blocks'
state from the cost model). ZeRO-1 shards the master weights and the
optimizer state over the data-parallel ranks, ZeRO-2 also the gradients,
ZeRO-3 / FSDP also the parameters, of which it holds two layers gathered at
a time (the one computing and the one prefetched).

Activations are one micro-batch's (micro-batches run one after another),
every tensor the backward pass needs, in bf16, per token and layer:

- LLaMA: the two norm inputs and outputs 4h, q h, k and v 2·kv (flash
  attention keeps only these and the output, not the s x s scores), the
  attention output h, gate and up 2i, their SwiGLU product i.
- GPT: the same with q, k, v of h each and the GELU's input and output 2i.

``selective`` recompute drops the norm outputs and the activation
function's output (recomputed from what is kept); ``full`` keeps only each
layer's input, plus one layer's whole set while it is recomputed. The loss
holds the logits in bf16 and their fp32 copy: 6 bytes per vocabulary entry
and token.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.llm_step import BF16_BYTES, DataParallel, Recompute, TrainingSetup
from simulator.shapes import Family, ModelShape

__all__ = ["MemoryPerRank", "activation_bytes", "memory_per_rank"]

MASTER_BYTES = 4  # fp32 master weights per parameter
LOGIT_BYTES = 6  # bf16 logits and their fp32 copy, per vocabulary entry and token


def _layer_elements(shape: ModelShape, recompute: Recompute) -> int:
    """bf16 elements per token one layer keeps for its backward pass."""
    h, i = shape.hidden, shape.intermediate
    kv = shape.kv_heads * shape.head_dim
    if shape.family is Family.LLAMA:
        kept = {"norms": 4 * h, "attention": 2 * h + 2 * kv, "mlp": 2 * i, "activation": i}
    else:
        kept = {"norms": 4 * h, "attention": 4 * h, "mlp": i, "activation": i}
    if recompute is Recompute.SELECTIVE:
        kept["norms"] = 2 * h  # the inputs stay, the outputs are recomputed
        kept["activation"] = 0
    return sum(kept.values())


def activation_bytes(shape: ModelShape, setup: TrainingSetup) -> int:
    """Activations of one micro-batch held for its backward pass, logits included."""
    tokens = setup.tokens_per_micro_batch
    logits = LOGIT_BYTES * shape.vocab * tokens
    if setup.recompute is Recompute.FULL:
        inputs = shape.hidden * shape.n_layer
        one_layer = _layer_elements(shape, Recompute.NONE)
        return BF16_BYTES * tokens * (inputs + one_layer) + logits
    return BF16_BYTES * tokens * _layer_elements(shape, setup.recompute) * shape.n_layer + logits


@dataclass(frozen=True)
class MemoryPerRank:
    """Bytes one rank holds at its peak (the end of a backward pass), by kind."""

    parameters: int  # bf16, whole or a shard plus the gathered layers
    gradients: int  # bf16
    master_weights: int  # fp32
    optimizer_state: int
    activations: int

    @property
    def total(self) -> int:
        return (
            self.parameters
            + self.gradients
            + self.master_weights
            + self.optimizer_state
            + self.activations
        )

    @property
    def besides_optimizer_state(self) -> int:
        return self.total - self.optimizer_state


def _layer_parameters(shape: ModelShape) -> int:
    per_layer = sum(m.numel for m in shape.matrices() if m.count == shape.n_layer)
    return per_layer + sum(v.size for v in shape.vectors() if v.count >= shape.n_layer)


def memory_per_rank(
    shape: ModelShape, setup: TrainingSetup, ranks: int, optimizer_state_bytes: int
) -> MemoryPerRank:
    """The whole memory of one of ``ranks`` data-parallel ranks.

    ``optimizer_state_bytes`` is the state this rank holds (already its share
    when the optimizer is sharded: the owner assignment decides the share).
    """
    params = shape.parameters()
    stage = setup.data_parallel
    n = max(1, ranks)
    sharded_master = stage is not DataParallel.DDP
    sharded_grads = stage in (DataParallel.ZERO2, DataParallel.ZERO3)
    if stage is DataParallel.ZERO3 and n > 1:
        weights = -(-BF16_BYTES * params // n) + 2 * BF16_BYTES * _layer_parameters(shape)
    else:
        weights = BF16_BYTES * params
    gradients = -(-BF16_BYTES * params // n) if sharded_grads else BF16_BYTES * params
    if sharded_grads and n > 1:  # one bucket (a layer under FSDP) whole before it is scattered
        gradients += min(BF16_BYTES * params, max(setup.bucket_bytes, 0))
    master = -(-MASTER_BYTES * params // n) if sharded_master else MASTER_BYTES * params
    return MemoryPerRank(
        parameters=weights,
        gradients=gradients,
        master_weights=master,
        optimizer_state=optimizer_state_bytes,
        activations=activation_bytes(shape, setup),
    )
