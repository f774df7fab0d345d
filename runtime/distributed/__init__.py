"""Data-parallel Asteria on torch.distributed: owners, publication, sharded updates.

- ``context``: ``DistContext`` (ranks, nodes, the publication and per-level
  groups, the liveness board) and ``init_distributed`` from torchrun's
  environment;
- ``packing``: a refresh result as one byte buffer;
- ``publish``: replicated updates, each block's refresh computed by its
  owner and broadcast asynchronously to every rank;
- ``sharded``: sharded updates, each rank updating its own blocks and the
  parameters all-gathered after every step.

Which rank owns which block is the plan's ``assign_owners``, the same
function the simulator projects with. Whatever the mode, every rank installs
the same version of every block at the same step (the install queue and the
staleness rule are the same everywhere), so after every step the parameters
are bitwise identical on all ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.distributed.context import (
    DistContext,
    DistError,
    init_distributed,
    is_collective_failure,
)

UPDATE_MODES = ("replicated", "sharded")


def check_staleness_for_ranks(name: str) -> None:
    """Refuse a staleness policy whose install steps the ranks would not agree on."""
    if name.startswith("adaptive"):
        raise ValueError(
            f"{name} picks install steps from each rank's own timings, which the ranks would"
            " not agree on; with several ranks use bounded:TAU"
        )


@dataclass(frozen=True)
class ParallelConfig:
    """How an optimizer's work is split over the ranks of ``context``."""

    context: DistContext
    update_mode: str = "replicated"

    def __post_init__(self) -> None:
        if self.update_mode not in UPDATE_MODES:
            raise ValueError(
                f"update_mode must be one of {', '.join(UPDATE_MODES)}, got {self.update_mode!r}"
            )


__all__ = [
    "UPDATE_MODES",
    "DistContext",
    "DistError",
    "ParallelConfig",
    "check_staleness_for_ranks",
    "init_distributed",
    "is_collective_failure",
]
