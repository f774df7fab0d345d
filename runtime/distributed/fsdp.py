"""FSDP2 (``fully_shard``): every rank updates the rows of every parameter it holds.

``fully_shard`` splits each parameter along its first dimension over the
ranks (``Shard(0)``): rank r holds a contiguous slice of rows, all-gathers the
whole parameter for forward and backward, and receives its slice of the
averaged gradient by reduce-scatter. The optimizer here runs on those local
slices, so its blocks never cross a shard boundary: a block is part of one
rank's rows, its factors, bases and refreshes live on that rank, and no
optimizer state or result ever moves. That is the choice of this runtime, over
assigning whole parameters to ranks, because:

- FSDP2 already decides where every row lives; blocks cut from the local
  slice keep the optimizer's memory sharded exactly as the parameters are,
  with no second placement to keep in step;
- nothing of the optimizer crosses the network (no publication, no gather):
  the reduce-scatter of FSDP is the only gradient traffic, the all-gather of
  FSDP the only parameter traffic;
- every block lives on one rank, so ranks need not agree on install steps:
  each rank's staleness rule is its own (even the adaptive one).

The price: a weight's row slices are preconditioned separately (as blocking
by rows does), so an N-rank FSDP2 run equals a single process whose
parameters are cut into the same N row slices, not an unsharded one.

Gradients reach the local slices through the optimizer's step pre-hook (the
sharded gradient's local tensor, after any clipping), and the sharded
gradients are cleared after the step, since FSDP accumulates into them.

``fully_shard`` is ``torch.distributed.fsdp.fully_shard`` from torch 2.6 and
``torch.distributed._composable.fsdp.fully_shard`` before. Tested on gloo
(CPU, torch 2.13); NCCL (CUDA) goes through the same calls but has not been
run by the tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


class FsdpUnavailable(RuntimeError):
    """This torch has no FSDP2 (``fully_shard``); one line saying so."""


def fully_shard_fn() -> Callable[..., Any]:
    """``fully_shard`` of this torch, wherever it lives."""
    try:
        from torch.distributed.fsdp import fully_shard

        return fully_shard
    except ImportError:
        pass
    try:
        from torch.distributed._composable.fsdp import fully_shard as composable

        return composable
    except ImportError:
        raise FsdpUnavailable(
            f"torch {torch.__version__} has no FSDP2 (fully_shard); it needs torch 2.4 or newer"
        ) from None


def shard_model(
    model: torch.nn.Module, units: Iterable[torch.nn.Module], device_type: str
) -> torch.nn.Module:
    """``fully_shard`` each of ``units`` (e.g. the transformer blocks), then the model."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    fully_shard = fully_shard_fn()
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    for unit in units:
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def local(param: torch.Tensor) -> torch.Tensor:
    """The rows this rank holds of a sharded parameter (the tensor itself if unsharded)."""
    to_local = getattr(param, "to_local", None)
    if to_local is None:
        return param
    with torch.no_grad():
        return to_local()


def local_groups(groups: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Any]]:
    """Param groups over the local slices, and (sharded, local) pairs for ``attach``."""
    out, pairs = [], []
    for group in groups:
        slices = []
        for param in group["params"]:
            piece = local(param)
            if piece.numel() == 0:
                raise ValueError(
                    f"a parameter of shape {tuple(param.shape)} has fewer rows than there are"
                    " ranks; FSDP2 leaves this rank none of it (use fewer ranks)"
                )
            slices.append(piece)
            pairs.append((param, piece))
        out.append({**group, "params": slices})
    return out, pairs


def attach(optimizer: torch.optim.Optimizer, pairs: list[Any]) -> None:
    """Hand each sharded gradient's local rows to the optimizer, and clear it after the step."""

    def before(opt: Any, args: Any, kwargs: Any) -> None:
        for param, piece in pairs:
            grad = param.grad
            piece.grad = None if grad is None else local(grad)

    def after(opt: Any, args: Any, kwargs: Any) -> None:
        for param, _ in pairs:
            param.grad = None

    optimizer.register_step_pre_hook(before)
    optimizer.register_step_post_hook(after)
