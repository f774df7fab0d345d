"""Optimizer state as a placement policy sees it: slots with bytes, tiers and next use.

The runtime's tiered store (``runtime.tiers``) describes every tensor of every
block's state to its placement policy as a ``SlotInfo``; this module builds
the same description for a simulated workload, so that the runtime's policy
objects (``runtime.policies``) decide here what they decide on real tensors.

Slot names, kinds and shapes come from the plan (``runtime.plan.spec``), the
same description the runtime's state classes are checked against: fp32
words of 4 bytes, a side longer than the rotation limit carries no factor
and no basis, Shampoo's ``root_failures`` counter is 8 bytes. A workload
block that stands for ``count`` identical blocks (one per layer) has slots
``count`` times as large; its copies are staged together.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from runtime.plan.costmodel import CostConfig, Optimizer
from runtime.plan.spec import spec_of
from runtime.policies.placement import (
    Move,
    PlacementPolicy,
    SlotInfo,
    SlotKind,
    apply_moves,
    tier_bytes,
)
from traces.schema import Tier

UNLIMITED_BYTES = 1 << 62
"""The runtime's budget when none is given (``BlockedOptimizer._make_tiered_store``)."""


@dataclass(frozen=True)
class SlotBytes:
    """One tensor of a block's state: its field name in the runtime's state class, kind, size."""

    slot: str
    kind: SlotKind
    nbytes: int


@dataclass(frozen=True)
class Occupancy:
    """Device memory held by something other than optimizer state during some steps.

    Activations of a longer sequence, a co-located job, a fragmentation spike:
    whatever the runtime's measured free memory (``torch.cuda.mem_get_info``)
    would see. Steps are inclusive, 1-based.
    """

    first_step: int
    last_step: int
    nbytes: int

    def __post_init__(self) -> None:
        if not 1 <= self.first_step <= self.last_step or self.nbytes < 0:
            raise ValueError(f"occupancy needs 1 <= first <= last step and bytes >= 0: {self}")


@dataclass(frozen=True)
class MemoryBudget:
    """What the policy may use: budgets per memory, whether NVMe is there, what else is held.

    ``untiered_device_bytes`` is optimizer state that is not in the tiered
    store (the AdamW fallback of 1-D parameters in a projection) and always
    rests on the device; it counts against the device budget.
    """

    device_budget_bytes: int = UNLIMITED_BYTES
    host_budget_bytes: int = UNLIMITED_BYTES
    nvme_available: bool = False
    untiered_device_bytes: int = 0
    device_occupancy: tuple[Occupancy, ...] = ()

    def __post_init__(self) -> None:
        if self.device_budget_bytes <= 0 or self.host_budget_bytes <= 0:
            raise ValueError("memory budgets must be positive byte counts")

    def occupied_bytes(self, step: int) -> int:
        """Device bytes held by others while ``step`` runs."""
        return sum(o.nbytes for o in self.device_occupancy if o.first_step <= step <= o.last_step)


def block_slot_bytes(
    rows: int,
    cols: int,
    optimizer: Optimizer | str,
    *,
    count: int = 1,
    max_precond_dim: int | str | None = "reference",
    grafting: bool = True,
) -> tuple[SlotBytes, ...]:
    """The slots of one rows × cols block (times ``count``), in the runtime's field order.

    ``max_precond_dim`` and ``grafting`` mean what they mean in ``CostConfig``.
    """
    config = CostConfig(Optimizer(optimizer), max_precond_dim=max_precond_dim, grafting=grafting)  # type: ignore[arg-type]
    slots = spec_of(config.optimizer.value).slots(rows, cols, config.block_config())
    return tuple(SlotBytes(s.name, s.kind, s.nbytes() * count) for s in slots)


class SlotTable:
    """Where every slot rests, kept as the runtime's store keeps it.

    Slots start on their policy's ``home`` (``TieredStateStore.put``) and change
    tier only by the moves a ``place`` call returns. Every slot of a block is
    used in every step, so at the boundary before step t each slot's
    ``next_use_step`` is t, as in ``TieredStateStore.slot_infos``;
    ``last_use_step`` is the step before it (None before the first step).
    """

    def __init__(
        self, blocks: Iterable[tuple[str, Sequence[SlotBytes]]], policy: PlacementPolicy
    ) -> None:
        self._slots: list[SlotInfo] = []
        for block, slots in blocks:
            for s in slots:
                info = SlotInfo(block, s.slot, s.kind, s.nbytes, Tier.DEVICE)
                self._slots.append(replace(info, tier=policy.home(info)))

    def __len__(self) -> int:
        return len(self._slots)

    def infos(self, step: int) -> list[SlotInfo]:
        """Every slot as the policy sees it at the boundary before ``step``."""
        last = step - 1 if step > 1 else None
        return [_with_use(s, step, last) for s in self._slots]

    def apply(self, moves: Iterable[Move]) -> None:
        self._slots = apply_moves(self._slots, moves)

    def tier_bytes(self) -> dict[Tier, int]:
        return tier_bytes(self._slots)

    def total_bytes(self) -> int:
        return sum(s.nbytes for s in self._slots)


def _with_use(slot: SlotInfo, next_use: int, last_use: int | None) -> SlotInfo:
    """``slot`` with new use steps, without validating it again.

    Every field but the two steps comes from a ``SlotInfo`` that was validated
    when it was built; ``dataclasses.replace`` would check them again for every
    slot at every step, which was most of a large simulation's time.
    """
    out = object.__new__(SlotInfo)
    out.__dict__.update(slot.__dict__, next_use_step=next_use, last_use_step=last_use)
    return out
