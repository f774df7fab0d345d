"""Data-parallel Asteria on torch.distributed: owners, publication, sharded updates.

- ``context``: ``DistContext`` (ranks, nodes, the publication and per-level
  groups, the liveness board) and ``init_distributed`` from torchrun's
  environment;
- ``packing``: a refresh result as one byte buffer;
- ``publish``: replicated updates, each block's refresh computed by its
  owner and broadcast asynchronously to every rank, within a node and then
  across nodes (hierarchical), each level with its own staleness bound;
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
    collective_device,
    init_distributed,
    is_collective_failure,
)
from runtime.plan.ownership import LinkCosts

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
    """How an optimizer's work is split over the ranks of ``context``.

    - ``inter_node_staleness``: with replicated updates on several nodes, the
      staleness bound of results that cross nodes (``runtime.policies.levels``);
      None: the same bound as within a node.
    - ``links``: the rates by which the plan decides to keep a block's refresh
      inside each node (``runtime.plan.keeps_in_node``); None: every block has
      one owner in the world.
    """

    context: DistContext
    update_mode: str = "replicated"
    inter_node_staleness: int | None = None
    links: LinkCosts | None = None

    def __post_init__(self) -> None:
        if self.update_mode not in UPDATE_MODES:
            raise ValueError(
                f"update_mode must be one of {', '.join(UPDATE_MODES)}, got {self.update_mode!r}"
            )
        if self.inter_node_staleness is not None:
            if self.update_mode != "replicated":
                raise ValueError(
                    "an inter-node staleness bound applies to replicated updates (sharded"
                    " updates move every step)"
                )
            if self.inter_node_staleness < 0:
                raise ValueError(
                    f"inter_node_staleness must be >= 0, got {self.inter_node_staleness}"
                )


__all__ = [
    "UPDATE_MODES",
    "DistContext",
    "DistError",
    "ParallelConfig",
    "check_staleness_for_ranks",
    "collective_device",
    "init_distributed",
    "is_collective_failure",
]
