"""Pressure placement: lifecycle, plus watermarks on free device and host memory.

The policy (``PressurePlacement``) and its planning (``_PressurePlan``): which
slots to evict when a memory runs short, in what order, and when to promote
them back. The static rules it builds on are in ``runtime.policies.static``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from runtime.policies.slots import (
    MIB,
    TIER_RANK,
    MemoryView,
    Move,
    SlotInfo,
    format_bytes,
)
from runtime.policies.static import LifecyclePlacement, _cost, _Plan
from traces.schema import Tier

DEFAULT_LOW_WATERMARK_BYTES = 512 * MIB
DEFAULT_HIGH_WATERMARK_BYTES = 1024 * MIB


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
        plan = _PressurePlan(self, slots, view)
        plan.go_home(demote_only=True)
        pressed = plan.relieve(self.low_watermark_bytes)
        plan.promote(self.high_watermark_bytes, pressed)
        return plan.moves()


class _PressurePlan(_Plan):
    """The working placement of one pressure ``place`` call: eviction and promotion."""

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
                f"pressure: {label} free {format_bytes(free)} < low watermark {format_bytes(low)};"
                f" next use {_when(s, self.view.step)}, furthest first"
            )
            self.move(key, dst, reason + _cost(s.nbytes, src, dst, self.view))
            moved = True
        return moved

    def promote(self, high: int, pressed: set[str]) -> None:
        below = [
            k
            for k in self.slots
            if TIER_RANK[self.tier[k]] > TIER_RANK[self.policy.home(self.slots[k])]
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
                f" {format_bytes(self.headroom(memory))} >= high watermark {format_bytes(high)} + {format_bytes(s.nbytes)};"
                f" next use {_when(s, self.view.step)}, nearest first"
            )
            self.move(key, dst, reason + _cost(s.nbytes, src, dst, self.view))


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
