"""Checkpoints: named ``Stateful`` objects, saved atomically and loaded without pickle."""

from runtime.checkpoint.flatten import StateError
from runtime.checkpoint.manager import (
    CHECKPOINTS_DIRNAME,
    CheckpointError,
    CheckpointInfo,
    CheckpointManager,
)
from runtime.stateful import Stateful

__all__ = [
    "CHECKPOINTS_DIRNAME",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointManager",
    "StateError",
    "Stateful",
]
