"""Drop-in behaviour of Shampoo, SOAP and KL-Shampoo as ``torch.optim.Optimizer``s."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from torch import nn

F64 = torch.float64
NAMES = ["Shampoo", "SOAP", "KLShampoo"]
TRAINING_HPARAMS: dict[str, dict[str, Any]] = {
    "Shampoo": dict(lr=0.01, betas=(0.9, 0.999), grafting="adam", precondition_frequency=5),
    "SOAP": dict(lr=0.01, precondition_frequency=5),
    "KLShampoo": dict(lr=0.01, precondition_frequency=5),
}
BLOCKED_HPARAMS: dict[str, dict[str, Any]] = {
    "Shampoo": dict(
        lr=0.02, betas=(0.9, 0.99), grafting="adam", precondition_frequency=2, block_size=4
    ),
    "SOAP": dict(lr=0.01, precondition_frequency=2, block_size=4),
    "KLShampoo": dict(lr=0.01, precondition_frequency=2, block_size=4),
}


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    import runtime

    return getattr(runtime, name)


def make_params(shapes: Sequence[Sequence[int]], seed: int) -> list[nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(tuple(s), generator=generator, dtype=F64)) for s in shapes]


def grads_for(shapes: Sequence[Sequence[int]], generator: torch.Generator) -> list[torch.Tensor]:
    return [torch.randn(tuple(s), generator=generator, dtype=F64) for s in shapes]


def clones(params: Sequence[nn.Parameter]) -> list[nn.Parameter]:
    return [nn.Parameter(p.detach().clone()) for p in params]


def step_with(optimizer: torch.optim.Optimizer, params, grads) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = None if g is None else g.clone()
    optimizer.step()


@pytest.mark.parametrize("name", NAMES)
def test_is_a_torch_optimizer(name: str) -> None:
    optimizer = optimizer_class(name)(make_params([(3, 2)], seed=0))
    assert isinstance(optimizer, torch.optim.Optimizer)


@pytest.mark.parametrize("name", NAMES)
def test_trains_a_tiny_module_in_a_plain_loop(name: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
    x = torch.randn(64, 6)
    y = x @ torch.randn(6, 2) + 0.1 * torch.randn(64, 2)
    optimizer = optimizer_class(name)(model.parameters(), **TRAINING_HPARAMS[name])
    losses = []
    for _ in range(80):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses[:: len(losses) // 8]
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_zero_grad_clears_gradients(name: str) -> None:
    model = nn.Linear(4, 3)
    optimizer = optimizer_class(name)(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_step_calls_the_closure_and_returns_its_loss(name: str) -> None:
    params = make_params([(3, 2)], seed=1)
    optimizer = optimizer_class(name)(params)
    seen: list[torch.Tensor] = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = (params[0] ** 2).sum()
        loss.backward()
        seen.append(loss)
        return loss

    loss = optimizer.step(closure)
    assert len(seen) == 1 and loss is seen[0]
    assert params[0].grad is not None


@pytest.mark.parametrize("name", NAMES)
def test_each_param_group_uses_its_own_lr(name: str) -> None:
    """Same-shape params in two groups (so a batched implementation sees them together)
    move exactly as they would under two separate optimizers."""
    shapes = [(4, 3), (4, 3)]
    hparams = dict(BLOCKED_HPARAMS[name], block_size=None if name != "Shampoo" else 1024)
    lrs = (0.01, 0.03)
    params = make_params(shapes, seed=2)
    alone = [clones(params[:1]), clones(params[1:])]
    cls = optimizer_class(name)
    kwargs = {k: v for k, v in hparams.items() if k != "lr"}
    grouped = cls(
        [{"params": [params[0]], "lr": lrs[0]}, {"params": [params[1]], "lr": lrs[1]}], **kwargs
    )
    singles = [cls(alone[i], lr=lrs[i], **kwargs) for i in range(2)]
    assert [g["lr"] for g in grouped.param_groups] == list(lrs)
    generator = torch.Generator().manual_seed(3)
    for _ in range(8):
        grads = grads_for(shapes, generator)
        step_with(grouped, params, grads)
        for i in range(2):
            step_with(singles[i], alone[i], grads[i : i + 1])
    for i in range(2):
        torch.testing.assert_close(params[i], alone[i][0], rtol=1e-12, atol=1e-14)
    assert not torch.allclose(params[0], params[1])


@pytest.mark.parametrize("name", NAMES)
def test_lr_scheduler_sets_the_effective_lr(name: str) -> None:
    """LambdaLR at factor 0.5 equals half the lr, bitwise; factor 0 freezes the params
    (update and decoupled decay both scale with the scheduled lr)."""
    shapes = [(5, 4), (3,)]
    hparams = BLOCKED_HPARAMS[name]
    cls = optimizer_class(name)
    params = make_params(shapes, seed=4)
    halved, frozen = clones(params), clones(params)
    plain = cls(params, **dict(hparams, lr=hparams["lr"] / 2))
    scheduled = cls(halved, **hparams)
    halving = torch.optim.lr_scheduler.LambdaLR(scheduled, lambda call: 0.5)
    stopping = cls(frozen, **dict(hparams, weight_decay=0.1))
    stop_after_4 = torch.optim.lr_scheduler.LambdaLR(stopping, lambda call: float(call < 4))
    generator = torch.Generator().manual_seed(5)
    for call in range(8):
        grads = grads_for(shapes, generator)
        before = [p.detach().clone() for p in frozen]
        step_with(plain, params, grads)
        step_with(scheduled, halved, grads)
        step_with(stopping, frozen, grads)
        halving.step()
        stop_after_4.step()
        for a, b in zip(params, halved, strict=True):
            assert torch.equal(a, b), f"call {call}"
        moved = any(not torch.equal(a, b) for a, b in zip(before, frozen, strict=True))
        assert moved == (1 <= call < 4 or (call == 0 and name == "Shampoo")), f"call {call}"


@pytest.mark.parametrize("name", NAMES)
def test_params_without_grad_are_skipped(name: str) -> None:
    """A param whose grad is None is left alone (no update, no decay, no state change);
    the other params move as if it did not exist. When its grads start, it follows the
    trajectory of a fresh optimizer: its step counter t counts its own updates (§0)."""
    shapes = [(4, 3), (3, 3)]
    hparams = dict(BLOCKED_HPARAMS[name], weight_decay=0.1)
    cls = optimizer_class(name)
    params = make_params(shapes, seed=6)
    first_alone = clones(params[:1])
    optimizer = cls(params, **hparams)
    first_only = cls(first_alone, **hparams)
    generator = torch.Generator().manual_seed(7)
    start = params[1].detach().clone()
    for _ in range(4):
        grads = grads_for(shapes, generator)
        step_with(optimizer, params, [grads[0], None])
        step_with(first_only, first_alone, grads[:1])
        assert torch.equal(params[1], start)
    torch.testing.assert_close(params[0], first_alone[0], rtol=1e-12, atol=1e-14)
    second_alone = clones(params[1:])
    second_only = cls(second_alone, **hparams)
    for _ in range(6):
        grads = grads_for(shapes, generator)
        step_with(optimizer, params, grads)
        step_with(second_only, second_alone, grads[1:])
    torch.testing.assert_close(params[1], second_alone[0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("calls_before_save", [1, 5])
def test_state_dict_round_trip_continues_bitwise(name: str, calls_before_save: int) -> None:
    """torch.save → torch.load(weights_only=True) → load_state_dict into a fresh optimizer;
    both then continue identically across further refreshes (f = 2)."""
    shapes = [(6, 5), (3,), (2, 2, 3)]
    hparams = BLOCKED_HPARAMS[name]
    cls = optimizer_class(name)
    params = make_params(shapes, seed=8)
    optimizer = cls(params, **hparams)
    generator = torch.Generator().manual_seed(9)
    for _ in range(calls_before_save):
        step_with(optimizer, params, grads_for(shapes, generator))
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    resumed_params = clones(params)
    resumed = cls(resumed_params, **hparams)
    resumed.load_state_dict(loaded)
    for call in range(6):
        grads = grads_for(shapes, generator)
        step_with(optimizer, params, grads)
        step_with(resumed, resumed_params, grads)
        for index, (a, b) in enumerate(zip(params, resumed_params, strict=True)):
            assert torch.equal(a, b), f"param {index} differs {call + 1} calls after loading"


@pytest.mark.parametrize("name", NAMES)
def test_block_ids_are_deterministic_and_tile_each_matrix(name: str) -> None:
    """§1.2: size-1 dims dropped, trailing dims merged, chunks of B, ids p{i}.r{r}.c{c}
    in row-major order; the same params give the same blocks."""
    shapes = [(7, 5), (4,), (3, 2, 2), (1, 6), (9, 9)]
    matrices = {0: (7, 5), 2: (3, 4), 4: (9, 9)}
    block = 4
    cls = optimizer_class(name)
    hparams = dict(block_size=block)
    first = cls(make_params(shapes, seed=10), **hparams)
    second = cls(make_params(shapes, seed=11), **hparams)
    assert [b.id for b in first.blocks] == [b.id for b in second.blocks]
    ids = [b.id for b in first.blocks]
    assert len(ids) == len(set(ids))
    expected = []
    for index, (rows, cols) in matrices.items():
        for r, r0 in enumerate(range(0, rows, block)):
            for c, c0 in enumerate(range(0, cols, block)):
                rs, cs = slice(r0, min(r0 + block, rows)), slice(c0, min(c0 + block, cols))
                expected.append(
                    (f"p{index}.r{r}.c{c}", index, (rs.start, rs.stop), (cs.start, cs.stop))
                )
    actual = [
        (b.id, b.param_index, (b.rows.start, b.rows.stop), (b.cols.start, b.cols.stop))
        for b in first.blocks
        if b.param_index in matrices
    ]
    assert actual == expected


BAD_HPARAMS = [
    ("lr", dict(lr=-1e-3)),
    ("betas", dict(betas=(1.0, 0.9))),
    ("betas", dict(betas=(-0.1, 0.9))),
    ("betas", dict(betas=(0.9, 1.5))),
    ("block_size", dict(block_size=0)),
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("argument", "hparams"), BAD_HPARAMS)
def test_bad_hyperparameters_raise_naming_the_argument(
    name: str, argument: str, hparams: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match=argument):
        optimizer_class(name)(make_params([(3, 2)], seed=12), **hparams)


@pytest.mark.parametrize("name", ["SOAP", "KLShampoo"])
def test_beta2_of_one_is_rejected_where_it_would_divide_by_eps(name: str) -> None:
    with pytest.raises(ValueError, match="betas"):
        optimizer_class(name)(make_params([(3, 2)], seed=13), betas=(0.9, 1.0))


def test_shampoo_accepts_beta2_of_one_as_running_sums() -> None:
    params = make_params([(3, 2)], seed=14)
    optimizer = optimizer_class("Shampoo")(params, betas=(0.9, 1.0))
    step_with(optimizer, params, [torch.ones(3, 2, dtype=F64)])
    assert torch.isfinite(params[0]).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("max_precond_dim", [None, 2])
@pytest.mark.parametrize("batched", [False, True])
def test_a_step_leaves_the_gradients_as_it_found_them(
    name: str, max_precond_dim: int | None, batched: bool
) -> None:
    """``.grad`` belongs to the caller (a second optimizer, clipping, logging may read it);
    with ``max_precond_dim = 2`` no side of a 4 x 3 matrix rotates, so the rotated
    gradient is the gradient itself, and squaring it in place wrote over ``.grad``."""
    shapes = [(4, 3), (3,)]
    hparams = dict(TRAINING_HPARAMS[name])
    if max_precond_dim is not None and name != "Shampoo":
        hparams["max_precond_dim"] = max_precond_dim
    from runtime import ExecutionConfig

    execution = ExecutionConfig(batched=batched)
    optimizer = optimizer_class(name)(make_params(shapes, seed=8), execution=execution, **hparams)
    generator = torch.Generator().manual_seed(9)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for _ in range(7):  # past a refresh (f = 5)
        grads = grads_for(shapes, generator)
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        optimizer.step()
        for p, g in zip(params, grads, strict=True):
            assert torch.equal(p.grad, g)
