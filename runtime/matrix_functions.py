"""Pure matrix functions for the amortized work of Shampoo-family optimizers.

Every function takes tensors and returns tensors: no optimizer state, no I/O,
no global precision toggles. That is what lets the runtime run them on the
training thread, on a host worker or on a side CUDA stream unchanged.

Precision is explicit: each function computes in ``dtype`` when given (else in
the input's dtype) and returns the input's dtype. Matmuls in float32 run at
full precision as long as the process keeps PyTorch's default
``float32_matmul_precision == "highest"``; ``check_fp32_matmul_precision``
tells the optimizers when a user changed that (ALGORITHMS.md §7.1).
"""

from __future__ import annotations

import torch

__all__ = [
    "EighFailure",
    "check_fp32_matmul_precision",
    "coupled_newton_inverse_root",
    "eigenbasis",
    "eigh_with_retry",
    "inverse_root",
    "is_finite",
    "qr_refresh",
    "sort_basis_by_estimated_eigenvalues",
    "symmetrize",
]


class EighFailure(RuntimeError):
    """eigh failed in float32 and in the float64 retry."""


def symmetrize(a: torch.Tensor) -> torch.Tensor:
    """(A + Aᵀ)/2: accumulation round-off makes factors slightly asymmetric."""
    return (a + a.transpose(-2, -1)) * 0.5


def is_finite(a: torch.Tensor) -> bool:
    return bool(torch.isfinite(a).all())


def check_fp32_matmul_precision() -> str | None:
    """Return a warning text if float32 matmuls may run in TF32 in this process."""
    if torch.get_float32_matmul_precision() != "highest" or (
        torch.cuda.is_available() and torch.backends.cuda.matmul.allow_tf32
    ):
        return (
            "float32 matmuls may use TF32 in this process (torch.set_float32_matmul_precision"
            " is not 'highest'); second-order statistics and eigenvalue estimates lose"
            " precision (ALGORITHMS.md §7.1)"
        )
    return None


def eigh_with_retry(
    a: torch.Tensor, *, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric eigendecomposition (ascending eigenvalues), retried in float64.

    The retry covers LAPACK / cuSOLVER convergence failures on ill-conditioned
    factors, which are the normal state early in training (ALGORITHMS.md §7.2-3).
    Results come back in ``a``'s dtype.
    """
    out_dtype = a.dtype
    work = a if dtype is None else a.to(dtype)
    try:
        eigenvalues, eigenvectors = torch.linalg.eigh(symmetrize(work))
        if is_finite(eigenvalues) and is_finite(eigenvectors):
            return eigenvalues.to(out_dtype), eigenvectors.to(out_dtype)
    except RuntimeError:
        pass
    try:
        eigenvalues, eigenvectors = torch.linalg.eigh(symmetrize(a.to(torch.float64)))
    except RuntimeError as exc:
        raise EighFailure(f"eigh failed in float64 too: {exc}") from exc
    if not (is_finite(eigenvalues) and is_finite(eigenvectors)):
        raise EighFailure("eigh produced non-finite values in float64")
    return eigenvalues.to(out_dtype), eigenvectors.to(out_dtype)


def inverse_root(
    a: torch.Tensor, root: float, epsilon: float, *, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """A^(-1/root) of a symmetric PSD matrix, made safely positive first (§2.2).

    If the smallest eigenvalue is below ``epsilon`` the whole spectrum is shifted
    by ``epsilon - min λ`` (Distributed Shampoo's "perturb before computation");
    otherwise it is used as it is. Raises ``EighFailure`` if no finite result can
    be had; callers keep their previous root in that case.
    """
    if root <= 0:
        raise ValueError(f"root must be positive, got {root}")
    eigenvalues, q = eigh_with_retry(a, dtype=dtype)
    lam_min = eigenvalues.min()
    if lam_min < epsilon:
        eigenvalues = eigenvalues - lam_min + epsilon
    result = (q * eigenvalues.pow(-1.0 / root).unsqueeze(-2)) @ q.transpose(-2, -1)
    if not is_finite(result):
        raise EighFailure("inverse root is not finite")
    return result


def eigenbasis(a: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Eigenvectors of A + 1e-30·I, columns in descending eigenvalue order (§2.4).

    The tiny shift matches the SOAP reference; the descending order is what the
    SOAP and KL-Shampoo references use, so their moments line up column by column.
    """
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    _, q = eigh_with_retry(a + 1e-30 * eye, dtype=dtype)
    # Contiguous, so a basis is bitwise the same wherever a tier stores it.
    return torch.flip(q, dims=[-1]).contiguous()


def sort_basis_by_estimated_eigenvalues(
    a: torch.Tensor, q: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Order q's columns by descending diag(qᵀ A q) (SOAP §4.3 step 7.1-7.2).

    Returns the permutation too, because SOAP must permute its second moment
    along the same axis in the same step boundary.
    """
    estimated = torch.diagonal(q.transpose(-2, -1) @ a @ q, dim1=-2, dim2=-1)
    permutation = torch.argsort(estimated, descending=True)
    return q[:, permutation].contiguous(), permutation


def qr_refresh(a: torch.Tensor, q_prev: torch.Tensor) -> torch.Tensor:
    """One warm-started orthogonal iteration: Q_new = orth(A·Q_prev) (§2.3).

    About one d×d matmul plus one QR, much cheaper than eigh, and it does not
    jump between equivalent bases when eigenvalues are nearly degenerate.
    """
    q, _ = torch.linalg.qr(a @ q_prev)
    return q.contiguous()  # LAPACK returns column-major; tiers store row-major


def coupled_newton_inverse_root(
    a: torch.Tensor,
    root: int,
    epsilon: float,
    *,
    max_iterations: int = 100,
    tolerance: float = 1e-6,
) -> torch.Tensor:
    """(A + ε·I)^(-1/root) by the coupled Newton iteration: matrix products only.

    For a GPU stream, where ``eigh`` is slow and synchronizes: with
    z = (1 + root) / (2·‖A + εI‖_F), X₀ = z^(1/root)·I and M₀ = z·(A + εI),
    each step takes T = ((root + 1)·I − M) / root, X ← X·T, M ← T^root·M, until
    ‖M − I‖_∞ ≤ ``tolerance`` (then X = (A + εI)^(-1/root)). Works on a batch
    (leading dims) as on one matrix; the check of convergence reads the largest
    error over the batch. Unlike ``inverse_root`` the ridge ε is always added
    (Distributed Shampoo's Newton convention), so the two agree where ε is small
    against the spectrum. Raises ``EighFailure`` (the callers' "keep the previous
    root") when the result is not finite.
    """
    if not (isinstance(root, int) and root >= 1):
        raise ValueError(f"root must be a positive integer, got {root}")
    n = a.shape[-1]
    eye = torch.eye(n, dtype=a.dtype, device=a.device)
    ridged = symmetrize(a) + epsilon * eye
    z = (1.0 + root) / (2.0 * torch.linalg.matrix_norm(ridged, keepdim=True))
    x = z.pow(1.0 / root) * eye
    m = z * ridged
    for _ in range(max_iterations):
        t = ((root + 1.0) * eye - m) / root
        x = x @ t
        m = torch.linalg.matrix_power(t, root) @ m
        if float((m - eye).abs().amax()) <= tolerance:
            break
    if not is_finite(x):
        raise EighFailure("coupled Newton inverse root is not finite")
    return x
