"""Topology-aware ownership and staleness by level (runtime.plan.ownership, runtime.policies.levels).

Properties of ``assign_owners`` with ``LinkCosts`` over random blocks and
topologies: node-local exactly where the rule says it pays, every node alike,
every rank installs each block from exactly one owner, loads and memory add
up, the result independent of input order; and the rule itself against an
independent computation of both costs.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.plan import BlockWork, LinkCosts, Topology, assign_owners, keeps_in_node
from runtime.policies.levels import LevelStaleness
from runtime.policies.staleness import Adaptive, Bounded, Sync

topologies = st.sampled_from(
    [Topology(1), Topology(2, 1), Topology(4, 2), Topology(6, 3), Topology(8, 2), Topology(8, 4)]
)
blocks_st = st.lists(
    st.tuples(st.floats(0, 1e9, allow_nan=False), st.integers(0, 10_000), st.integers(0, 1 << 20)),
    min_size=0,
    max_size=40,
).map(lambda rows: [BlockWork(f"b{i}", c, n, r) for i, (c, n, r) in enumerate(rows)])
links_st = st.builds(
    LinkCosts,
    flops_per_s=st.floats(1e3, 1e12, allow_nan=False),
    inter_node_bytes_per_s=st.floats(1e3, 1e12, allow_nan=False),
)


def node_seconds(block: BlockWork, topology: Topology, links: LinkCosts) -> tuple[float, float]:
    """A node's time for the block, (owned once in the world, owned by every node).

    Once: its share of the compute spread over its ranks plus the result on
    its inter-node link; every node: all of the compute spread over its ranks.
    """
    nodes, per = topology.nodes, topology.local_size
    once = block.cost / nodes / per / links.flops_per_s
    once += block.result_bytes / links.inter_node_bytes_per_s
    return once, block.cost / per / links.flops_per_s


@settings(max_examples=200, deadline=None)
@given(blocks=blocks_st, topology=topologies, links=st.none() | links_st)
def test_every_rank_installs_each_block_from_one_owner(
    blocks: list[BlockWork], topology: Topology, links: LinkCosts | None
) -> None:
    assignment = assign_owners(blocks, topology, links=links)
    per = topology.local_size
    assert sorted(assignment.owners) == sorted(b.id for b in blocks)
    for block in blocks:
        local = block.id in assignment.node_local
        assert local == (keeps_in_node(block, topology, links)), block
        if links is not None and topology.nodes > 1 and block.result_bytes:
            once, everywhere = node_seconds(block, topology, links)
            if abs(once - everywhere) > 1e-9 * max(once, everywhere):  # off the tie
                assert local == (everywhere < once), block
        assert assignment.crosses_nodes(block.id) == (topology.nodes > 1 and not local)
        for rank in range(topology.world_size):
            owner = assignment.owner_for(block.id, rank)
            if local:  # computed on the rank's own node, at the same local index everywhere
                assert topology.node_of(owner) == topology.node_of(rank)
                assert owner % per == assignment.owners[block.id]
            else:
                assert owner == assignment.owners[block.id]
        owning = [r for r in range(topology.world_size) if block.id in assignment.owned_by(r)]
        assert len(owning) == (topology.nodes if local else 1)
    # loads and memory add up: a node-local block counts once per node
    copies = {b.id: topology.nodes if b.id in assignment.node_local else 1 for b in blocks}
    assert sum(assignment.load) == pytest.approx(sum(b.cost * copies[b.id] for b in blocks))
    assert sum(assignment.memory_bytes) == sum(b.nbytes * copies[b.id] for b in blocks)


@settings(max_examples=100, deadline=None)
@given(
    blocks=blocks_st,
    topology=topologies,
    links=links_st,
    seed=st.randoms(use_true_random=False),
)
def test_topology_aware_assignment_does_not_depend_on_input_order(
    blocks: list[BlockWork], topology: Topology, links: LinkCosts, seed: object
) -> None:
    shuffled = list(blocks)
    seed.shuffle(shuffled)  # type: ignore[attr-defined]
    assert assign_owners(blocks, topology, links=links) == assign_owners(
        shuffled, topology, links=links
    )


@settings(max_examples=100, deadline=None)
@given(blocks=blocks_st, topology=topologies)
def test_without_links_nothing_is_node_local_and_the_assignment_is_unchanged(
    blocks: list[BlockWork], topology: Topology
) -> None:
    """A link so fast that no block pays to keep local gives the plain LPT assignment.

    (A block that costs nothing to recompute always pays to keep local.)
    """
    blocks = [b for b in blocks if b.cost >= 1]
    fast = LinkCosts(flops_per_s=1e-3, inter_node_bytes_per_s=1e30)
    plain = assign_owners(blocks, topology)
    assert plain.node_local == frozenset()
    assert assign_owners(blocks, topology, links=fast) == plain


@settings(max_examples=100, deadline=None)
@given(
    costs=st.lists(st.floats(1, 1e6, allow_nan=False), min_size=1, max_size=30),
    topology=st.sampled_from([Topology(4, 2), Topology(8, 4), Topology(6, 2)]),
)
def test_all_node_local_is_lpt_over_local_ranks_on_every_node(
    costs: list[float], topology: Topology
) -> None:
    slow = LinkCosts(flops_per_s=1e30, inter_node_bytes_per_s=1e-3)
    blocks = [BlockWork(f"b{i}", c, 0, 8) for i, c in enumerate(costs)]
    assignment = assign_owners(blocks, topology, links=slow)
    assert assignment.node_local == frozenset(b.id for b in blocks)
    one_node = assign_owners(blocks, Topology(topology.local_size))
    per = topology.local_size
    assert assignment.load == one_node.load * topology.nodes
    assert all(assignment.owners[b] == one_node.owners[b] % per for b in assignment.owners)


def test_the_rule_weighs_recomputation_against_the_inter_node_link() -> None:
    topology = Topology(4, 2)  # 2 nodes x 2 ranks
    links = LinkCosts(flops_per_s=1e9, inter_node_bytes_per_s=1e6)
    # extra compute: 1e9 * (1 - 1/2) / 2 / 1e9 = 0.25 s; transfer: bytes / 1e6 s
    assert keeps_in_node(BlockWork("b", 1e9, 0, 300_000), topology, links)  # 0.3 s on the wire
    assert not keeps_in_node(BlockWork("b", 1e9, 0, 200_000), topology, links)  # 0.2 s
    assert not keeps_in_node(BlockWork("b", 1e9, 0, 300_000), Topology(4), links)  # one node
    assert not keeps_in_node(BlockWork("b", 1e9, 0, 0), topology, links)  # nothing moves
    assert not keeps_in_node(BlockWork("b", 1e9, 0, 300_000), topology, None)
    with pytest.raises(ValueError, match="rates must be positive"):
        LinkCosts(0.0, 1.0)


def test_node_local_blocks_respect_the_memory_limit_on_every_node() -> None:
    slow = LinkCosts(flops_per_s=1e30, inter_node_bytes_per_s=1e-3)
    blocks = [BlockWork(f"b{i}", 10.0 - i, 40, 8) for i in range(4)]
    assignment = assign_owners(blocks, Topology(4, 2), links=slow, memory_per_rank_bytes=80)
    assert max(assignment.memory_bytes) <= 80
    from runtime.plan import AssignmentError

    with pytest.raises(AssignmentError, match=r"block b\d .*fits on no rank"):
        assign_owners(blocks, Topology(4, 2), links=slow, memory_per_rank_bytes=79)


# ------------------------------------------------------------ staleness by level
@settings(max_examples=200, deadline=None)
@given(
    tau=st.integers(0, 6),
    extra=st.integers(0, 6),
    version=st.integers(0, 1000),
    reference=st.integers(0, 1),
    crosses=st.booleans(),
)
def test_a_block_installs_at_the_bound_of_the_widest_level_it_crosses(
    tau: int, extra: int, version: int, reference: int, crosses: bool
) -> None:
    policy = LevelStaleness(Bounded(tau), tau + extra, frozenset({"x"} if crosses else ()))
    install = policy.install_step("x", version, reference)
    within = Bounded(tau).install_step("x", version, reference)
    assert install == (version + max(tau + extra, reference) if crosses else within)
    assert install >= within
    assert policy.name == f"bounded:{tau}" and policy.asynchronous


def test_level_staleness_refuses_what_would_break_one_version() -> None:
    with pytest.raises(ValueError, match="at least the intra-node one"):
        LevelStaleness(Bounded(4), 2, frozenset())
    with pytest.raises(ValueError, match="sync or bounded:TAU within nodes"):
        LevelStaleness(Adaptive(4), 6, frozenset())
    sync = LevelStaleness(Sync(), 2, frozenset({"x"}))
    assert sync.install_step("x", 10, 1) == 12 and sync.install_step("y", 10, 1) == 11
