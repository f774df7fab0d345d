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

This module is the one place to import placement from. The parts live in
``slots`` (the vocabulary: slots, access, views, moves), ``static`` (device,
host and lifecycle: a slot's tier fixed by its kind) and ``pressure``
(watermarks on measured free memory); the helpers executors call before and
during a run (budget check, peak memory, link traffic, parsing) are here.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from runtime.policies.pressure import (
    DEFAULT_HIGH_WATERMARK_BYTES,
    DEFAULT_LOW_WATERMARK_BYTES,
    PressurePlacement,
)
from runtime.policies.slots import (
    DEVICE_KINDS,
    MIB,
    TIER_RANK,
    WRITTEN_KINDS,
    Access,
    LinkKind,
    MemoryView,
    Move,
    PlacementPolicy,
    SlotInfo,
    SlotKind,
    apply_moves,
    format_bytes,
    link_of_gpu,
    tier_bytes,
)
from runtime.policies.static import DevicePlacement, HostPlacement, LifecyclePlacement
from traces.schema import Tier

__all__ = [
    "DEFAULT_HIGH_WATERMARK_BYTES",
    "DEFAULT_LOW_WATERMARK_BYTES",
    "DEVICE_KINDS",
    "MIB",
    "TIER_RANK",
    "WRITTEN_KINDS",
    "Access",
    "DevicePlacement",
    "HostPlacement",
    "LifecyclePlacement",
    "LinkKind",
    "MemoryView",
    "Move",
    "PlacementPolicy",
    "PressurePlacement",
    "SlotInfo",
    "SlotKind",
    "Traffic",
    "apply_moves",
    "check_budget",
    "format_bytes",
    "link_of_gpu",
    "parse_placement",
    "peak_device_bytes",
    "step_traffic",
    "tier_bytes",
]


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
        f"device budget {format_bytes(device_budget_bytes)} ({device_budget_bytes} bytes) is smaller than"
        f" the hot working set of block {block!r}: {format_bytes(needed)} ({needed} bytes: {names}) must"
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
