"""The plan (runtime.plan) against the runtime that executes it, and owner assignment.

The runtime's state dataclasses and schedule are checked against the specs
here, so a slot or a due rule that changes on one side and not the other
fails; the simulator reads nothing else.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import SOAP, ExecutionConfig, KLShampoo, Shampoo
from runtime.optim.adamw import AdamWState
from runtime.plan import (
    SPECS,
    AssignmentError,
    BlockConfig,
    BlockWork,
    Phase,
    RefreshSchedule,
    Topology,
    assign_owners,
    spec_of,
)
from runtime.plan.costmodel import CostConfig, block_refresh_flops
from runtime.policies.staleness import Bounded
from runtime.state import slot_kinds
from traces.recorder import Recorder

OPTIMIZERS = {"soap": SOAP, "shampoo": Shampoo, "kl-shampoo": KLShampoo}


def make_optimizer(name: str, rows: int, cols: int, **kwargs: object) -> torch.optim.Optimizer:
    torch.manual_seed(rows * 1000 + cols)
    w = torch.nn.Parameter(torch.randn(rows, cols))
    return OPTIMIZERS[name]([w], **kwargs)  # type: ignore[arg-type]


def one_step(opt: torch.optim.Optimizer) -> None:
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.randn_like(p)
    opt.step()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_slot_kind_of_the_state_class_is_in_the_spec(name: str) -> None:
    cls = OPTIMIZERS[name]
    assert cls.spec is spec_of(name)
    fields = slot_kinds(cls.block_state_type)
    # the largest configuration: every optional slot present
    config = BlockConfig(max_precond_dim=None, grafting=True)
    spec_slots = {s.name: s.kind for s in cls.spec.slots(3, 5, config)}
    assert spec_slots == fields
    assert list(spec_slots) == list(fields), "the spec lists slots in the state class's order"
    assert slot_kinds(AdamWState) == {s.name: s.kind for s in spec_of("adamw").slots(3, 1, config)}


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(sorted(OPTIMIZERS)),
    rows=st.integers(1, 12),
    cols=st.integers(2, 12),
    block_size=st.one_of(st.none(), st.integers(2, 8)),
    limit=st.one_of(st.none(), st.integers(1, 12)),
    grafting=st.booleans(),
)
def test_allocated_state_matches_the_spec_slot_for_slot(
    name: str, rows: int, cols: int, block_size: int | None, limit: int | None, grafting: bool
) -> None:
    kwargs: dict[str, object] = {"block_size": block_size}
    if name == "shampoo":
        kwargs["grafting"] = "adam" if grafting else "none"
    elif limit is not None or name == "kl-shampoo":  # SOAP's limit is an integer
        kwargs["max_precond_dim"] = limit
    opt = make_optimizer(name, rows + 1, cols, **kwargs)  # rows + 1 >= 2: a matrix
    one_step(opt)
    group = opt.param_groups[0]
    for block in opt.blocks:
        state = opt.block_state(block.id)
        if not block.is_matrix:
            continue
        config = opt._block_config(group)
        expected = [(s.name, s.kind, s.shape) for s in opt.spec.slots(*block.shape, config)]
        kinds = slot_kinds(type(state))
        actual = [
            (f.name, kinds[f.name], tuple(getattr(state, f.name).shape))
            for f in dataclasses.fields(state)
            if f.name in kinds and getattr(state, f.name) is not None
        ]
        assert actual == expected
        nbytes = sum(
            t.numel() * t.element_size()
            for f in dataclasses.fields(state)
            if isinstance(t := getattr(state, f.name), torch.Tensor)
        )
        assert nbytes == sum(s.nbytes() for s in opt.spec.slots(*block.shape, config))


def test_reference_staleness_and_phase_order_agree() -> None:
    """τ = 0 exactly when the refresh is computed and installed before preconditioning."""
    for spec in SPECS.values():
        if Phase.REFRESH not in spec.phases:
            continue
        order = {phase: i for i, phase in enumerate(spec.phases)}
        in_step = order[Phase.REFRESH] < order[Phase.INSTALL] < order[Phase.PRECONDITION]
        assert (spec.reference_tau == 0) == in_step, spec.name
        assert order[Phase.STATISTICS] < order[Phase.REFRESH], "roots come from this step's factors"
        assert sorted(spec.phases) == sorted(Phase)


@given(
    f=st.integers(1, 12),
    t0=st.one_of(st.none(), st.integers(1, 30)),
    ordinal=st.integers(0, 40),
    stagger=st.booleans(),
)
def test_schedules(f: int, t0: int | None, ordinal: int, stagger: bool) -> None:
    config = BlockConfig(precondition_frequency=f, start_preconditioning_step=t0, stagger=stagger)
    offset = ordinal % f if stagger else 0
    first = t0 if t0 is not None else f
    for t in range(1, 80):
        soap_due = SPECS["soap"].refresh_due(t, ordinal, config)
        assert soap_due == (t % f == offset)
        shampoo_due = SPECS["shampoo"].refresh_due(t, ordinal, config)
        assert shampoo_due == (t == first or (t > first and t % f == offset))
    assert RefreshSchedule(4, 1, 0).due(5) and not RefreshSchedule(4, 1, 0).due(4)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_the_runtime_submits_exactly_at_the_specs_due_steps(name: str) -> None:
    """Recorded refresh versions per block equal the spec's schedule, staggered too."""
    recorder = Recorder()
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(6, 4)) for _ in range(3)]
    opt = OPTIMIZERS[name](
        params,
        precondition_frequency=3,
        execution=ExecutionConfig(staleness=Bounded(3), workers=1, stagger=True, recorder=recorder),
    )
    steps = 14
    for _ in range(steps):
        one_step(opt)
    opt.close()
    seen = {(s.block, int(s.detail[1:])) for s in recorder.spans if s.name == "snapshot"}
    config = opt._block_config(opt.param_groups[0])
    skip = 1 if opt.spec.skips_first_call else 0
    expected = {
        (block.id, t)
        for ordinal, block in enumerate(b for b in opt.blocks if b.is_matrix)
        for t in range(1, steps - skip + 1)
        if opt.spec.refresh_due(t, ordinal, config)
    }
    assert seen == expected and expected


def test_unknown_optimizer_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="expected one of shampoo, soap, kl-shampoo, adamw"):
        spec_of("lion")


# ----------------------------------------------------------------- ownership
def works(costs: list[float]) -> list[BlockWork]:
    return [BlockWork(f"b{i}", c, 0) for i, c in enumerate(costs)]


@settings(max_examples=200, deadline=None)
@given(
    costs=st.lists(st.floats(0, 1e6, allow_nan=False), min_size=0, max_size=60),
    ranks=st.integers(1, 9),
)
def test_lpt_assigns_every_block_once_within_grahams_bound(costs: list[float], ranks: int) -> None:
    assignment = assign_owners(works(costs), Topology(ranks))
    assert sorted(assignment.owners) == sorted(f"b{i}" for i in range(len(costs)))
    assert all(0 <= r < ranks for r in assignment.owners.values())
    assert sum(assignment.load) == pytest.approx(sum(costs))
    # any list schedule: makespan <= mean load + (1 - 1/m) * largest job
    bound = sum(costs) / ranks + (1 - 1 / ranks) * max(costs, default=0.0)
    assert max(assignment.load) <= bound * (1 + 1e-9) + 1e-9


@settings(max_examples=100, deadline=None)
@given(costs=st.lists(st.integers(1, 50), min_size=1, max_size=7), ranks=st.integers(2, 3))
def test_lpt_is_within_four_thirds_of_the_optimal_makespan(costs: list[int], ranks: int) -> None:
    """Against the optimum found by trying every assignment (small cases only)."""
    optimum = min(
        max(
            sum(c for c, r in zip(costs, owners, strict=True) if r == rank) for rank in range(ranks)
        )
        for owners in itertools.product(range(ranks), repeat=len(costs))
    )
    assignment = assign_owners(works([float(c) for c in costs]), Topology(ranks))
    assert max(assignment.load) <= (4 / 3 - 1 / (3 * ranks)) * optimum + 1e-9


@settings(max_examples=50, deadline=None)
@given(
    costs=st.lists(st.integers(0, 1000), min_size=1, max_size=30),
    ranks=st.integers(1, 6),
    seed=st.randoms(use_true_random=False),
)
def test_assignment_does_not_depend_on_input_order(
    costs: list[int], ranks: int, seed: object
) -> None:
    blocks = works([float(c) for c in costs])
    shuffled = list(blocks)
    seed.shuffle(shuffled)  # type: ignore[attr-defined]
    assert assign_owners(blocks, Topology(ranks)) == assign_owners(shuffled, Topology(ranks))


def test_memory_limit_is_respected_or_named() -> None:
    blocks = [BlockWork(f"b{i}", 10.0 - i, 40) for i in range(5)]
    assignment = assign_owners(blocks, Topology(2), memory_per_rank_bytes=120)
    assert max(assignment.memory_bytes) <= 120
    with pytest.raises(AssignmentError, match=r"block b\d .*fits on no rank"):
        assign_owners(blocks, Topology(2), memory_per_rank_bytes=79)


def test_topology_is_validated() -> None:
    assert Topology(8, 4).nodes == 2 and Topology(8, 4).node_of(5) == 1
    assert Topology(3).local_size == 3
    with pytest.raises(ValueError, match="ranks_per_node"):
        Topology(6, 4)
    with pytest.raises(ValueError, match="world_size"):
        Topology(0)


def test_four_ranks_balance_the_default_gpt_within_ten_percent() -> None:
    """The runtime's own blocks of the default GPT, priced by the plan: max / mean ≤ 1.10."""
    from asteria_bench.config import ModelSection
    from asteria_bench.workload.model import GPT, GPTConfig

    section = ModelSection()
    model = GPT(
        GPTConfig(
            context=section.context,
            n_layer=section.n_layer,
            n_head=section.n_head,
            n_embd=section.n_embd,
        )
    )
    opt = SOAP(model.parameters())  # the default run's SOAP: unblocked
    work = opt.block_work()
    assert work and all(w.cost > 0 for w in work)
    assignment = assign_owners(work, Topology(4, 2))
    assert assignment.imbalance <= 1.10
    # the cost is §8's, block by block
    (first,) = [w for w in work if w.id == work[0].id]
    block = next(b for b in opt.blocks if b.id == first.id)
    assert first.cost == pytest.approx(block_refresh_flops(*block.shape, CostConfig("soap")))


def test_equal_blocks_spread_evenly() -> None:
    blocks = [BlockWork(f"b{i}", 5.0) for i in range(12)]
    for ranks in (1, 2, 3, 4, 6, 12):
        assignment = assign_owners(blocks, Topology(ranks))
        assert set(assignment.load) == {5.0 * 12 / ranks}
        counts = [len(assignment.owned_by(r)) for r in range(ranks)]
        assert counts == [12 // ranks] * ranks
