"""Where each piece of optimizer state rests, and when it moves (DESIGN.md, "Tiered optimizer state").

A *slot* is one tensor of one block's state (``SlotInfo``). Between uses a slot
*rests* on one tier: device memory, host memory or the NVMe spill directory.
A placement policy answers three questions, and the runtime (real tensors) and
the simulator (simulated resources) execute the answers in the same way:

- ``home(slot)``: the tier the slot rests on from the start.
- ``access(slot, step)``: how the device gets at the slot for its block's update
  in ``step``: not at all, already resident, in place (unified memory, or a
  coherent link), or a staged copy fetched before the update, written back
  after it when the update writes the slot, and freed right after.
  ``needed_on_device`` says whether the slot occupies device memory during the
  update; executors prefetch the ones resting elsewhere.
- ``place(slots, view)``: at a step boundary, the moves that change where slots
  rest, each with its reason, to be applied in order before ``view.step`` runs.

Steps: ``MemoryView.step`` is the step about to run, and a slot is used in step
t when its ``next_use_step`` is t. Sizes are bytes. On unified memory, device
and host are one physical memory: "device" and "host" are then accounting
labels (executors label each slot with ``home``), no policy moves a slot
between them, and only the NVMe tier frees memory.

Policies are pure and frozen: a decision depends only on the slots and the
view, so a replay, a simulated what-if and every rank reach the same decisions.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Protocol, runtime_checkable

from traces.schema import Tier

MIB = 1 << 20
DEFAULT_LOW_WATERMARK_BYTES = 512 * MIB
DEFAULT_HIGH_WATERMARK_BYTES = 1024 * MIB


class SlotKind(str, Enum):
    """How a slot is used; the first four mirror ``runtime.state.SlotKind`` (same values)."""

    FACTOR = "factor"  # read and written by the device every step (L, R, S_L, S_R)
    BASIS = "basis"  # read every step, written only when a refresh is installed (Q_L, Q_R)
    ROOT = "root"  # read every step, written only when a refresh is installed (L̃, R̃)
    MOMENT = "moment"  # read and written every step (M, V, d)
    SNAPSHOT = "snapshot"  # the factors of a version, read by a host worker only
    SHADOW = "shadow"  # a refresh result waiting for its install step


DEVICE_KINDS = frozenset({SlotKind.FACTOR, SlotKind.BASIS, SlotKind.ROOT, SlotKind.MOMENT})
"""The kinds the device optimizer computes on in its block's update."""
WRITTEN_KINDS = frozenset({SlotKind.FACTOR, SlotKind.MOMENT})
"""The kinds the device writes at every use (the others are read-only there)."""


class LinkKind(str, Enum):
    """How the CPU and the GPU reach each other's memory (``simulator.profiles.LinkKind``'s values)."""

    PCIE = "pcie"  # separate memories, copies cross PCIe
    NVLINK_C2C = "nvlink-c2c"  # separate memories, coherent chip-to-chip link (GH200)
    UNIFIED = "unified"  # one physical memory (GB10)


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


_RANK = {Tier.DEVICE: 0, Tier.HOST: 1, Tier.NVME: 2}


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


@dataclass(frozen=True)
class _Placement:
    """Rules shared by the policies: access from the resting tier, and moves toward home."""

    link: LinkKind = field(default=LinkKind.PCIE, kw_only=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "link", LinkKind(self.link))

    @property
    def name(self) -> str:
        raise NotImplementedError

    def home(self, slot: SlotInfo) -> Tier:
        raise NotImplementedError

    def _home_reason(self, slot: SlotInfo) -> str:
        raise NotImplementedError

    def _in_place(self, slot: SlotInfo) -> bool:
        """Whether the device reaches this host-resting slot in place over a separate-memory link."""
        return False

    def _writes_back(self, slot: SlotInfo) -> bool:
        return slot.kind in WRITTEN_KINDS

    def _access_on(self, slot: SlotInfo, tier: Tier, step: int) -> Access:
        if not slot.used_in(step):
            return Access.NONE
        if tier is Tier.DEVICE:
            return Access.RESIDENT
        if tier is Tier.HOST and (self.link is LinkKind.UNIFIED or self._in_place(slot)):
            return Access.IN_PLACE
        return Access.FETCH_WRITE_BACK if self._writes_back(slot) else Access.FETCH

    def access(self, slot: SlotInfo, step: int) -> Access:
        return self._access_on(slot, slot.tier, step)

    def needed_on_device(self, slot: SlotInfo, step: int) -> bool:
        return self.access(slot, step).occupies_device

    def _check(self, view: MemoryView) -> None:
        if view.link is not self.link:
            raise ValueError(
                f"placement {self.name} decides for a {self.link.value} link, but the view is of"
                f" a {view.link.value} machine; build the policy with link={view.link.value!r}"
            )

    def place(self, slots: Sequence[SlotInfo], view: MemoryView) -> list[Move]:
        self._check(view)
        plan = _Plan(self, slots, view)
        plan.go_home(demote_only=False)
        return plan.moves()


@dataclass(frozen=True)
class DevicePlacement(_Placement):
    """The reference: every slot rests on the device."""

    @property
    def name(self) -> str:
        return "device"

    def home(self, slot: SlotInfo) -> Tier:
        return Tier.DEVICE

    def _home_reason(self, slot: SlotInfo) -> str:
        return "device: every slot rests on the device (the reference)"


@dataclass(frozen=True)
class HostPlacement(_Placement):
    """Static offload: preconditioner state rests on the host, moments on the device.

    Every used preconditioner slot is fetched for its block's update and
    written back after it, read-only or not (ZeRO-Offload's static rule; it
    does not know which slots the update wrote). Unified memory needs no copy.
    """

    @property
    def name(self) -> str:
        return "host"

    def home(self, slot: SlotInfo) -> Tier:
        return Tier.DEVICE if slot.kind is SlotKind.MOMENT else Tier.HOST

    def _home_reason(self, slot: SlotInfo) -> str:
        where = "the device" if self.home(slot) is Tier.DEVICE else "the host"
        return f"host: {slot.kind.value} slots rest on {where} (static offload)"

    def _writes_back(self, slot: SlotInfo) -> bool:
        return True


@dataclass(frozen=True)
class LifecyclePlacement(_Placement):
    """By lifecycle: no preconditioner matrix on the device between uses.

    Moments (read and written every step) rest on the device, so the bytes
    resting there are those of AdamW's moments. Factors, bases, roots,
    snapshots and shadows rest on the host, and a block's matrices visit the
    device only for its own update. Over PCIe they are staged: factors are
    written back after the update, bases and roots (written only at an install,
    which swaps the host copy) are just freed. Over NVLink-C2C, slots the update
    writes are accessed in place: it streams each byte across the link once each
    way, as a fetch and write-back would, without a device copy; bases and roots,
    GEMM inputs re-read tile by tile, are still staged once per use. On unified
    memory nothing is copied.
    """

    @property
    def name(self) -> str:
        return "lifecycle"

    def home(self, slot: SlotInfo) -> Tier:
        return Tier.DEVICE if slot.kind is SlotKind.MOMENT else Tier.HOST

    def _home_reason(self, slot: SlotInfo) -> str:
        why = {
            SlotKind.MOMENT: "rests on the device: read and written every step",
            SlotKind.FACTOR: "rests on the host between uses: written every step",
            SlotKind.BASIS: "rests on the host between uses: written only at installs",
            SlotKind.ROOT: "rests on the host between uses: written only at installs",
            SlotKind.SNAPSHOT: "rests on the host: read by host workers only",
            SlotKind.SHADOW: "rests on the host until its install",
        }[slot.kind]
        return f"{self.name}: {slot.kind.value} {why}"

    def _in_place(self, slot: SlotInfo) -> bool:
        return self.link is LinkKind.NVLINK_C2C and slot.kind in WRITTEN_KINDS


@dataclass(frozen=True)
class PressurePlacement(LifecyclePlacement):
    """Lifecycle, plus watermarks on the free device and host memory.

    The device's free memory counts a reserve for staging the largest block's
    copies in the coming step. When it falls under ``low_watermark_bytes``, slots
    resting on the device are evicted to the host (to NVMe when the host cannot
    hold them), the one whose next use is furthest first, ties broken by
    (nbytes desc, block, slot), until it is back over the low watermark. When
    the host's free memory falls under the same low watermark and NVMe is
    available, host-resting slots spill to NVMe in the same order. A slot
    resting below its home is promoted one tier up (nearest next use first)
    only while the free memory stays at or over ``high_watermark_bytes`` after
    it, and never on a tier that was under pressure in the same call: the gap
    between the watermarks is the hysteresis that keeps it from thrashing.
    """

    low_watermark_bytes: int = DEFAULT_LOW_WATERMARK_BYTES
    high_watermark_bytes: int = DEFAULT_HIGH_WATERMARK_BYTES

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.low_watermark_bytes <= self.high_watermark_bytes:
            raise ValueError(
                "pressure placement needs 0 <= low watermark <= high watermark, got"
                f" {self.low_watermark_bytes} and {self.high_watermark_bytes} bytes"
            )

    @property
    def name(self) -> str:
        return f"pressure:{_mib(self.low_watermark_bytes)}:{_mib(self.high_watermark_bytes)}"

    def place(self, slots: Sequence[SlotInfo], view: MemoryView) -> list[Move]:
        self._check(view)
        plan = _Plan(self, slots, view)
        plan.go_home(demote_only=True)
        pressed = plan.relieve(self.low_watermark_bytes)
        plan.promote(self.high_watermark_bytes, pressed)
        return plan.moves()


class _Plan:
    """The working placement of one ``place`` call: tiers, free bytes per memory, staging."""

    def __init__(self, policy: _Placement, slots: Sequence[SlotInfo], view: MemoryView) -> None:
        self.policy, self.view = policy, view
        self.slots = {s.key: s for s in slots}
        if len(self.slots) != len(slots):
            raise ValueError("place() was given the same (block, slot) twice")
        self.tier = {k: s.tier for k, s in self.slots.items()}
        self.reasons: dict[tuple[str, str], str] = {}
        self.unified = view.link is LinkKind.UNIFIED
        resting = tier_bytes(slots)
        if self.unified:  # one pool: the device budget, holding what rests on either label
            in_pool = resting[Tier.DEVICE] + resting[Tier.HOST]
            measured = [m for m in (view.device_free_bytes, view.host_free_bytes) if m is not None]
            self.free = {"device": min([view.device_budget_bytes - in_pool, *measured])}
        else:
            self.free = {
                "device": _free(
                    view.device_budget_bytes, resting[Tier.DEVICE], view.device_free_bytes
                ),
                "host": _free(view.host_budget_bytes, resting[Tier.HOST], view.host_free_bytes),
            }
        self.staged: dict[str, int] = defaultdict(int)
        for k, s in self.slots.items():
            self.staged[s.block] += self._staged_bytes(k, self.tier[k])
        self._reserve = max(self.staged.values(), default=0)

    def _memory(self, tier: Tier) -> str | None:
        if tier is Tier.NVME:
            return None
        return "device" if self.unified or tier is Tier.DEVICE else "host"

    def _staged_bytes(self, key: tuple[str, str], tier: Tier) -> int:
        s = self.slots[key]
        return s.nbytes if self.policy._access_on(s, tier, self.view.step).staged else 0

    def headroom(self, memory: str) -> int:
        """Free bytes of a memory, less the staging reserve on the device's."""
        return self.free[memory] - (self._reserve if memory == "device" else 0)

    def move(self, key: tuple[str, str], dst: Tier, reason: str) -> None:
        src, n = self.tier[key], self.slots[key].nbytes
        for tier, sign in ((src, 1), (dst, -1)):
            memory = self._memory(tier)
            if memory is not None:
                self.free[memory] += sign * n
        block = key[0]
        before = self.staged[block]
        self.staged[block] += self._staged_bytes(key, dst) - self._staged_bytes(key, src)
        if self.staged[block] >= self._reserve:
            self._reserve = self.staged[block]
        elif before == self._reserve:
            self._reserve = max(self.staged.values(), default=0)
        self.tier[key] = dst
        earlier = self.reasons.pop(key, None)
        self.reasons[key] = reason if earlier is None else f"{earlier}; then {reason}"

    def go_home(self, *, demote_only: bool) -> None:
        """Move slots toward their home (only downward when ``demote_only``)."""
        for key in sorted(self.slots, key=lambda k: (self.tier[k] is not Tier.DEVICE, k)):
            s, tier = self.slots[key], self.tier[key]
            home = self.policy.home(s)
            if tier is home or (demote_only and _RANK[home] < _RANK[tier]):
                continue
            if self.unified and Tier.NVME not in (tier, home):
                continue  # one memory: "device" and "host" are labels, not places
            reason = self.policy._home_reason(s)
            if demote_only and home is Tier.HOST and self.free["host"] < s.nbytes:
                if not self.view.nvme_available:
                    continue
                reason += f"; host free {_fmt(self.free['host'])} cannot hold it: NVMe"
                home = Tier.NVME
            self.move(key, home, reason + _cost(s.nbytes, tier, home, self.view))

    def relieve(self, low: int) -> set[str]:
        """Evict until every memory is over the low watermark; the memories that were not."""
        pressed: set[str] = set()
        progress = True
        while progress:  # an NVMe spill can add staging on the device: repeat until stable
            progress = False
            for memory in self.free:
                if self.headroom(memory) >= low:
                    continue
                pressed.add(memory)
                progress |= self._evict(memory, low)
        return pressed

    def _evict(self, memory: str, low: int) -> bool:
        label = "unified memory" if self.unified else memory
        resting = [k for k in self.slots if self._memory(self.tier[k]) == memory]
        moved = False
        for key in sorted(resting, key=lambda k: _evict_order(self.slots[k])):
            free = self.headroom(memory)
            if free >= low:
                break
            s, src = self.slots[key], self.tier[key]
            dst = Tier.HOST if memory == "device" and not self.unified else Tier.NVME
            if dst is Tier.HOST and self.free["host"] < s.nbytes:
                dst = Tier.NVME
            if dst is Tier.NVME and not self.view.nvme_available:
                continue
            reason = (
                f"pressure: {label} free {_fmt(free)} < low watermark {_fmt(low)};"
                f" next use {_when(s, self.view.step)}, furthest first"
            )
            self.move(key, dst, reason + _cost(s.nbytes, src, dst, self.view))
            moved = True
        return moved

    def promote(self, high: int, pressed: set[str]) -> None:
        below = [
            k for k in self.slots if _RANK[self.tier[k]] > _RANK[self.policy.home(self.slots[k])]
        ]
        for key in sorted(below, key=lambda k: _promote_order(self.slots[k])):
            s, src = self.slots[key], self.tier[key]
            if self.unified:
                dst = self.policy.home(s)
            else:
                dst = Tier.HOST if src is Tier.NVME else Tier.DEVICE
            memory = self._memory(dst)
            if memory is None or memory in pressed or self.headroom(memory) - s.nbytes < high:
                continue
            reason = (
                f"promote: {'unified memory' if self.unified else memory} free"
                f" {_fmt(self.headroom(memory))} >= high watermark {_fmt(high)} + {_fmt(s.nbytes)};"
                f" next use {_when(s, self.view.step)}, nearest first"
            )
            self.move(key, dst, reason + _cost(s.nbytes, src, dst, self.view))

    def moves(self) -> list[Move]:
        out = []
        for key, reason in self.reasons.items():
            s, dst = self.slots[key], self.tier[key]
            if dst is not s.tier:
                out.append(Move(s.block, s.slot, s.tier, dst, reason, s.nbytes))
        return out


def _free(budget: int, resting: int, measured: int | None) -> int:
    free = budget - resting
    return free if measured is None else min(free, measured)


def _evict_order(s: SlotInfo) -> tuple[int, int, int, str, str]:
    unscheduled = s.next_use_step is None
    return (0 if unscheduled else 1, -(s.next_use_step or 0), -s.nbytes, s.block, s.slot)


def _promote_order(s: SlotInfo) -> tuple[int, int, int, str, str]:
    unscheduled = s.next_use_step is None
    return (1 if unscheduled else 0, s.next_use_step or 0, s.nbytes, s.block, s.slot)


def _when(s: SlotInfo, step: int) -> str:
    if s.next_use_step is None:
        return "not scheduled"
    return f"in {s.next_use_step - step} steps"


def _mib(n: int) -> str:
    """Bytes as MiB, exactly: ``parse_placement`` reads the same number of bytes back."""
    return str(n // MIB) if n % MIB == 0 else repr(n / MIB)


def _fmt(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", MIB), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n:.0f} B"


def _cost(nbytes: int, src: Tier, dst: Tier, view: MemoryView) -> str:
    """The link time of a device<->host move, when the view knows the bandwidth."""
    if view.link is LinkKind.UNIFIED or Tier.DEVICE not in (src, dst):
        return ""
    rate = view.h2d_bytes_per_s if dst is Tier.DEVICE else view.d2h_bytes_per_s
    return f" (~{nbytes / rate * 1e3:.3g} ms over {view.link.value})" if rate > 0 else ""


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


def peak_device_bytes(slots: Sequence[SlotInfo], policy: PlacementPolicy, step: int) -> int:
    """Device memory the step needs: resting bytes plus the largest block's staged copies.

    On unified memory the device's memory is the host's, so host-resting bytes count too.
    """
    staged: dict[str, int] = defaultdict(int)
    for s in slots:
        if policy.access(s, step).staged:
            staged[s.block] += s.nbytes
    resting = tier_bytes(slots)
    shared = resting[Tier.HOST] if policy.link is LinkKind.UNIFIED else 0
    return resting[Tier.DEVICE] + shared + max(staged.values(), default=0)


@dataclass(frozen=True)
class Traffic:
    """Bytes one step moves across the CPU-GPU link for its updates (not counting moves)."""

    h2d_bytes: int = 0
    d2h_bytes: int = 0


def step_traffic(slots: Iterable[SlotInfo], policy: PlacementPolicy, step: int) -> Traffic:
    """Link bytes of the step's staging and in-place accesses (none on unified memory)."""
    h2d = d2h = 0
    for s in slots:
        access = policy.access(s, step)
        if access.staged or (access is Access.IN_PLACE and policy.link is not LinkKind.UNIFIED):
            h2d += s.nbytes
            written = access is Access.FETCH_WRITE_BACK or (
                access is Access.IN_PLACE and s.kind in WRITTEN_KINDS
            )
            d2h += s.nbytes if written else 0
    return Traffic(h2d, d2h)


def check_budget(slots: Iterable[SlotInfo], device_budget_bytes: int) -> None:
    """Refuse a device budget smaller than one block's hot working set, before training starts.

    A block's hot working set is every slot its update computes on (factors,
    bases, roots, moments): staged, they are all on the device at once.
    """
    hot: dict[str, list[SlotInfo]] = defaultdict(list)
    for s in slots:
        if s.kind in DEVICE_KINDS:
            hot[s.block].append(s)
    sizes = {block: sum(s.nbytes for s in ss) for block, ss in hot.items()}
    over = sorted(
        (b for b, n in sizes.items() if n > device_budget_bytes), key=lambda b: (-sizes[b], b)
    )
    if not over:
        return
    block, needed = over[0], sizes[over[0]]
    names = ", ".join(s.slot for s in hot[block])
    more = f"; {len(over) - 1} more block(s) do not fit either" if len(over) > 1 else ""
    raise ValueError(
        f"device budget {_fmt(device_budget_bytes)} ({device_budget_bytes} bytes) is smaller than"
        f" the hot working set of block {block!r}: {_fmt(needed)} ({needed} bytes: {names}) must"
        f" be on the device during its update{more}"
    )


def parse_placement(text: str, link: LinkKind | str = LinkKind.PCIE) -> PlacementPolicy:
    """Parse ``device``, ``host``, ``lifecycle``, ``pressure`` or ``pressure:LOW_MiB:HIGH_MiB``."""
    spelled = text.strip().lower()
    kind, _, args = spelled.partition(":")
    simple = {"device": DevicePlacement, "host": HostPlacement, "lifecycle": LifecyclePlacement}
    if kind in simple and not args:
        return simple[kind](link=LinkKind(link))
    if kind == "pressure":
        if not args:
            return PressurePlacement(link=LinkKind(link))
        low, _, high = args.partition(":")
        try:
            low_mib, high_mib = float(low), float(high)
        except ValueError:
            low_mib = high_mib = math.nan
        if math.isfinite(low_mib) and math.isfinite(high_mib):
            return PressurePlacement(
                round(low_mib * MIB), round(high_mib * MIB), link=LinkKind(link)
            )
    raise ValueError(
        f"unknown placement policy {text!r}; expected device, host, lifecycle, pressure"
        " or pressure:LOW_MiB:HIGH_MiB"
    )
