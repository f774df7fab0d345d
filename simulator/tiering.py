"""The runtime's tiered state store, executed on simulated resources.

``TieredState`` does with a placement policy what ``runtime.tiers.TieredStateStore``
does with it on real tensors, and leaves the same trace:

- at each step boundary it asks ``policy.place(slots, MemoryView(...))`` and runs
  every move as a transfer (a ``move`` span, then an ``evict`` or ``promote``
  event whose detail is the slot and the policy's reason), then records the
  ``state_bytes`` counter per tier;
- for each block's update it follows ``policy.access``: a staged slot is
  fetched (``fetch``) over the host-to-device copy engine, a written one is
  written back (``write_back``) over the device-to-host one after the update,
  a slot reached in place over a coherent link (NVLink-C2C) streams across it
  while the update runs, so the update lasts at least as long as that stream;
  on unified memory nothing is copied.

With ``overlap`` the fetches of a step are issued when its backward pass
starts, last layer first and only into the device memory the placement leaves
over, as the runtime's post-accumulate-grad hooks do on a GPU's copy stream; a
block's update waits only for its own fetch, or makes it when there was no room
to prefetch (a ``wait_transfer`` span when it has to wait); write-backs run behind training, and a
later fetch or move of the same slot waits for them. Without ``overlap`` every
copy is made on the training thread (fetches at the end of backward, where the
hooks make them on a CPU; write-backs after each update), so a step is the sum
of its parts: the runtime on a CPU, and the case ``static_staging`` computes in
closed form.
Moves at a step boundary block training in both cases, as they do in the
runtime.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from runtime.policies.placement import (
    TIER_RANK,
    WRITTEN_KINDS,
    Access,
    DevicePlacement,
    HostPlacement,
    LifecyclePlacement,
    LinkKind,
    MemoryView,
    PlacementPolicy,
    SlotInfo,
    SlotKind,
    apply_moves,
    peak_device_bytes,
)
from simulator.links import Copy, Leg, LinkRates, Links
from simulator.placement_model import MemoryBudget, SlotBytes, SlotTable
from traces.recorder import Recorder
from traces.schema import Category, Tier

TRAINING_TRACK = "MainThread"
_REPLACED_AT_INSTALL = frozenset({SlotKind.BASIS, SlotKind.ROOT})


@dataclass(frozen=True)
class Tiering:
    """How a simulated run tiers its optimizer state: the runtime's policy, memory, links."""

    policy: PlacementPolicy
    rates: LinkRates
    memory: MemoryBudget = field(default_factory=MemoryBudget)

    def __post_init__(self) -> None:
        if self.policy.link is not self.rates.kind:
            raise ValueError(
                f"placement {self.policy.name} decides for a {self.policy.link.value} link,"
                f" but the links are {self.rates.kind.value}"
            )


@dataclass
class _BlockPlan:
    """How one block's update reaches its slots in the coming step."""

    fetch: list[SlotInfo] = field(default_factory=list)
    write_back: list[SlotInfo] = field(default_factory=list)
    replaced_if_installed: list[SlotInfo] = field(default_factory=list)
    in_place_read_bytes: int = 0
    in_place_written_bytes: int = 0


def plan_block(slots: Sequence[SlotInfo], policy: PlacementPolicy, step: int) -> _BlockPlan:
    """The copies and in-place streams of one block's update in ``step``.

    An install replaces bases and roots; the runtime writes a replaced slot
    back to where it rests unless the update's access already writes it back.
    """
    plan = _BlockPlan()
    coherent = policy.link is LinkKind.NVLINK_C2C
    for s in slots:
        access = policy.access(s, step)
        if access.staged:
            plan.fetch.append(s)
        if access is Access.FETCH_WRITE_BACK:
            plan.write_back.append(s)
        elif s.kind in _REPLACED_AT_INSTALL and s.tier is not Tier.DEVICE:
            plan.replaced_if_installed.append(s)
        if access is Access.IN_PLACE and coherent:
            plan.in_place_read_bytes += s.nbytes
            if s.kind in WRITTEN_KINDS:
                plan.in_place_written_bytes += s.nbytes
    return plan


def _copies(name: str, slots: Sequence[SlotInfo], to_device: bool, step: int) -> list[list[Copy]]:
    """Copies grouped by route (one group per resting tier), host before NVMe."""
    groups: list[list[Copy]] = []
    for tier in (Tier.HOST, Tier.NVME):
        group = [
            Copy(
                name,
                s.block,
                s.slot,
                s.nbytes,
                tier if to_device else Tier.DEVICE,
                Tier.DEVICE if to_device else tier,
                step,
            )
            for s in slots
            if s.tier is tier
        ]
        if group:
            groups.append(group)
    return groups


class TieredState:
    """The tiered store of one simulated rank; see the module docstring."""

    def __init__(
        self,
        env: simpy.Environment,
        tiering: Tiering,
        blocks: Sequence[tuple[str, Sequence[SlotBytes]]],
        links: Links,
        recorder: Recorder,
        *,
        overlap: bool,
        steps: int,
    ) -> None:
        self.env, self.tiering, self.links, self.rec = env, tiering, links, recorder
        self.policy = tiering.policy
        self.overlap = overlap
        self.table = SlotTable(blocks, self.policy)
        self.link_bytes = np.zeros(steps, dtype=np.int64)
        self.transfer_wait_ns = np.zeros(steps, dtype=np.int64)
        self.peak_device_bytes = 0
        self._plans: dict[str, _BlockPlan] = {}
        self._floor = 0  # peak_device_bytes of the current plan
        self._fetched: dict[str, simpy.Event] = {}
        self._written: dict[tuple[str, str], simpy.Event] = {}
        self._write_queue: simpy.Store = simpy.Store(env)
        if overlap:
            env.process(self._writer())
        self._plan(1)

    # ------------------------------------------------------------ bookkeeping
    def _plan(self, step: int, infos: list[SlotInfo] | None = None) -> None:
        infos = self.table.infos(step) if infos is None else infos
        self._floor = peak_device_bytes(infos, self.policy, step)
        self.peak_device_bytes = max(self.peak_device_bytes, self._floor)
        by_block: dict[str, list[SlotInfo]] = {}
        for s in infos:
            by_block.setdefault(s.block, []).append(s)
        self._plans = {b: plan_block(ss, self.policy, step) for b, ss in by_block.items()}

    def view(self, step: int) -> MemoryView:
        """What the policy sees: budgets, and free device bytes net of everything resting there."""
        memory, rates = self.tiering.memory, self.tiering.rates
        resting = self.table.tier_bytes()
        held = resting[Tier.DEVICE] + memory.untiered_device_bytes + memory.occupied_bytes(step)
        if self.policy.link is LinkKind.UNIFIED:
            held += resting[Tier.HOST]
        return MemoryView(
            step=step,
            device_budget_bytes=memory.device_budget_bytes,
            host_budget_bytes=memory.host_budget_bytes,
            device_free_bytes=memory.device_budget_bytes - held,
            link=self.policy.link,
            h2d_bytes_per_s=rates.h2d_bytes_per_ns * 1e9,
            d2h_bytes_per_s=rates.d2h_bytes_per_ns * 1e9,
            nvme_available=memory.nvme_available,
        )

    def _count(self, copies: Sequence[Copy], index: int) -> None:
        rates = self.tiering.rates
        for c in copies:
            legs = rates.legs(c.src, c.dst)
            if Leg.H2D in legs or Leg.D2H in legs:
                self.link_bytes[index] += c.nbytes

    def _blocked(self, start: int, step: int, index: int, block: str | None, why: str) -> None:
        now = int(self.env.now)
        if now > start:
            self.transfer_wait_ns[index] += now - start
            self.rec.add_span(
                "wait_transfer",
                Category.WAIT,
                start,
                now,
                step=step,
                block=block,
                track=TRAINING_TRACK,
                detail=why,
            )

    # ---------------------------------------------------------------- copies
    def _run(self, groups: list[list[Copy]], index: int) -> Generator[Any, Any, None]:
        for group in groups:
            self._count(group, index)
            yield from self.links.copy(group)

    def _after_writes(self, slots: Sequence[SlotInfo]) -> Generator[Any, Any, None]:
        for s in slots:
            pending = self._written.get(s.key)
            if pending is not None and not pending.triggered:
                yield pending

    def _fetch(self, block: str, step: int, index: int) -> Generator[Any, Any, None]:
        plan = self._plans.get(block)
        if plan is None or not plan.fetch:
            return
        yield from self._after_writes(plan.fetch)
        yield from self._run(_copies("fetch", plan.fetch, True, step), index)

    def _writer(self) -> Generator[Any, Any, None]:
        """The device-to-host side: write-backs in the order the updates issued them."""
        while True:
            groups, index, done = yield self._write_queue.get()
            yield from self._run(groups, index)
            for event in done:
                event.succeed()

    # ------------------------------------------------------------ the steps
    def start_prefetch(self, step: int, index: int) -> None:
        """From the start of backward: stage blocks' slots as the hooks do, last layer first.

        As in the runtime (``TieredStateStore.prefetch``), a block is prefetched
        only into the device memory the placement leaves over: its budget less
        ``peak_device_bytes`` (what rests there plus one block's staging, kept
        for an update whose block was not prefetched) and what others hold.
        The blocks left out are fetched by their update, on the critical path.
        """
        if not self.overlap:
            return
        memory = self.tiering.memory
        room = (
            memory.device_budget_bytes
            - self._floor
            - memory.untiered_device_bytes
            - memory.occupied_bytes(step)
        )
        order = []
        for block, plan in reversed(self._plans.items()):
            nbytes = sum(s.nbytes for s in plan.fetch)
            if plan.fetch and nbytes <= room:
                room -= nbytes
                order.append(block)
        self._fetched = {b: self.env.event() for b in order}

        def prefetch() -> Generator[Any, Any, None]:
            for block in order:
                yield from self._fetch(block, step, index)
                self._fetched[block].succeed()

        self.env.process(prefetch())

    def stage_all(self, step: int, index: int) -> Generator[Any, Any, None]:
        """Without overlap: stage every block's slots on the training thread, in block order.

        This is the runtime's post-accumulate-grad hooks on a CPU, where there is
        no copy stream: the copies are made in backward, one after the other.
        """
        start = int(self.env.now)
        for block, plan in self._plans.items():
            if plan.fetch:
                yield from self._fetch(block, step, index)
        self._blocked(start, step, index, None, "fetch")

    def before_update(self, block: str, step: int, index: int) -> Generator[Any, Any, None]:
        """With overlap: wait until the block's staged slots are on the device."""
        if not self.overlap:
            return
        ready = self._fetched.get(block)
        start = int(self.env.now)
        if ready is None:  # not prefetched: no room was left for it
            yield from self._fetch(block, step, index)
        elif not ready.triggered:
            yield ready
        self._blocked(start, step, index, block, "fetch")

    def update_ns(self, block: str, hot_ns: int, index: int) -> int:
        """The update's duration: at least the time its in-place bytes take across the link."""
        plan = self._plans.get(block)
        if plan is None or not plan.in_place_read_bytes:
            return hot_ns
        self.link_bytes[index] += plan.in_place_read_bytes + plan.in_place_written_bytes
        stream = self.tiering.rates.in_place_ns(
            plan.in_place_read_bytes, plan.in_place_written_bytes
        )
        return max(hot_ns, stream)

    def after_update(
        self, block: str, step: int, index: int, installed: bool
    ) -> Generator[Any, Any, None]:
        """Write back what the update wrote (and what an install replaced) to its tier."""
        plan = self._plans.get(block)
        if plan is None:
            return
        slots = plan.write_back + (plan.replaced_if_installed if installed else [])
        if not slots:
            return
        groups = _copies("write_back", slots, False, step)
        if not self.overlap:
            start = int(self.env.now)
            yield from self._run(groups, index)
            self._blocked(start, step, index, block, "write_back")
            return
        done = []
        for s in slots:
            self._written[s.key] = event = self.env.event()
            done.append(event)
        yield self._write_queue.put((groups, index, done))

    def boundary(self, step: int, index: int) -> Generator[Any, Any, None]:
        """Before ``step``: the policy's moves, run in order on the training thread; counters."""
        start = int(self.env.now)
        infos = self.table.infos(step)
        moves = self.policy.place(infos, self.view(step))
        slots = {s.key: s for s in infos} if moves else {}
        for move in moves:
            yield from self._after_writes([slots[(move.block, move.slot)]])
            copy = Copy("move", move.block, move.slot, move.nbytes, move.src, move.dst, step)
            yield from self._run([[copy]], index)
            now = int(self.env.now)
            self.rec.add_span(
                "evict" if TIER_RANK[move.dst] > TIER_RANK[move.src] else "promote",
                Category.EVENT,
                now,
                now,
                step=step,
                block=move.block,
                track=TRAINING_TRACK,
                detail=f"{move.slot}: {move.reason}",
            )
        if moves:
            self.table.apply(moves)
            infos = apply_moves(infos, moves)
        self._blocked(start, step, index, None, "moves")
        for tier, nbytes in self.table.tier_bytes().items():
            self.rec.counter("state_bytes", nbytes, step=step - 1, key=tier.value)
        self._plan(step, infos)


@dataclass(frozen=True)
class StaticStaging:
    """The transfer time a static placement adds to each step when nothing overlaps.

    ``per_step_ns``: fetches, write-backs and in-place stretch of every block's
    update; ``install_ns[i]``: the write-back of block i's replaced bases or
    roots, on the steps a refresh is installed.
    """

    per_step_ns: int
    install_ns: np.ndarray


STATIC_POLICIES = (DevicePlacement, HostPlacement, LifecyclePlacement)


def static_staging(
    blocks: Sequence[tuple[str, Sequence[SlotBytes], int]], tiering: Tiering
) -> StaticStaging:
    """Closed-form staging costs of a static placement (``blocks``: id, slots, hot-path ns).

    Slots rest on their home for the whole run under these policies, so every
    step stages the same bytes; this is the event model's cross-check.
    """
    policy, rates = tiering.policy, tiering.rates
    if type(policy) not in STATIC_POLICIES:
        raise ValueError(f"closed-form staging needs a static placement, not {policy.name}")
    table = SlotTable(((b, s) for b, s, _ in blocks), policy)
    by_block: dict[str, list[SlotInfo]] = {}
    for s in table.infos(1):
        by_block.setdefault(s.block, []).append(s)
    per_step = 0
    install = np.zeros(len(blocks), dtype=np.int64)
    for i, (block, _, hot_ns) in enumerate(blocks):
        plan = plan_block(by_block.get(block, []), policy, 1)
        per_step += sum(rates.route_ns(s.tier, Tier.DEVICE, s.nbytes) for s in plan.fetch)
        per_step += sum(rates.route_ns(Tier.DEVICE, s.tier, s.nbytes) for s in plan.write_back)
        stream = rates.in_place_ns(plan.in_place_read_bytes, plan.in_place_written_bytes)
        per_step += max(0, stream - hot_ns) if plan.in_place_read_bytes else 0
        install[i] = sum(
            rates.route_ns(Tier.DEVICE, s.tier, s.nbytes) for s in plan.replaced_if_installed
        )
    return StaticStaging(per_step, install)
