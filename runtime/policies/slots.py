"""The vocabulary of placement: slots, tiers, how the device reaches a slot, views, moves.

Everything a placement policy decides from (``SlotInfo``, ``MemoryView``) and
everything it answers (``Access``, ``Move``), with the bookkeeping executors
share (``tier_bytes``, ``apply_moves``). The policies themselves are in
``runtime.policies.static`` and ``runtime.policies.pressure``; the overview is
``runtime.policies.placement``. Standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Protocol, runtime_checkable

from runtime.plan.kinds import LinkKind, SlotKind
from traces.schema import Tier

MIB = 1 << 20


DEVICE_KINDS = frozenset({SlotKind.FACTOR, SlotKind.BASIS, SlotKind.ROOT, SlotKind.MOMENT})
"""The kinds the device optimizer computes on in its block's update."""
WRITTEN_KINDS = frozenset({SlotKind.FACTOR, SlotKind.MOMENT})
"""The kinds the device writes at every use (the others are read-only there)."""


class Access(str, Enum):
    """How the device gets at a slot for one use."""

    NONE = "none"  # not used by the device in this step
    RESIDENT = "resident"  # rests on the device
    IN_PLACE = "in-place"  # read (and written) where it rests: unified memory or coherent link
    FETCH = "fetch"  # staged onto the device before the update, freed after it
    FETCH_WRITE_BACK = "fetch-write-back"  # staged, written back to its tier after, freed

    @property
    def staged(self) -> bool:
        return self in (Access.FETCH, Access.FETCH_WRITE_BACK)

    @property
    def occupies_device(self) -> bool:
        return self is Access.RESIDENT or self.staged


def link_of_gpu(name: str) -> LinkKind:
    """The CPU-GPU link of a GPU, by its device name: the runtime's choice, which replay reads back."""
    lowered = name.lower()
    if "gh200" in lowered:
        return LinkKind.NVLINK_C2C
    if "gb10" in lowered:
        return LinkKind.UNIFIED
    return LinkKind.PCIE


TIER_RANK = {Tier.DEVICE: 0, Tier.HOST: 1, Tier.NVME: 2}
"""Tiers from fastest to slowest: a move to a higher rank is an eviction."""


@dataclass(frozen=True)
class SlotInfo:
    """One slot as a policy sees it; ``kind`` and ``tier`` accept their string values.

    ``reads_per_step`` and ``writes_per_step`` count the device optimizer's
    accesses per step, for executors' cost models; placement decides by
    ``kind``, which fixes the access pattern.
    """

    block: str
    slot: str
    kind: SlotKind
    nbytes: int
    tier: Tier
    next_use_step: int | None = None
    last_use_step: int | None = None
    reads_per_step: float = 0.0
    writes_per_step: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", SlotKind(self.kind))
        object.__setattr__(self, "tier", Tier(self.tier))
        if self.nbytes < 0:
            raise ValueError(f"slot {self.block}.{self.slot} has negative size {self.nbytes}")

    @property
    def key(self) -> tuple[str, str]:
        return (self.block, self.slot)

    def used_in(self, step: int) -> bool:
        """Whether the device optimizer computes on this slot in ``step``."""
        return self.kind in DEVICE_KINDS and self.next_use_step == step


@dataclass(frozen=True)
class MemoryView:
    """What a policy knows of the machine at a step boundary.

    ``*_free_bytes`` are measured (None: not measured); a policy takes the
    smaller of the measured figure and the budget less the bytes resting there.
    On unified memory the pool is ``device_budget_bytes`` and both measured
    figures describe it.
    """

    step: int
    device_budget_bytes: int
    host_budget_bytes: int
    device_free_bytes: int | None = None
    host_free_bytes: int | None = None
    link: LinkKind = LinkKind.PCIE
    h2d_bytes_per_s: float = 0.0
    d2h_bytes_per_s: float = 0.0
    nvme_available: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "link", LinkKind(self.link))
        if self.device_budget_bytes < 0 or self.host_budget_bytes < 0:
            raise ValueError("memory budgets must be >= 0 bytes")


@dataclass(frozen=True)
class Move:
    """One decision: rest ``block.slot`` (``nbytes``) on ``dst`` instead of ``src``, and why."""

    block: str
    slot: str
    src: Tier
    dst: Tier
    reason: str
    nbytes: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "src", Tier(self.src))
        object.__setattr__(self, "dst", Tier(self.dst))
        if self.src is self.dst:
            raise ValueError(f"move of {self.block}.{self.slot} from {self.src.value} to itself")


@runtime_checkable
class PlacementPolicy(Protocol):
    """Decides where slots rest and how the device reaches them."""

    @property
    def name(self) -> str:
        """The policy as spelled on the command line (``lifecycle``, ``pressure:512:1024``)."""
        ...

    @property
    def link(self) -> LinkKind:
        """The link of the machine the policy decides for."""
        ...

    def home(self, slot: SlotInfo) -> Tier:
        """The tier the slot rests on from the start."""
        ...

    def access(self, slot: SlotInfo, step: int) -> Access:
        """How the device reaches the slot, as it rests now, for its use in ``step``."""
        ...

    def needed_on_device(self, slot: SlotInfo, step: int) -> bool:
        """Whether the slot occupies device memory during its block's update in ``step``."""
        ...

    def place(self, slots: Sequence[SlotInfo], view: MemoryView) -> list[Move]:
        """The moves to apply, in order, at the boundary before ``view.step``."""
        ...


def tier_bytes(slots: Iterable[SlotInfo]) -> dict[Tier, int]:
    """Bytes resting on each tier (every tier is a key)."""
    out = dict.fromkeys(Tier, 0)
    for s in slots:
        out[s.tier] += s.nbytes
    return out


def apply_moves(slots: Sequence[SlotInfo], moves: Iterable[Move]) -> list[SlotInfo]:
    """The slots after the moves, as an executor's bookkeeping sees them."""
    by_key = {s.key: s for s in slots}
    for m in moves:
        s = by_key.get((m.block, m.slot))
        if s is None:
            raise ValueError(f"move of unknown slot {m.block}.{m.slot}")
        if s.tier is not m.src:
            raise ValueError(
                f"move of {m.block}.{m.slot} from {m.src.value}, but it rests on {s.tier.value}"
            )
        by_key[s.key] = replace(s, tier=m.dst)
    return [by_key[s.key] for s in slots]


def format_bytes(n: float) -> str:
    """Bytes in the largest binary unit that keeps the number at or above 1 (for reasons)."""
    for unit, size in (("GiB", 1 << 30), ("MiB", MIB), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n:.0f} B"
