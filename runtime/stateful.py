"""The one protocol every checkpointable object follows (as torchtitan's ``Stateful``).

A checkpoint is the ``state_dict`` of a few named objects; restoring is their
``load_state_dict``. What a state dict may hold is deliberately narrow —
tensors, numbers, strings, booleans, None, and lists / tuples / dicts of
those — so a checkpoint stores without pickle and loads with
``torch.load(weights_only=True)`` semantics (``runtime.checkpoint``).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...
