"""Who computes each block's amortized refresh: a pure function of blocks, costs and topology.

Under data parallelism every rank holds the same blocks; the refresh of each
(Shampoo's inverse roots, SOAP's and KL-Shampoo's basis refresh, ~n³ per
factor) is computed by one *owner* and published to the others. The runtime
and the simulator call the same ``assign_owners``, so a projection of N ranks
rests on the assignment the runtime would execute.

The rule is greedy longest-processing-time (LPT): blocks in decreasing cost
(ties by id, so the result never depends on input order or hash seeds), each
to the least-loaded rank that still has room for it; ties between ranks go to
the lowest rank. LPT is within 4/3 of the optimal makespan, and with
thousands of blocks of a few shapes it is close to perfect balance.
Memory-aware: a block's ``nbytes`` (what its owner holds for it: snapshots
and shadow results, or the whole state when updates are sharded) counts
against ``memory_per_rank_bytes``. Standard library only.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Topology:
    """Ranks and how they group into nodes (rank r is on node r // ranks_per_node)."""

    world_size: int = 1
    ranks_per_node: int | None = None  # None: all ranks on one node

    def __post_init__(self) -> None:
        if isinstance(self.world_size, bool) or self.world_size < 1:
            raise ValueError(f"world_size: expected a positive integer, got {self.world_size!r}")
        per = self.ranks_per_node
        if per is not None and (per < 1 or self.world_size % per):
            raise ValueError(
                f"ranks_per_node: expected a positive divisor of world_size ({self.world_size}),"
                f" got {per!r}"
            )

    @property
    def local_size(self) -> int:
        return self.world_size if self.ranks_per_node is None else self.ranks_per_node

    @property
    def nodes(self) -> int:
        return self.world_size // self.local_size

    def node_of(self, rank: int) -> int:
        return rank // self.local_size


@dataclass(frozen=True)
class BlockWork:
    """One unit of amortized work to place: its id, cost (FLOPs per refresh) and bytes."""

    id: str
    cost: float
    nbytes: int = 0

    def __post_init__(self) -> None:
        if not self.cost >= 0 or self.nbytes < 0:
            raise ValueError(f"block {self.id}: cost and nbytes must be non-negative")


@dataclass(frozen=True)
class Assignment:
    """The owner of every block, and what each rank carries."""

    owners: dict[str, int]
    load: tuple[float, ...]  # cost per rank
    memory_bytes: tuple[int, ...]  # nbytes per rank

    @property
    def imbalance(self) -> float:
        """Max load over mean load (1.0 is perfect; 0 work counts as balanced)."""
        mean = sum(self.load) / len(self.load)
        return max(self.load) / mean if mean > 0 else 1.0

    def owned_by(self, rank: int) -> list[str]:
        return [block for block, owner in self.owners.items() if owner == rank]


class AssignmentError(ValueError):
    """Some block fits on no rank within the memory limit (one line, naming it)."""


def assign_owners(
    blocks: Iterable[BlockWork],
    topology: Topology,
    *,
    memory_per_rank_bytes: int | None = None,
) -> Assignment:
    """Greedy LPT over ranks, memory-aware; deterministic for the same blocks and topology."""
    ranks = topology.world_size
    load = [0.0] * ranks
    memory = [0] * ranks
    owners: dict[str, int] = {}
    ordered = sorted(blocks, key=lambda b: (-b.cost, -b.nbytes, b.id))
    heap = [(0.0, rank) for rank in range(ranks)]  # (load, rank): least loaded, then lowest rank
    for block in ordered:
        if block.id in owners:
            raise ValueError(f"block {block.id} is listed twice")
        skipped = []
        while heap:
            _, rank = heapq.heappop(heap)
            if (
                memory_per_rank_bytes is None
                or memory[rank] + block.nbytes <= memory_per_rank_bytes
            ):
                break
            skipped.append(rank)
        else:
            raise AssignmentError(
                f"block {block.id} ({block.nbytes} bytes) fits on no rank: each has"
                f" {memory_per_rank_bytes} bytes and the least used holds {min(memory)}"
            )
        owners[block.id] = rank
        load[rank] += block.cost
        memory[rank] += block.nbytes
        heapq.heappush(heap, (load[rank], rank))
        for other in skipped:
            heapq.heappush(heap, (load[other], other))
    return Assignment(owners, tuple(load), tuple(memory))
