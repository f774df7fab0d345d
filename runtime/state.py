"""The state store: every optimizer-state tensor of every block lives here.

Optimizers ask the store for a block's state and get its tensors on the
compute device; they never learn where the tensors lived in between. Each
block's state is a typed dataclass whose fields are the block's *slots*; the
``SlotKind`` of a field says how it is used over its lifetime (what the tier
manager places by), and state dicts are built from those fields, so nothing is
hidden from a checkpoint.

``StateStore`` is the interface the optimizer shell calls (the plain
``DeviceStateStore`` here, ``runtime.tiers.TieredStateStore`` for tiers); slot
kinds come from the plan (``runtime.plan.kinds``), the one vocabulary the
placement policies and the simulator use too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch

from runtime.plan.kinds import SlotKind

__all__ = [
    "DeviceStateStore",
    "SlotKind",
    "StateStore",
    "slot",
    "slot_kinds",
    "state_bytes",
    "state_tensors",
]


def slot(kind: SlotKind) -> Any:
    """A dataclass field holding one optional tensor of the given kind."""
    return dataclasses.field(default=None, metadata={"slot": kind})


S = TypeVar("S")


def slot_kinds(state_type: type) -> dict[str, SlotKind]:
    return {
        f.name: f.metadata["slot"] for f in dataclasses.fields(state_type) if "slot" in f.metadata
    }


def state_tensors(state: Any) -> dict[str, torch.Tensor]:
    """The non-empty tensor slots of a block state, by field name."""
    out = {}
    for name in slot_kinds(type(state)):
        value = getattr(state, name)
        if value is not None:
            out[name] = value
    return out


def state_bytes(state: Any) -> int:
    return sum(t.numel() * t.element_size() for t in state_tensors(state).values())


@runtime_checkable
class StateStore(Protocol):
    """Where an optimizer's block states live, as the optimizer shell uses it.

    ``get`` returns a block's state with every tensor its update needs on the
    compute device, whatever tier held it; ``release`` hands the (possibly
    updated or replaced) state back after the update; ``prefetch`` stages a
    block early (from a backward hook) and returns the bytes staged;
    ``step_boundary`` runs before each step (placement decisions, counters).
    """

    def __contains__(self, block_id: object) -> bool: ...
    def __len__(self) -> int: ...
    def put(self, block_id: str, state: Any) -> None: ...
    def get(self, block_id: str) -> Any: ...
    def release(self, block_id: str, view: Any) -> None: ...
    def prefetch(self, block_id: str) -> int: ...
    def step_boundary(self, step: int) -> None: ...
    def items(self) -> Iterator[tuple[str, Any]]: ...
    def total_bytes(self) -> int: ...
    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]: ...
    def tier_map(self) -> dict[str, dict[str, str]]: ...
    def load_state_dict(
        self,
        blocks: dict[str, dict[str, torch.Tensor]],
        state_types: dict[str, type],
        devices: dict[str, torch.device],
        tiers: dict[str, dict[str, str]] | None = None,
    ) -> None: ...


class DeviceStateStore:
    """Block id -> typed block state, all on the compute device (no tiers, nothing moves)."""

    def __init__(self) -> None:
        self._states: dict[str, Any] = {}

    def __contains__(self, block_id: object) -> bool:
        return block_id in self._states

    def __len__(self) -> int:
        return len(self._states)

    def put(self, block_id: str, state: Any) -> None:
        self._states[block_id] = state

    def get(self, block_id: str) -> Any:
        return self._states[block_id]

    def release(self, block_id: str, view: Any) -> None:
        """Nothing to write back: ``get`` handed out the resting state itself."""

    def prefetch(self, block_id: str) -> int:
        return 0

    def step_boundary(self, step: int) -> None:
        """Nothing is placed: every slot rests on the device."""

    def items(self) -> Iterator[tuple[str, Any]]:
        return iter(self._states.items())

    def total_bytes(self) -> int:
        return sum(state_bytes(s) for s in self._states.values())

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {block_id: dict(state_tensors(s)) for block_id, s in self._states.items()}

    def tier_map(self) -> dict[str, dict[str, str]]:
        """Block -> slot -> the tier it rests on (here always the device)."""
        return {b: dict.fromkeys(state_tensors(s), "device") for b, s in self._states.items()}

    def load_state_dict(
        self,
        blocks: dict[str, dict[str, torch.Tensor]],
        state_types: dict[str, type],
        devices: dict[str, torch.device],
        tiers: dict[str, dict[str, str]] | None = None,
    ) -> None:
        """Rebuild every block's state; ``state_types`` maps block id -> its state class.

        ``tiers`` (a saved ``tier_map``) is ignored: nothing here is tiered.
        """
        self._states.clear()
        self._states.update(self._rebuild(blocks, state_types, devices))

    @staticmethod
    def _rebuild(
        blocks: dict[str, dict[str, torch.Tensor]],
        state_types: dict[str, type],
        devices: dict[str, torch.device],
    ) -> dict[str, Any]:
        """Typed block states from saved tensors, checked against each block's state class."""
        out: dict[str, Any] = {}
        for block_id, tensors in blocks.items():
            if block_id not in state_types:
                raise ValueError(
                    f"state_dict holds block {block_id!r}, which this optimizer does not have"
                )
            cls = state_types[block_id]
            kinds = slot_kinds(cls)
            unknown = set(tensors) - set(kinds)
            if unknown:
                raise ValueError(
                    f"state_dict block {block_id!r} has unknown slots {sorted(unknown)}"
                )
            device = devices[block_id]
            out[block_id] = cls(**{k: v.to(device) for k, v in tensors.items()})
        return out
