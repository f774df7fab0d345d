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
against ``memory_per_rank_bytes``.

Topology-aware: given the rates of ``LinkCosts``, a block whose result is
dearer to send across nodes than to compute once more on every node is
*node-local*: each node computes it (on the same local rank of every node)
and its result never leaves the node. The rule (``keeps_in_node``) compares
the extra compute a node takes on, spread over its ranks, with the time its
inter-node link needs for the result. Node-local blocks are placed first (LPT
over local rank indices, the same on every node), then the others (LPT over
all ranks, on top of those loads). Without ``LinkCosts`` or with one node,
every block has one owner in the world. Standard library only.
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
    """One unit of amortized work to place: its id, cost (FLOPs per refresh) and bytes.

    ``result_bytes`` is what a refresh's result weighs on the wire (0: it never
    moves, as in sharded updates).
    """

    id: str
    cost: float
    nbytes: int = 0
    result_bytes: int = 0

    def __post_init__(self) -> None:
        if not self.cost >= 0 or self.nbytes < 0 or self.result_bytes < 0:
            raise ValueError(f"block {self.id}: cost and bytes must be non-negative")


@dataclass(frozen=True)
class LinkCosts:
    """What the cost model needs to price keeping a result inside its node.

    ``flops_per_s``: one rank's refresh rate; ``inter_node_bytes_per_s``: a
    node's inter-node link. Both from a hardware profile or a measurement.
    """

    flops_per_s: float
    inter_node_bytes_per_s: float

    def __post_init__(self) -> None:
        if not (self.flops_per_s > 0 and self.inter_node_bytes_per_s > 0):
            raise ValueError("LinkCosts: both rates must be positive")


def keeps_in_node(block: BlockWork, topology: Topology, links: LinkCosts | None) -> bool:
    """Whether computing ``block`` on every node is cheaper than sending its result across.

    Owned once in the world, a node takes on ``cost / nodes`` of the block on
    average and receives ``result_bytes`` over its inter-node link; owned by
    every node, it takes on all of ``cost``. The extra ``cost * (1 - 1/nodes)``
    runs on one of the node's ``local_size`` ranks among all the node's other
    blocks, so it costs the node ``cost * (1 - 1/nodes) / local_size`` of
    compute time in a balanced assignment. It pays when that is less than the
    transfer time.
    """
    if links is None or topology.nodes < 2 or block.result_bytes == 0:
        return False
    extra_s = block.cost * (1 - 1 / topology.nodes) / topology.local_size / links.flops_per_s
    return extra_s < block.result_bytes / links.inter_node_bytes_per_s


@dataclass(frozen=True)
class Assignment:
    """The owner of every block, and what each rank carries.

    A node-local block's ``owners`` entry is its owner on node 0; on node n
    the rank ``n * local_size`` above it computes it (``owner_for``).
    """

    owners: dict[str, int]
    load: tuple[float, ...]  # cost per rank
    memory_bytes: tuple[int, ...]  # nbytes per rank
    node_local: frozenset[str] = frozenset()
    topology: Topology = Topology()

    @property
    def imbalance(self) -> float:
        """Max load over mean load (1.0 is perfect; 0 work counts as balanced)."""
        mean = sum(self.load) / len(self.load)
        return max(self.load) / mean if mean > 0 else 1.0

    def owner_for(self, block: str, rank: int) -> int:
        """The rank whose result of ``block`` the rank ``rank`` installs."""
        owner = self.owners[block]
        if block in self.node_local:
            return self.topology.node_of(rank) * self.topology.local_size + owner
        return owner

    def crosses_nodes(self, block: str) -> bool:
        """Whether the block's result travels over the inter-node level."""
        return self.topology.nodes > 1 and block not in self.node_local

    def owned_by(self, rank: int) -> list[str]:
        return [block for block in self.owners if self.owner_for(block, rank) == rank]


class AssignmentError(ValueError):
    """Some block fits on no rank within the memory limit (one line, naming it)."""


def assign_owners(
    blocks: Iterable[BlockWork],
    topology: Topology,
    *,
    memory_per_rank_bytes: int | None = None,
    links: LinkCosts | None = None,
) -> Assignment:
    """Greedy LPT, memory-aware, topology-aware with ``links``; deterministic.

    The result depends only on the set of blocks (not their order), the
    topology, the memory limit and the link rates.
    """
    ranks = topology.world_size
    load = [0.0] * ranks
    memory = [0] * ranks
    owners: dict[str, int] = {}
    ordered = sorted(blocks, key=lambda b: (-b.cost, -b.nbytes, b.id))
    seen: set[str] = set()
    for block in ordered:
        if block.id in seen:
            raise ValueError(f"block {block.id} is listed twice")
        seen.add(block.id)
    local = [b for b in ordered if keeps_in_node(b, topology, links)]
    per = topology.local_size
    for block in local:  # LPT over local rank indices; every node alike
        fits = [
            index
            for index in range(per)
            if memory_per_rank_bytes is None
            or memory[index] + block.nbytes <= memory_per_rank_bytes
        ]
        if not fits:
            raise _no_room(block, memory_per_rank_bytes, memory)
        index = min(fits, key=lambda i: (load[i], i))
        owners[block.id] = index
        for rank in range(index, ranks, per):
            load[rank] += block.cost
            memory[rank] += block.nbytes
    node_local = frozenset(owners)
    heap = [(load[rank], rank) for rank in range(ranks)]  # least loaded, then lowest rank
    heapq.heapify(heap)
    for block in ordered:
        if block.id in node_local:
            continue
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
            raise _no_room(block, memory_per_rank_bytes, memory)
        owners[block.id] = rank
        load[rank] += block.cost
        memory[rank] += block.nbytes
        heapq.heappush(heap, (load[rank], rank))
        for other in skipped:
            heapq.heappush(heap, (load[other], other))
    return Assignment(owners, tuple(load), tuple(memory), node_local, topology)


def _no_room(block: BlockWork, limit: int | None, memory: list[int]) -> AssignmentError:
    return AssignmentError(
        f"block {block.id} ({block.nbytes} bytes) fits on no rank: each has"
        f" {limit} bytes and the least used holds {min(memory)}"
    )
