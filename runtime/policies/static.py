"""Static placement: where each slot rests is fixed by its kind (device, host, lifecycle).

``_Placement`` holds the rules every policy shares: how the device reaches a
slot from the tier it rests on (``access``), and ``place`` as a move of every
slot toward its home. ``_Plan`` is the working placement of one ``place``
call (tiers, free bytes per memory, staging per block), which
``runtime.policies.pressure`` extends with eviction and promotion.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from runtime.policies.slots import (
    TIER_RANK,
    WRITTEN_KINDS,
    Access,
    LinkKind,
    MemoryView,
    Move,
    SlotInfo,
    SlotKind,
    format_bytes,
    tier_bytes,
)
from traces.schema import Tier


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
            if tier is home or (demote_only and TIER_RANK[home] < TIER_RANK[tier]):
                continue
            if self.unified and Tier.NVME not in (tier, home):
                continue  # one memory: "device" and "host" are labels, not places
            reason = self.policy._home_reason(s)
            if demote_only and home is Tier.HOST and self.free["host"] < s.nbytes:
                if not self.view.nvme_available:
                    continue
                reason += f"; host free {format_bytes(self.free['host'])} cannot hold it: NVMe"
                home = Tier.NVME
            self.move(key, home, reason + _cost(s.nbytes, tier, home, self.view))

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


def _cost(nbytes: int, src: Tier, dst: Tier, view: MemoryView) -> str:
    """The link time of a device<->host move, when the view knows the bandwidth."""
    if view.link is LinkKind.UNIFIED or Tier.DEVICE not in (src, dst):
        return ""
    rate = view.h2d_bytes_per_s if dst is Tier.DEVICE else view.d2h_bytes_per_s
    return f" (~{nbytes / rate * 1e3:.3g} ms over {view.link.value})" if rate > 0 else ""
