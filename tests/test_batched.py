"""Batched execution (``ExecutionConfig(batched=True)``) against the per-block path.

Same math, so the two paths agree to ≤ 1e-6 relative error over many steps,
whatever the shapes (hypothesis), under every placement (state stacked on the
device, or tiers kept per block), under asynchronous staleness and staggering;
refreshes are batched per group but installed per block.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from runtime import SOAP, ExecutionConfig, KLShampoo, Shampoo
from runtime.optim.batched import BatchedStepper, group_blocks
from runtime.optim.batched_rules import batched_inverse_root
from runtime.policies.placement import parse_placement
from runtime.policies.staleness import Bounded
from runtime.tiers import TieredStateStore

F64 = torch.float64
CLASSES = {"Shampoo": Shampoo, "SOAP": SOAP, "KLShampoo": KLShampoo}
HPARAMS: dict[str, dict[str, Any]] = {
    "Shampoo": dict(lr=1e-2, betas=(0.9, 0.99), precondition_frequency=3, weight_decay=0.05),
    "SOAP": dict(lr=1e-2, precondition_frequency=3, weight_decay=0.05),
    "KLShampoo": dict(lr=1e-2, precondition_frequency=3, weight_decay=0.05),
}
SETTINGS = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def run(
    name: str,
    shapes: list[tuple[int, ...]],
    hparams: dict[str, Any],
    execution: ExecutionConfig,
    *,
    steps: int = 12,
    seed: int = 0,
    dtype: torch.dtype = F64,
    skip_grad: tuple[int, int] | None = None,
) -> tuple[list[torch.Tensor], Any]:
    """Step ``name`` on seeded gradients; ``skip_grad=(step, index)`` leaves one grad out."""
    generator = torch.Generator().manual_seed(seed)
    params = [
        torch.nn.Parameter(torch.randn(s, generator=generator, dtype=F64).to(dtype)) for s in shapes
    ]
    optimizer = CLASSES[name](params, **hparams, execution=execution)
    try:
        for step in range(steps):
            for index, p in enumerate(params):
                g = torch.randn(p.shape, generator=generator, dtype=F64).to(dtype)
                p.grad = None if skip_grad == (step, index) else g
            optimizer.step()
    finally:
        optimizer.close()
    return [p.detach().clone() for p in params], optimizer


def assert_paths_agree(
    name: str, shapes: list[tuple[int, ...]], hparams: dict[str, Any], **kw: Any
) -> Any:
    execution = kw.pop("execution", ExecutionConfig())
    per_block, _ = run(name, shapes, hparams, execution, **kw)
    batched_execution = ExecutionConfig(**{**vars(execution), "batched": True})
    batched, optimizer = run(name, shapes, hparams, batched_execution, **kw)
    for index, (a, b) in enumerate(zip(batched, per_block, strict=True)):
        error = relative_error(a, b)
        assert error <= 1e-6, f"{name} param {index} {tuple(a.shape)}: {error:.3e}"
    return optimizer


# ---------------------------------------------------------------- grouping


def test_groups_hold_same_shape_blocks_of_one_param_group() -> None:
    params = [torch.nn.Parameter(torch.zeros(s)) for s in [(8, 8), (8, 8), (8, 5), (3,), (5,)]]
    optimizer = SOAP(
        [{"params": params[:3], "block_size": 4}, {"params": params[3:]}],
        execution=ExecutionConfig(batched=True),
    )
    groups = {g.name: [b.id for b in g.blocks] for g in group_blocks(optimizer)}
    assert groups == {
        "m0:4x4": [f"p{p}.r{r}.c{c}" for p in (0, 1) for r in (0, 1) for c in (0, 1)]
        + ["p2.r0.c0", "p2.r1.c0"],
        "m1:4x1": ["p2.r0.c1", "p2.r1.c1"],
        "v2:0x1": ["p3.r0.c0", "p4.r0.c0"],
    }


# ------------------------------------------------------------ equivalence


@pytest.mark.parametrize("name", sorted(CLASSES))
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_batched_equals_per_block(name: str, dtype: torch.dtype) -> None:
    shapes = [(6, 6), (6, 6), (5, 3), (7,), (5, 3), (4, 2, 2), (6, 6), (7,)]
    assert_paths_agree(name, shapes, {**HPARAMS[name], "block_size": 4}, dtype=dtype, steps=15)


@SETTINGS
@given(
    name=st.sampled_from(sorted(CLASSES)),
    shapes=st.lists(
        st.one_of(
            st.tuples(st.integers(1, 7), st.integers(1, 7)),
            st.tuples(st.integers(1, 7)),
            st.tuples(st.integers(2, 4), st.integers(2, 4), st.integers(1, 2)),
        ),
        min_size=1,
        max_size=5,
    ),
    block_size=st.sampled_from([None, 2, 3, 5]),
    frequency=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_batched_equals_per_block_hypothesis(
    name: str, shapes: list[tuple[int, ...]], block_size: int | None, frequency: int, seed: int
) -> None:
    hparams = {**HPARAMS[name], "block_size": block_size, "precondition_frequency": frequency}
    if name == "Shampoo":
        hparams["block_size"] = block_size or 1024
        hparams["start_preconditioning_step"] = 1
    assert_paths_agree(name, [*shapes, *shapes], hparams, seed=seed, steps=10)


@pytest.mark.parametrize("name", ["KLShampoo", "SOAP"])
def test_groups_rotated_on_different_sides_step_in_one_batch(name: str) -> None:
    """With max_precond_dim = 4 the groups of one batch rotate both sides, one side
    (left or right) or none: the batch's fused ops take only the factors that exist."""
    shapes = [(6, 6), (6, 3), (3, 6), (3, 3), (6, 6), (3, 3), (5,)]
    hparams = {**HPARAMS[name], "max_precond_dim": 4}
    assert_paths_agree(name, shapes, hparams, steps=10)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_a_missing_gradient_splits_the_group_by_step(name: str) -> None:
    """A parameter without a grad on one call is one update behind: its blocks step apart."""
    shapes = [(4, 4), (4, 4), (4, 4)]
    assert_paths_agree(name, shapes, HPARAMS[name], skip_grad=(4, 1), steps=12)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_stagger_and_bounded_staleness(name: str) -> None:
    """Staggered refreshes batch only the blocks due; results install per block, later."""
    execution = ExecutionConfig(staleness=Bounded(2), workers=1, stagger=True)
    shapes = [(4, 4), (4, 4), (4, 4), (4, 4), (5,)]
    optimizer = assert_paths_agree(name, shapes, HPARAMS[name], execution=execution, steps=14)
    assert optimizer.pipeline.pending_count() >= 0


@pytest.mark.parametrize("name", sorted(CLASSES))
@pytest.mark.parametrize("placement", ["device", "host", "lifecycle", "pressure"])
@pytest.mark.parametrize("staleness", ["sync", "bounded"])
def test_every_placement(name: str, placement: str, staleness: str) -> None:
    policy = parse_placement(placement)
    execution = ExecutionConfig(
        placement=None if placement == "device" else policy,
        staleness=Bounded(2) if staleness == "bounded" else ExecutionConfig().staleness,
        device_budget_bytes=20000 if placement == "pressure" else None,
    )
    shapes = [(6, 6), (6, 6), (6, 6), (5, 3), (3,)]  # two matrix groups in one batch
    optimizer = assert_paths_agree(name, shapes, HPARAMS[name], execution=execution, steps=12)
    assert isinstance(optimizer.store, TieredStateStore) == (placement != "device")


@pytest.mark.parametrize("name", sorted(CLASSES))
@pytest.mark.parametrize("budget", ["none", "one group"])
def test_tiered_batches_hold_what_the_device_budget_fits(
    name: str, budget: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a tiered placement a batch takes groups while their working sets fit the budget
    (a group that does not fit beside another steps alone); the math is the per-block math."""
    shapes = [(6, 6), (6, 6), (5, 3), (5, 3), (3,)]
    probe = CLASSES[name](
        [torch.nn.Parameter(torch.zeros(s, dtype=F64)) for s in shapes], **HPARAMS[name]
    )
    block_bytes = {b.id: probe._slot_bytes(b) for b in probe.blocks if b.is_matrix}
    group_6x6 = sum(n for i, n in block_bytes.items() if i.startswith(("p0.", "p1.")))
    limits = {"none": None, "one group": group_6x6}
    execution = ExecutionConfig(
        placement=parse_placement("host"), device_budget_bytes=limits[budget]
    )
    batches: list[list[str]] = []
    original = BatchedStepper._matrix_batch

    def spy(self: BatchedStepper, batch: list[Any], *args: Any) -> None:
        batches.append([part.bg.name for part in batch])
        original(self, batch, *args)

    monkeypatch.setattr(BatchedStepper, "_matrix_batch", spy)
    assert_paths_agree(name, shapes, HPARAMS[name], execution=execution, steps=6)
    stepped = 6 - probe.skips_first_call  # SOAP and KL-Shampoo's first call only initialise
    together = [["m0:6x6", "m1:5x3"]] * stepped
    apart = [["m0:6x6"], ["m1:5x3"]] * stepped
    assert batches == (together if budget == "none" else apart)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_slots_declared_read_only_are_not_written_by_a_hot_step(name: str) -> None:
    """What lets a tiered batch skip copying bases and roots back: a hot step leaves
    the read-only slots bit for bit as they were, and writes the others."""
    optimizer = run(name, [(4, 4), (4, 4), (4, 3)], HPARAMS[name], ExecutionConfig(batched=True))[1]
    for group in optimizer.param_groups:
        group["precondition_frequency"] = 10**9  # no refresh due, none pending (sync)
    stepper = optimizer._batched
    assert isinstance(stepper, BatchedStepper)
    before = {(g.name, k): v.clone() for g in stepper.groups for k, v in g.stacked.items()}
    assert {k for _, k in before} == set(stepper.rule.slots)
    generator = torch.Generator().manual_seed(1)
    for p in (p for group in optimizer.param_groups for p in group["params"]):
        p.grad = torch.randn(p.shape, generator=generator, dtype=F64)
    optimizer.step()
    for g in stepper.groups:
        for slot, stacked in g.stacked.items():
            unchanged = torch.equal(stacked, before[g.name, slot])
            assert unchanged == (slot in stepper.rule.read_only), (g.name, slot)


def test_device_placement_keeps_each_group_stacked() -> None:
    """After a step, a block's state tensors are views of its group's stacked slots."""
    _, optimizer = run(
        "SOAP", [(4, 4), (4, 4)], HPARAMS["SOAP"], ExecutionConfig(batched=True), steps=5
    )
    stepper = optimizer._batched
    assert isinstance(stepper, BatchedStepper)
    group = next(g for g in stepper.groups if g.key.is_matrix)
    for i, block in enumerate(group.blocks):
        state = optimizer.block_state(block.id)
        assert state.M.data_ptr() == group.stacked["M"][i].data_ptr()


def test_parallel_is_refused() -> None:
    with pytest.raises(ValueError, match="batched=True does not support parallel"):
        ExecutionConfig(batched=True, parallel=object())  # type: ignore[arg-type]


# ------------------------------------------------------------- refreshes


def test_batched_inverse_root_is_the_float64_eigh_root() -> None:
    """Per block: λ shifted by ε − min λ only where min λ < ε (§2.2), then λ^(−1/r)."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(5, 6, 4, generator=generator, dtype=F64)
    factors = x @ x.mT  # rank 4 of 6: the shift applies
    factors[0] += 10 * torch.eye(6, dtype=F64)  # full rank, min λ >= 10: no shift
    roots = batched_inverse_root(factors, 4, 1e-3)
    for i in range(5):
        lam, q = torch.linalg.eigh(factors[i])
        if lam.min() < 1e-3:
            lam = lam - lam.min() + 1e-3
        expected = (q * lam.pow(-0.25)) @ q.T
        assert relative_error(roots[i], expected) < 1e-10


# ---------------------------------------------------------------- compile


def test_compile_needs_batched() -> None:
    with pytest.raises(ValueError, match=r"compile=True .* needs batched=True"):
        ExecutionConfig(compile=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CLASSES))
def test_compiled_hot_path_equals_per_block(name: str) -> None:
    """``torch.compile`` of the batched phases, with the learning rate changing every step."""
    shapes = [(6, 6), (6, 6), (5,), (4, 3)]
    generator_seed = 5
    runs = []
    for execution in (ExecutionConfig(), ExecutionConfig(batched=True, compile=True)):
        generator = torch.Generator().manual_seed(generator_seed)
        params = [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in shapes]
        optimizer = CLASSES[name](params, **HPARAMS[name], execution=execution)
        for step in range(8):
            for group in optimizer.param_groups:
                group["lr"] = 1e-2 / (1 + step)
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator)
            optimizer.step()
        runs.append([p.detach().clone() for p in params])
    for index, (a, b) in enumerate(zip(runs[1], runs[0], strict=True)):
        assert relative_error(a, b) <= 1e-6, f"{name} param {index}"


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_checkpoint_of_a_batched_optimizer_resumes_bitwise(name: str, tmp_path: Any) -> None:
    """Saved mid-run (stacked views, refreshes pending under bounded staleness), loaded
    into a fresh batched optimizer: the next steps are those of the uninterrupted run."""
    execution = ExecutionConfig(batched=True, staleness=Bounded(2), workers=1)
    shapes = [(4, 4), (4, 4), (3,)]

    def make(seed: int = 0) -> tuple[list[torch.nn.Parameter], Any]:
        generator = torch.Generator().manual_seed(seed)
        params = [
            torch.nn.Parameter(torch.randn(s, generator=generator, dtype=F64)) for s in shapes
        ]
        return params, CLASSES[name](params, **HPARAMS[name], execution=execution)

    grads = torch.Generator().manual_seed(9)
    sequence = [[torch.randn(s, generator=grads, dtype=F64) for s in shapes] for _ in range(12)]

    def steps(params: list[torch.nn.Parameter], optimizer: Any, part: list[Any]) -> None:
        for gs in part:
            for p, g in zip(params, gs, strict=True):
                p.grad = g.clone()
            optimizer.step()

    params, optimizer = make()
    steps(params, optimizer, sequence)
    expected = [p.detach().clone() for p in params]
    optimizer.close()

    params, optimizer = make()
    steps(params, optimizer, sequence[:7])
    path = tmp_path / "optimizer.pt"
    torch.save({"optimizer": optimizer.state_dict(), "params": [p.detach() for p in params]}, path)
    optimizer.close()
    saved = torch.load(path, weights_only=True)
    params, optimizer = make()
    with torch.no_grad():
        for p, value in zip(params, saved["params"], strict=True):
            p.copy_(value)
    optimizer.load_state_dict(saved["optimizer"])
    steps(params, optimizer, sequence[7:])
    optimizer.close()
    for a, b in zip(params, expected, strict=True):
        assert torch.equal(a.detach(), b)


def test_a_failing_group_refresh_is_rejected_per_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """A group job that raises on its worker: every block of the group keeps its previous
    basis (the per-block rejection, counted once per block) and the run goes on."""
    from runtime.optim import batched_rules

    def fail(inputs: Any) -> list[Any]:
        raise FloatingPointError("synthetic failure")

    monkeypatch.setitem(
        batched_rules.RULES,
        "soap",
        dataclasses.replace(batched_rules.RULES["soap"], refresh=fail),
    )
    execution = ExecutionConfig(batched=True, staleness=Bounded(1), workers=1)
    _, optimizer = run("SOAP", [(4, 4), (4, 4)], HPARAMS["SOAP"], execution, steps=5)
    assert optimizer.rejected_refreshes == 2  # t = 3's refresh, due at t = 4, both blocks
