"""What owning a block costs, per update mode: the ``BlockWork`` that ``assign_owners`` balances.

The runtime's optimizer and the simulator's data-parallel replay both price a
model's blocks with this function, so that a projection or a replay of N ranks
gives every rank the blocks the runtime would give it (a test checks the
optimizer's own list against it).

- *replicated*: a block's owner computes its refresh (~n³ per factor, §8)
  and holds, while it runs, the snapshot of its factors and the shadow
  result; blocks with nothing to refresh are not placed. ``result_bytes`` is
  what crosses the network (the slots a refresh replaces).
- *sharded*: a block's owner runs its whole update: the hot path every step
  and the refresh every f steps, and holds all of its state.

Standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable

from runtime.plan.costmodel import CostConfig, block_hot_path_flops, block_refresh_flops
from runtime.plan.kinds import SlotKind
from runtime.plan.ownership import BlockWork
from runtime.plan.spec import WORD_BYTES, BlockConfig, SlotSpec, spec_of

RESULT_KINDS = frozenset({SlotKind.BASIS, SlotKind.ROOT})
"""Slots a refresh replaces: its shadow result, and what a publication moves."""


def ownership_work(
    optimizer: str,
    blocks: Iterable[tuple[str, int, int]],
    config: BlockConfig,
    cost: CostConfig,
    mode: str,
    element_bytes: int = WORD_BYTES,
) -> list[BlockWork]:
    """The work of each matrix block ``(id, rows, cols)`` under update ``mode``."""
    spec = spec_of(optimizer)
    out = []
    for block_id, rows, cols in blocks:
        slots = spec.slots(rows, cols, config)
        if mode == "sharded":
            flops = block_hot_path_flops(rows, cols, cost)
            flops += block_refresh_flops(rows, cols, cost) / config.precondition_frequency
            out.append(BlockWork(block_id, flops, _bytes(slots, element_bytes)))
            continue
        if not spec.has_refresh(rows, cols, config):
            continue
        result = _bytes(slots, element_bytes, RESULT_KINDS)
        factors = _bytes(slots, element_bytes, frozenset({SlotKind.FACTOR}))
        flops = block_refresh_flops(rows, cols, cost)
        out.append(BlockWork(block_id, flops, factors + 2 * result, result_bytes=result))
    return out


def _bytes(
    slots: tuple[SlotSpec, ...], element_bytes: int, kinds: frozenset[SlotKind] | None = None
) -> int:
    return sum(s.nbytes(element_bytes) for s in slots if kinds is None or s.kind in kinds)
