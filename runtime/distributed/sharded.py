"""Sharded updates: each rank updates only the blocks it owns, then all ranks gather the results.

As in Distributed Shampoo's DDP distributor, a rank holds optimizer state for
its own blocks only (about 1/N of it), runs their hot path and refreshes, and
the updated parameter blocks are all-gathered after every step, so roots and
bases never move, updates do. 1-D parameters (the AdamW fallback) are updated
by every rank alike: their gradients are identical after the all-reduce and
their update is cheaper than moving it.

The gather packs each rank's owned blocks, in the optimizer's block order,
into one flat buffer per dtype (padded to the largest rank's), runs one
``all_gather`` per dtype on the default group and copies every other rank's
blocks into the parameters in place. Every rank ends the step with bitwise
the same parameters: the owner's values, copied.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
import torch.distributed as dist

from runtime.blocking import Block, block_view, matrix_view
from runtime.distributed.context import DistContext
from traces.recorder import Recorder
from traces.schema import Category

GATHER_TRACK = "allgather"


class ShardedGather:
    """The all-gather of owned parameter blocks after each step."""

    def __init__(
        self,
        ctx: DistContext,
        owners: dict[str, int],
        blocks: Sequence[Block],
        params: Sequence[torch.Tensor],
        recorder: Recorder,
        buffer_device: torch.device,
    ) -> None:
        self.ctx = ctx
        self._recorder = recorder
        self._device = buffer_device
        self._params = params
        # per dtype, per rank: the blocks that rank owns, in block order
        self._owned: dict[torch.dtype, list[list[Block]]] = defaultdict(
            lambda: [[] for _ in range(ctx.world_size)]
        )
        for block in blocks:
            if block.is_matrix:
                dtype = params[block.param_index].dtype
                self._owned[dtype][owners[block.id]].append(block)

    def _view(self, block: Block) -> torch.Tensor:
        return block_view(matrix_view(self._params[block.param_index].data, block), block)

    def gather(self, step: int) -> None:
        """Replace every block this rank does not own with its owner's updated values."""
        for dtype in sorted(self._owned, key=str):
            per_rank = self._owned[dtype]
            sizes = [sum(b.numel for b in owned) for owned in per_rank]
            length = max(sizes)
            if length == 0:
                continue
            mine = per_rank[self.ctx.rank]
            flat = torch.zeros(length, dtype=dtype, device=self._device)
            offset = 0
            for block in mine:
                n = block.numel
                flat[offset : offset + n].copy_(self._view(block).reshape(-1))
                offset += n
            out = [torch.empty_like(flat) for _ in range(self.ctx.world_size)]
            start = self._recorder.clock()
            dist.all_gather(out, flat)
            nbytes = length * flat.element_size() * self.ctx.world_size
            self._recorder.add_span(
                "allgather",
                Category.COLLECTIVE,
                start,
                self._recorder.clock(),
                step=step,
                nbytes=nbytes,
                detail=f"{dtype} blocks (group default)",
                track=GATHER_TRACK,
            )
            for rank, owned in enumerate(per_rank):
                if rank == self.ctx.rank:
                    continue
                offset = 0
                for block in owned:
                    n = block.numel
                    view = self._view(block)
                    view.copy_(out[rank][offset : offset + n].reshape(view.shape).to(view.device))
                    offset += n
