"""Pure matrix functions against float64 oracles written here (ALGORITHMS.md §2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from runtime.matrix_functions import (
    EighFailure,
    eigenbasis,
    eigh_with_retry,
    inverse_root,
    qr_refresh,
    sort_basis_by_estimated_eigenvalues,
)


def random_psd(n: int, rank: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, rank, generator=g, dtype=torch.float64)
    return (x @ x.T).to(dtype)


def oracle_inverse_root(a: np.ndarray, root: float, eps: float) -> np.ndarray:
    a = (a + a.T) / 2
    lam, q = np.linalg.eigh(a)
    if lam.min() < eps:
        lam = lam - lam.min() + eps
    return (q * lam ** (-1.0 / root)) @ q.T


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 12),
    rank=st.integers(1, 12),
    seed=st.integers(0, 10_000),
    root=st.sampled_from([1.0, 2.0, 4.0]),
    eps=st.sampled_from([1e-12, 1e-6, 1e-2]),
)
def test_inverse_root_matches_float64_oracle(
    n: int, rank: int, seed: int, root: float, eps: float
) -> None:
    # With a rank-deficient A and a tiny ε the result is dominated by round-off in
    # the null space (condition number ~1/ε); that case is not a test of the code.
    assume(rank >= n or eps >= 1e-6)
    a = random_psd(n, rank, seed)
    got = inverse_root(a, root, eps).numpy()
    want = oracle_inverse_root(a.numpy(), root, eps)
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 1e-7 * scale


def test_inverse_root_is_an_inverse_root() -> None:
    a = random_psd(8, 20, 1)
    r = inverse_root(a, 4.0, 1e-12)
    # (A^(-1/4))^4 A = I for a full-rank A.
    product = torch.linalg.matrix_power(r, 4) @ a
    assert torch.allclose(product, torch.eye(8, dtype=torch.float64), atol=1e-8)


def test_inverse_root_float32_close_to_float64() -> None:
    a = random_psd(16, 32, 2)
    r32 = inverse_root(a.float(), 2.0, 1e-6)
    assert r32.dtype == torch.float32
    r64 = torch.from_numpy(oracle_inverse_root(a.numpy(), 2.0, 1e-6))
    assert torch.allclose(r32.double(), r64, rtol=1e-3, atol=1e-4 * r64.abs().max().item())


def test_eigh_retries_in_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[torch.dtype] = []
    real = torch.linalg.eigh

    def flaky(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(a.dtype)
        if a.dtype == torch.float32:
            raise RuntimeError("linalg.eigh: the algorithm failed to converge")
        return real(a)

    monkeypatch.setattr(torch.linalg, "eigh", flaky)
    a = random_psd(6, 6, 3, torch.float32)
    lam, q = eigh_with_retry(a)
    assert calls == [torch.float32, torch.float64]
    assert lam.dtype == torch.float32 and q.dtype == torch.float32
    assert torch.allclose(q @ torch.diag(lam) @ q.T, a, atol=1e-4)


def test_eigh_failure_is_raised_when_both_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise RuntimeError("no convergence")

    monkeypatch.setattr(torch.linalg, "eigh", broken)
    with pytest.raises(EighFailure):
        inverse_root(random_psd(4, 4, 0), 4.0, 1e-12)


def test_eigenbasis_is_descending_and_orthogonal() -> None:
    a = random_psd(10, 10, 4)
    q = eigenbasis(a)
    estimated = torch.diagonal(q.T @ a @ q)
    assert torch.all(estimated[:-1] >= estimated[1:] - 1e-10)
    assert torch.allclose(q.T @ q, torch.eye(10, dtype=torch.float64), atol=1e-10)
    want = np.sort(np.linalg.eigvalsh(a.numpy()))[::-1]
    assert np.allclose(estimated.numpy(), want, atol=1e-8)


def test_sort_basis_orders_by_estimated_eigenvalue() -> None:
    a = torch.diag(torch.tensor([1.0, 5.0, 3.0], dtype=torch.float64))
    q = torch.eye(3, dtype=torch.float64)
    q_sorted, perm = sort_basis_by_estimated_eigenvalues(a, q)
    assert perm.tolist() == [1, 2, 0]
    assert torch.equal(q_sorted, q[:, [1, 2, 0]])


def test_qr_refresh_converges_to_the_eigenbasis() -> None:
    """Repeated warm-started refreshes are orthogonal iteration: they find the eigenvectors."""
    a = random_psd(6, 6, 5) + torch.diag(torch.arange(6, dtype=torch.float64) * 10)
    q = torch.linalg.qr(
        torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    )[0]
    for _ in range(300):
        q = qr_refresh(a, q)
    assert torch.allclose(q.T @ q, torch.eye(6, dtype=torch.float64), atol=1e-10)
    off_diagonal = q.T @ a @ q - torch.diag(torch.diagonal(q.T @ a @ q))
    assert off_diagonal.abs().max() < 1e-6 * a.abs().max()
