"""The matmul-only inverse root (coupled Newton) against the float64 eigh oracle, and
Shampoo with ``root_solver="newton"`` on both execution paths."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import ExecutionConfig, Shampoo
from runtime.matrix_functions import EighFailure, coupled_newton_inverse_root

F64 = torch.float64


def ridged_root_oracle(a: torch.Tensor, root: int, eps: float) -> torch.Tensor:
    """(A + εI)^(-1/root) by float64 eigh, per matrix of the batch."""
    eye = torch.eye(a.shape[-1], dtype=F64)
    lam, q = torch.linalg.eigh((a.double() + a.double().mT) / 2 + eps * eye)
    return (q * lam.pow(-1.0 / root).unsqueeze(-2)) @ q.mT


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b).norm() / b.norm()).item()


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(
    n=st.integers(1, 12),
    rank=st.integers(1, 12),
    batch=st.integers(1, 3),
    root=st.sampled_from([2, 4]),
    eps=st.sampled_from([1e-3, 1e-1, 1.0]),
    scale=st.sampled_from([1e-4, 1.0, 1e3]),
    seed=st.integers(0, 2**31 - 1),
)
def test_coupled_newton_is_the_ridged_eigh_root(
    n: int, rank: int, batch: int, root: int, eps: float, scale: float, seed: int
) -> None:
    """Rank-deficient factors of any scale: the ridge ε·I bounds the condition number."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, rank, generator=generator, dtype=F64)
    a = scale * (x @ x.mT)
    expected = ridged_root_oracle(a, root, eps)
    assert relative_error(coupled_newton_inverse_root(a, root, eps), expected) < 1e-6
    condition = (torch.linalg.eigvalsh(a).amax().item() + eps) / eps
    if condition <= 1e4:  # float32 loses accuracy with the condition number
        assert relative_error(coupled_newton_inverse_root(a.float(), root, eps), expected) < 1e-3


def test_non_finite_input_raises_eigh_failure() -> None:
    a = torch.eye(3)
    a[0, 0] = float("nan")
    with pytest.raises(EighFailure):
        coupled_newton_inverse_root(a, 4, 1e-6)


def test_bad_root_solver_or_exponent() -> None:
    p = [torch.nn.Parameter(torch.zeros(3, 3))]
    with pytest.raises(ValueError, match="root_solver must be one of"):
        Shampoo(p, root_solver="cholesky")
    with pytest.raises(ValueError, match="integer root_exponent"):
        Shampoo(p, root_solver="newton", root_exponent=2.5)


def train(solver: str, batched: bool) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    params = [
        torch.nn.Parameter(torch.randn(s, generator=generator, dtype=F64))
        for s in [(6, 6), (6, 6), (5, 4), (3,)]
    ]
    optimizer = Shampoo(
        params,
        lr=1e-2,
        eps=1e-6,
        precondition_frequency=2,
        block_size=4,
        root_solver=solver,
        execution=ExecutionConfig(batched=batched),
    )
    for _ in range(10):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator, dtype=F64)
        optimizer.step()
    return [p.detach().clone() for p in params]


def test_shampoo_newton_roots_per_block_batched_and_against_eigh() -> None:
    """Both paths give the same Newton run; it stays close to the eigh run, whose
    spectrum shift differs from the Newton ridge only by ε against full-rank factors."""
    per_block, batched = train("newton", False), train("newton", True)
    eigh = train("eigh", False)
    for a, b, c in zip(per_block, batched, eigh, strict=True):
        assert relative_error(b, a.double()) <= 1e-6
        assert relative_error(a, c.double()) <= 1e-3
