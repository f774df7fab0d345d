"""The tiered state store: optimizer state on device, host or NVMe, placed by a policy.

Every slot of every block rests on one tier. The placement policy
(``runtime.policies.placement``) decides where it rests (``home``, then
``place`` at each step boundary, with a reason for every move) and how the
device gets at it during its block's update (``access``): already resident,
in place, or staged, i.e. copied to the device for the update and, if the
update wrote it, copied back after. The optimizer only sees ``get`` (the
block's state with every tensor on the device) and ``release`` (done with it),
so placement never changes the numbers: copies are exact, and a slot that an
install replaced is written back whatever the policy's access pattern.

On a machine without a GPU the "device" is the CPU and its memory is a byte
budget, so every policy runs, and is tested, on real copies and real files.

Host-resident state lives in a ``HostPool`` (pinned when the device is a GPU):
a write-back overwrites the slot's host buffer in place, and spill reads and
writes go through pool buffers, so the steady state allocates no host memory.
Transfers are spans (``fetch``, ``write_back``, ``move``) with bytes and
tiers; every move decision is an ``event`` span whose detail is the reason.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator
from typing import Any

import psutil
import torch

from runtime.host_pool import HostPool
from runtime.policies.placement import (
    TIER_RANK,
    WRITTEN_KINDS,
    Access,
    MemoryView,
    PlacementPolicy,
    SlotInfo,
    check_budget,
    format_bytes,
    link_of_gpu,
)
from runtime.policies.placement import LinkKind as PolicyLink
from runtime.state import DeviceStateStore, slot_kinds
from traces.recorder import Recorder
from traces.schema import Category, Tier


class TieredStateStore(DeviceStateStore):
    """Block id -> typed state, each slot resting on the tier its policy chose.

    ``spill`` is an object with ``write(key, tensor)``, ``read(key) -> tensor``
    and ``remove(key)`` (``runtime.spill.SpillStore``); without one the NVMe
    tier is unavailable to the policy. ``spill.read`` must take ``out=`` (a
    host tensor of the spilled dtype and shape to read into).
    """

    def __init__(
        self,
        policy: PlacementPolicy,
        device: torch.device,
        *,
        device_budget_bytes: int,
        host_budget_bytes: int,
        recorder: Recorder,
        spill: Any = None,
    ) -> None:
        super().__init__()
        self.policy = policy
        self.device = device
        self.device_budget_bytes = device_budget_bytes
        self.host_budget_bytes = host_budget_bytes
        self._recorder = recorder
        self._spill = spill
        self._tier: dict[tuple[str, str], Tier] = {}
        self._nbytes: dict[tuple[str, str], int] = {}
        self._layout: dict[tuple[str, str], tuple[torch.dtype, torch.Size]] = {}
        self.pool = HostPool(pin_memory=device.type == "cuda", recorder=recorder)
        self._staged: dict[str, dict[str, torch.Tensor]] = {}
        self._step = 0
        self._warned_spill = False
        self._spill_failed = False
        self._ready: dict[str, Any] = {}
        self._stream: Any = None
        self._floor = 0  # device_peak_bytes() at ``_floor_step``
        self._floor_step = -1
        self.bytes_moved: dict[tuple[Tier, Tier], int] = {}

    # ------------------------------------------------------------ bookkeeping
    def _slot_info(self, block: str, name: str, kind: Any) -> SlotInfo:
        return SlotInfo(
            block=block,
            slot=name,
            kind=kind.value,
            nbytes=self._nbytes[(block, name)],
            tier=self._tier[(block, name)],
            next_use_step=self._step,  # every slot of a block is used at each of its steps
        )

    def slot_infos(self) -> list[SlotInfo]:
        out = []
        for block, state in self._states.items():
            for name, kind in slot_kinds(type(state)).items():
                if (block, name) in self._tier:
                    out.append(self._slot_info(block, name, kind))
        return out

    def tier_bytes(self) -> dict[Tier, int]:
        out = dict.fromkeys(Tier, 0)
        for key, tier in self._tier.items():
            out[tier] += self._nbytes[key]
        return out

    def _host_copy(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` copied into a pool buffer (the caller owns it)."""
        if not t.is_contiguous():
            raise ValueError("optimizer state must be contiguous to be tiered")
        return self.pool.copy_of(t)

    def _record_transfer(
        self, name: str, block: str, nbytes: int, src: Tier, dst: Tier, start: int
    ) -> None:
        self.bytes_moved[(src, dst)] = self.bytes_moved.get((src, dst), 0) + nbytes
        self._recorder.add_span(
            name,
            Category.TRANSFER,
            start,
            self._recorder.clock(),
            step=self._step,
            block=block,
            nbytes=nbytes,
            tier_from=src,
            tier_to=dst,
        )

    def _store_at(
        self,
        block: str,
        name: str,
        tensor: torch.Tensor,
        tier: Tier,
        *,
        buffer: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """Put ``tensor`` at rest on ``tier``; returns what the state field holds (None on NVMe).

        ``buffer`` is a pool buffer of the slot's size that the caller owns
        (``tensor`` itself, or the slot's old host copy): on the host it
        becomes the resting copy (written in place), for NVMe it is what is
        written. The caller releases ``buffer`` unless it is what came back.
        """
        self._layout[(block, name)] = (tensor.dtype, tensor.shape)
        if tier is Tier.DEVICE:
            return tensor if tensor.device == self.device else tensor.to(self.device)
        if tier is Tier.HOST:
            if buffer is None:
                return self._host_copy(tensor)
            if buffer is not tensor:
                buffer.copy_(tensor)
            return buffer
        if buffer is None:
            staging = self._host_copy(tensor)
        else:
            staging = buffer
            if buffer is not tensor:
                buffer.copy_(tensor)
        try:
            self._spill.write((block, name), staging)
        except OSError as exc:  # disk full, unwritable: fall back to host, keep training
            self._tier[(block, name)] = Tier.HOST
            self._spill_failed = True  # the policy sees no NVMe tier from now on
            self._recorder.add_span(
                "spill_failed",
                Category.EVENT,
                self._recorder.clock(),
                self._recorder.clock(),
                step=self._step,
                block=block,
                detail=f"{name}: {exc}",
            )
            if not self._warned_spill:
                warnings.warn(
                    f"spill tier unavailable ({exc}); keeping optimizer state on host", stacklevel=2
                )
                self._warned_spill = True
            return staging  # the caller's buffer or our copy: either way now the host copy
        if buffer is None:
            self.pool.release(staging)
        return None

    def _load(self, block: str, name: str, resting: torch.Tensor | None) -> torch.Tensor:
        """The slot's tensor where it rests; from NVMe, read into a pool buffer the caller owns."""
        tier = self._tier[(block, name)]
        if tier is Tier.NVME:
            dtype, shape = self._layout[(block, name)]
            return self._spill.read((block, name), out=self.pool.tensor(dtype, shape))
        assert resting is not None
        return resting

    def _done_with(self, loaded: torch.Tensor) -> None:
        """Release a buffer ``_load`` read from NVMe, once copies reading it have completed."""
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
        self.pool.release(loaded, after=event)

    # -------------------------------------------------------------- the API
    def put(self, block_id: str, state: Any) -> None:
        self._put_at(block_id, state, {})

    def _put_at(self, block_id: str, state: Any, tiers: dict[str, str]) -> None:
        """Rest each slot on ``tiers[slot]`` where given (and available), else at its policy home."""
        kinds = slot_kinds(type(state))
        resting = {}
        for name in kinds:
            tensor = getattr(state, name)
            if tensor is None:
                continue
            key = (block_id, name)
            self._nbytes[key] = tensor.numel() * tensor.element_size()
            self._tier[key] = Tier.DEVICE
            home = (
                Tier(tiers[name])
                if name in tiers
                else self.policy.home(self._slot_info(block_id, name, kinds[name]))
            )
            if home is Tier.NVME and (self._spill is None or self._spill_failed):
                home = Tier.HOST
            self._tier[key] = home
            resting[name] = self._store_at(block_id, name, tensor, home)
        self._states[block_id] = dataclasses.replace(state, **resting)

    def prefetch(self, block_id: str) -> int:
        """Stage the block's slots for its coming update now (from a backward hook).

        On CUDA the copies go on a side stream and ``get`` makes the compute
        stream wait for them with an event, so they overlap the rest of the
        backward pass; on the CPU they are simply done earlier. Returns bytes staged.
        """
        if block_id not in self._states or block_id in self._staged:
            return 0
        if not self._prefetch_fits(block_id):
            return 0  # ``get`` stages it when its update comes, within the reserve
        stream = self._copy_stream()
        if stream is None:
            staged = self._stage(block_id)
        else:
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                staged = self._stage(block_id)
                event = torch.cuda.Event()
                event.record(stream)
            self._ready[block_id] = event
        self._staged[block_id] = staged
        return sum(t.numel() * t.element_size() for t in staged.values())

    def _prefetch_fits(self, block_id: str) -> bool:
        """Whether staging the block now keeps the device within its budget.

        The placement needs ``device_peak_bytes``: what rests on the device
        plus the largest block's copies, which ``get`` may add for a block that
        was not prefetched. Prefetches may only use what is left over, so that
        no order of hooks and updates goes past the budget.
        """
        if self._floor_step != self._step:
            self._floor = self.device_peak_bytes()
            self._floor_step = self._step
        prefetched = sum(
            t.numel() * t.element_size()
            for staged in self._staged.values()
            for t in staged.values()
        )
        return self._floor + prefetched + self._staging_bytes(block_id) <= self.device_budget_bytes

    def device_peak_bytes(self) -> int:
        """Device memory the coming step needs: resting bytes plus the largest block's copies.

        The policy's ``peak_device_bytes`` where this store does as the policy
        says. Where the policy reaches a host slot in place (NVLink-C2C,
        unified memory), torch has no such access and ``_stage`` copies the
        slot to the device anyway: the copy counts here.
        """
        resting = self.tier_bytes()
        shared = resting[Tier.HOST] if self.policy.link is PolicyLink.UNIFIED else 0
        largest = max((self._staging_bytes(block) for block in self._states), default=0)
        return resting[Tier.DEVICE] + shared + largest

    def _staging_bytes(self, block_id: str) -> int:
        """Bytes ``_stage`` would copy to the device for the block now."""
        state = self._states[block_id]
        total = 0
        for name, kind in slot_kinds(type(state)).items():
            if (block_id, name) in self._tier and self._stages(block_id, name, kind):
                total += self._nbytes[(block_id, name)]
        return total

    def _stages(self, block_id: str, name: str, kind: Any) -> bool:
        access = self.policy.access(self._slot_info(block_id, name, kind), self._step)
        resident = access in (Access.RESIDENT, Access.NONE)
        return not (resident and self._tier[(block_id, name)] is Tier.DEVICE)

    def _copy_stream(self) -> Any:
        if self.device.type != "cuda":
            return None
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        return self._stream

    def get(self, block_id: str) -> Any:
        """The block's state with every slot its update uses on the device."""
        state = self._states[block_id]
        if block_id in self._staged:  # prefetched during backward
            staged = self._staged[block_id]
            event = self._ready.pop(block_id, None)
            if event is not None:
                torch.cuda.current_stream(self.device).wait_event(event)
        else:
            staged = self._stage(block_id)
            self._staged[block_id] = staged
        return dataclasses.replace(state, **staged) if staged else state

    def _stage(self, block_id: str) -> dict[str, torch.Tensor]:
        state = self._states[block_id]
        kinds = slot_kinds(type(state))
        staged: dict[str, torch.Tensor] = {}
        for name, kind in kinds.items():
            key = (block_id, name)
            if key not in self._tier or not self._stages(block_id, name, kind):
                continue
            start = self._recorder.clock()
            src = self._tier[key]
            loaded = self._load(block_id, name, getattr(state, name))
            staged[name] = loaded.to(self.device, copy=True, non_blocking=True)
            if src is Tier.NVME:
                self._done_with(loaded)
            self._record_transfer("fetch", block_id, self._nbytes[key], src, Tier.DEVICE, start)
        return staged

    def release(self, block_id: str, view: Any) -> None:
        """Done with the block for this step: write back what changed, drop staged copies."""
        staged = self._staged.pop(block_id, {})
        state = self._states[block_id]
        kinds = slot_kinds(type(state))
        updates = {}
        for name, kind in kinds.items():
            key = (block_id, name)
            current = getattr(view, name)
            if current is None:
                continue
            if key not in self._tier:  # a slot that appeared (never here today)
                self._nbytes[key] = current.numel() * current.element_size()
                self._tier[key] = Tier.DEVICE
            tier = self._tier[key]
            copy = staged.get(name)
            replaced = copy is None and current is not getattr(state, name)
            if copy is None and not replaced:
                continue
            info = self._slot_info(block_id, name, kind)
            access = self.policy.access(info, self._step)
            if copy is not None and current is copy and not _writes(access, info):
                continue  # read-only use: the resting copy is still exact
            start = self._recorder.clock()
            old = getattr(state, name) if tier is Tier.HOST else None
            updates[name] = self._store_at(block_id, name, current, tier, buffer=old)
            if tier is not Tier.DEVICE:
                self._record_transfer(
                    "write_back", block_id, self._nbytes[key], Tier.DEVICE, tier, start
                )
        if updates:
            self._states[block_id] = dataclasses.replace(state, **updates)

    def step_boundary(self, step: int) -> None:
        """Before ``step``: let the policy move slots, then record bytes per tier."""
        self._step = step
        infos = self.slot_infos()
        moves = self.policy.place(infos, self.memory_view(step))
        for move in moves:
            self._apply(move)
        for tier, nbytes in self.tier_bytes().items():
            self._recorder.counter("state_bytes", nbytes, step=step - 1, key=tier.value)
        self._check_device_memory(step)

    def _check_device_memory(self, step: int) -> None:
        """Stop where the placement needs more device memory than the budget allows.

        The budget is the device's memory for optimizer state: on a machine
        without a GPU it is the only limit there is, and on a GPU it is the
        limit the user asked for (the allocator is a second, real one).
        """
        needed = self.device_peak_bytes()
        self._floor, self._floor_step = needed, step
        if needed <= self.device_budget_bytes:
            return
        now = self._recorder.clock()
        self._recorder.add_span(
            "device_out_of_memory",
            Category.EVENT,
            now,
            now,
            step=step - 1,
            detail=f"{needed} bytes needed, budget {self.device_budget_bytes}",
        )
        raise DeviceOutOfMemory(step, needed, self.device_budget_bytes, self.policy.name)

    def memory_view(self, step: int) -> MemoryView:
        resting = self.tier_bytes()
        device_free = self.device_budget_bytes - resting[Tier.DEVICE]
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            device_free = min(device_free, int(free))
        host_free = min(
            self.host_budget_bytes - resting[Tier.HOST], int(psutil.virtual_memory().available)
        )
        return MemoryView(
            step=step,
            device_budget_bytes=self.device_budget_bytes,
            host_budget_bytes=self.host_budget_bytes,
            device_free_bytes=device_free,
            host_free_bytes=host_free,
            link=self.policy.link,
            nvme_available=self._spill is not None and not self._spill_failed,
        )

    def _apply(self, move: Any) -> None:
        key = (move.block, move.slot)
        self._staged.pop(move.block, None)  # a stale prefetch is staged again by get
        self._ready.pop(move.block, None)
        state = self._states[move.block]
        start = self._recorder.clock()
        src = self._tier[key]
        tensor = self._load(move.block, move.slot, getattr(state, move.slot))
        if src is Tier.NVME:
            self._spill.remove((move.block, move.slot))
        self._tier[key] = move.dst
        buffer = None if src is Tier.DEVICE else tensor  # host copy or NVMe read: ours
        resting = self._store_at(move.block, move.slot, tensor, move.dst, buffer=buffer)
        if buffer is not None and resting is not buffer:
            self._done_with(buffer)
        self._states[move.block] = dataclasses.replace(state, **{move.slot: resting})
        self._record_transfer("move", move.block, move.nbytes, move.src, self._tier[key], start)
        now = self._recorder.clock()
        self._recorder.add_span(
            "evict" if TIER_RANK[move.dst] > TIER_RANK[move.src] else "promote",
            Category.EVENT,
            now,
            now,
            step=self._step,
            block=move.block,
            detail=f"{move.slot}: {move.reason}",
        )

    def check_budget(self) -> None:
        check_budget(self.slot_infos(), self.device_budget_bytes)

    # ---------------------------------------------------------- checkpoints
    def items(self) -> Iterator[tuple[str, Any]]:
        for block in self._states:
            yield block, self._materialized(block)

    def _materialized(self, block: str) -> Any:
        state = self._states[block]
        loaded = {
            name: self._spill.read((block, name))
            if self._tier[(block, name)] is Tier.NVME
            else getattr(state, name)
            for name in slot_kinds(type(state))
            if (block, name) in self._tier
        }
        return dataclasses.replace(state, **loaded)

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        from runtime.state import state_tensors

        return {block: dict(state_tensors(self._materialized(block))) for block in self._states}

    def tier_map(self) -> dict[str, dict[str, str]]:
        """Block -> slot -> the tier it rests on now, as a checkpoint records it."""
        out: dict[str, dict[str, str]] = {}
        for (block, name), tier in self._tier.items():
            out.setdefault(block, {})[name] = tier.value
        return out

    def load_state_dict(
        self,
        blocks: dict[str, dict[str, torch.Tensor]],
        state_types: dict[str, type],
        devices: dict[str, torch.device],
        tiers: dict[str, dict[str, str]] | None = None,
    ) -> None:
        """Replace every block's state, each slot back on the tier ``tiers`` recorded.

        What the store held before is dropped first (spilled files removed,
        host copies returned to the pool), so a later read never meets a stale
        spill file. A slot the map does not name goes where the policy puts a
        new slot; NVMe without a working spill store falls back to the host.
        """
        states = self._rebuild(blocks, state_types, devices)
        self._drop_all()
        for block_id, state in states.items():
            self._put_at(block_id, state, (tiers or {}).get(block_id, {}))

    def _drop_all(self) -> None:
        for (block, name), tier in list(self._tier.items()):
            if tier is Tier.NVME and self._spill is not None:
                self._spill.remove((block, name))
            elif tier is Tier.HOST:
                resting = getattr(self._states[block], name, None)
                if resting is not None:
                    self.pool.release(resting)
        self._states.clear()
        self._tier.clear()
        self._nbytes.clear()
        self._layout.clear()
        self._staged.clear()
        self._ready.clear()

    def total_bytes(self) -> int:
        return sum(self._nbytes.values())


def _writes(access: Access, slot: SlotInfo) -> bool:
    """Whether the update wrote the slot it reached with ``access``, so its copy goes back.

    In-place access (NVLink-C2C, unified memory) is made through a device copy
    here, so a slot the update writes in place is written back like a fetched one.
    """
    if access is Access.FETCH_WRITE_BACK:
        return True
    return access is Access.IN_PLACE and slot.kind in WRITTEN_KINDS


class BudgetError(ValueError):
    """A device budget smaller than one block's hot working set."""


class DeviceOutOfMemory(RuntimeError):
    """The placement needs more device memory for optimizer state than the device budget."""

    def __init__(self, step: int, needed_bytes: int, budget_bytes: int, placement: str) -> None:
        self.step = step
        self.needed_bytes = needed_bytes
        self.budget_bytes = budget_bytes
        self.placement = placement
        hint = (
            "; placement pressure keeps state within the budget by evicting it to host and NVMe"
            if placement.split(":")[0] != "pressure"
            else ""
        )
        super().__init__(
            f"out of device memory before step {step}: placement {placement} needs"
            f" {format_bytes(needed_bytes)} ({needed_bytes} bytes) of optimizer state on the device,"
            f" the device budget is {format_bytes(budget_bytes)} ({budget_bytes} bytes){hint}"
        )


def link_of(device: torch.device) -> PolicyLink:
    """The CPU-GPU link of ``device``.

    Without a GPU the device tier is emulated as a discrete device behind a
    PCIe-like link, so that every policy's copies are really made (and tested).
    """
    if device.type != "cuda":
        return PolicyLink.PCIE
    return link_of_gpu(torch.cuda.get_device_name(device))
