"""KL-Shampoo: Kronecker factors fitted by KL divergence, no grafting (ALGORITHMS.md §5).

Hot path per block and step: first moment, rotate it into the bases, divide by
√(d_L d_Rᵀ), rotate back, update; then the whitened factor statistics and the
running eigenvalue estimates d, all from the pre-update state. Amortized
(every f steps): Q ← orth(S·Q) per side; d carries over unchanged. Staleness 1
in the synchronous reference.

S⁻¹ is never formed: wherever the math needs it the code uses Q·diag(1/d)·Qᵀ.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from runtime.blocking import Block
from runtime.distributed.packing import ResultLayout
from runtime.execution import ExecutionConfig
from runtime.matrix_functions import eigenbasis, is_finite, qr_refresh
from runtime.optim.base import BlockedOptimizer, check_positive, check_probability
from runtime.optim.soap import (
    BasisRefreshInputs,
    BasisRefreshResult,
    basis_refresh_inputs,
    basis_result_layout,
    rotate_in,
    rotate_out,
)
from runtime.plan.spec import KL_SHAMPOO, BlockConfig
from runtime.state import SlotKind, slot


@dataclass
class KLShampooState:
    """L and R hold S_L and S_R; dL, dR the eigenvalue estimates in the current bases."""

    L: torch.Tensor | None = slot(SlotKind.FACTOR)
    R: torch.Tensor | None = slot(SlotKind.FACTOR)
    QL: torch.Tensor | None = slot(SlotKind.BASIS)
    QR: torch.Tensor | None = slot(SlotKind.BASIS)
    dL: torch.Tensor | None = slot(SlotKind.MOMENT)
    dR: torch.Tensor | None = slot(SlotKind.MOMENT)
    M: torch.Tensor | None = slot(SlotKind.MOMENT)


def compute_kl_refresh(inputs: BasisRefreshInputs) -> BasisRefreshResult:
    """Q ← orth(S·Q) for each rotated side, no sorting (the reference does not sort)."""
    result = BasisRefreshResult()
    for side in ("L", "R"):
        factor, q = getattr(inputs, side), getattr(inputs, f"Q{side}")
        if q is None or factor is None or not is_finite(factor):
            continue
        q_new = qr_refresh(factor, q)
        if is_finite(q_new):
            setattr(result, f"Q{side}", q_new)
    return result


REFERENCE_EIGENVALUE_INIT = 0.1
"""c0 of the reference KLOpt (§5.6); also the fallback when a first gradient is all zero."""


def initial_eigenvalue(g: torch.Tensor, eigenvalue_init: float | None) -> torch.Tensor:
    """c0 for a block whose first gradient is ``g``, as a 0-d tensor (no host sync).

    ``None`` derives it from the gradient: c0 = RMS(G0), so that the first
    direction M/√(d_L·d_Rᵀ) = M/RMS(G0) has Adam's per-layer magnitude whatever
    the gradient scale. A fixed c0 (the reference's 0.1) is far from that scale
    under the usual gradient clipping (entries ~1e-3): the direction starts ~100×
    too small and d, an EMA with β ≈ 0.95–0.98, takes hundreds of steps to get
    there. An all-zero G0 says nothing about the scale and gets the reference c0.
    """
    if eigenvalue_init is not None:
        return torch.tensor(eigenvalue_init, dtype=g.dtype, device=g.device)
    rms = g.square().mean().sqrt()
    return torch.where(rms > 0, rms, torch.full_like(rms, REFERENCE_EIGENVALUE_INIT))


def clamp_floor(dim: int, cap: int) -> float:
    """d ≥ 1/κ² with κ = max(10, min(dim, cap)), i.e. 1/√d ≤ κ (§5.4 step 4)."""
    kappa = max(10, min(dim, cap))
    return 1.0 / (kappa * kappa)


class KLShampoo(BlockedOptimizer):
    """KL-Shampoo (§5), fp32 statistics, with defaults for LLM training.

    The defaults differ from the reference KLOpt's (§5.6) in three values:
    c0 is derived from each block's first gradient (``eigenvalue_init=None``,
    see ``initial_eigenvalue``) instead of 0.1, β2 = 0.95 instead of 0.98 (the
    factors and d follow the gradient scale in ~20 instead of ~50 steps, as
    SOAP's β2 = 0.95), and η = 3e-3 instead of 1e-4 (the direction has Adam's
    magnitude, so AdamW's learning rates apply). ``KLShampoo(params,
    **KLShampoo.reference_defaults())`` is the reference's configuration.

    ``max_precond_dim=None`` rotates every side, as the reference does; a finite
    value leaves longer sides unrotated (Q = I, no factor kept).
    """

    spec = KL_SHAMPOO
    block_state_type = KLShampooState
    refresh_result_type = BasisRefreshResult
    compute_refresh = compute_kl_refresh

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 3e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        shampoo_beta: float | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        precondition_frequency: int = 10,
        eigenvalue_init: float | None = None,
        clamp: bool = True,
        clamp_cap: int = 4000,
        max_precond_dim: int | None = None,
        block_size: int | None = None,
        *,
        execution: ExecutionConfig | None = None,
    ) -> None:
        check_probability("betas[0]", betas[0])
        check_probability("betas[1]", betas[1])
        shampoo_beta = betas[1] if shampoo_beta is None else shampoo_beta
        check_probability("shampoo_beta", shampoo_beta)
        check_positive("eps", eps, allow_zero=True)
        if eigenvalue_init is not None:
            check_positive("eigenvalue_init", eigenvalue_init)
        check_positive("clamp_cap", clamp_cap)
        if not isinstance(precondition_frequency, int) or precondition_frequency < 1:
            raise ValueError(
                f"precondition_frequency must be a positive integer, got {precondition_frequency!r}"
            )
        if max_precond_dim is not None and max_precond_dim < 0:
            raise ValueError(f"max_precond_dim must be non-negative or None, got {max_precond_dim}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            shampoo_beta=shampoo_beta,
            eps=eps,
            weight_decay=weight_decay,
            precondition_frequency=precondition_frequency,
            eigenvalue_init=eigenvalue_init,
            clamp=clamp,
            clamp_cap=clamp_cap,
            max_precond_dim=max_precond_dim,
            block_size=block_size,
        )
        super().__init__(params, defaults, execution=execution)

    @classmethod
    def reference_defaults(cls) -> dict[str, Any]:
        """The reference KLOpt's constructor defaults (§5.6), as keyword arguments."""
        return dict(lr=1e-4, betas=(0.9, 0.98), eigenvalue_init=REFERENCE_EIGENVALUE_INIT)

    def _fallback_hyperparameters(self, group: dict[str, Any]) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        return dict(beta1=beta1, beta2=beta2, eps=1e-8, weight_decay=group["weight_decay"])

    @staticmethod
    def _rotated(dim: int, group: dict[str, Any]) -> bool:
        dmax = group["max_precond_dim"]
        return dmax is None or dim <= dmax

    def _init_block(self, block: Block, g: torch.Tensor, group: dict[str, Any]) -> KLShampooState:
        a, b = g.shape
        w = 1.0 - group["shampoo_beta"]
        c0 = initial_eigenvalue(g, group["eigenvalue_init"])
        state = KLShampooState(
            M=torch.zeros_like(g), dL=c0.expand(a).clone(), dR=c0.expand(b).clone()
        )
        if self._rotated(a, group):
            state.L = (g @ g.T).mul_(w / b)
            state.QL = eigenbasis(state.L)
        if self._rotated(b, group):
            state.R = (g.T @ g).mul_(w / a)
            state.QR = eigenbasis(state.R)
        return state

    def _precondition(
        self,
        block: Block,
        state: KLShampooState,
        w: torch.Tensor,
        g: torch.Tensor,
        group: dict[str, Any],
        t: int,
    ) -> None:
        """§5.4 step 2–3, from the state before this step's statistics."""
        assert state.M is not None and state.dL is not None and state.dR is not None
        beta1 = group["betas"][0]
        state.M.mul_(beta1).add_(g, alpha=1.0 - beta1)
        m_rot = rotate_in(state.M, state.QL, state.QR)
        scale = torch.outer(state.dL, state.dR).sqrt_().add_(group["eps"])
        direction = rotate_out(m_rot / scale, state.QL, state.QR)
        w.add_(direction.to(w.dtype), alpha=-group["lr"])
        if group["weight_decay"] > 0.0:
            w.add_(w, alpha=-group["lr"] * group["weight_decay"])

    def _statistics(
        self, block: Block, state: KLShampooState, g: torch.Tensor, group: dict[str, Any], t: int
    ) -> None:
        """§5.4 step 4: current Q and pre-update d throughout, all computed before written."""
        assert state.dL is not None and state.dR is not None
        beta = group["shampoo_beta"]
        a, b = g.shape
        g_hat = rotate_in(g, state.QL, state.QR)
        g_hat_sq = g_hat.square() if g_hat is g else g_hat.square_()  # g may be p.grad
        inv_dL, inv_dR = state.dL.reciprocal(), state.dR.reciprocal()
        if state.L is not None:
            h = rotate_in(g, None, state.QR) * inv_dR.sqrt()  # G·Q_R·diag(d_R^-1/2)
            state.L.mul_(beta).addmm_(h, h.T, alpha=(1.0 - beta) / b)
        if state.R is not None:
            k = rotate_in(g.T, None, state.QL) * inv_dL.sqrt()  # Gᵀ·Q_L·diag(d_L^-1/2)
            state.R.mul_(beta).addmm_(k, k.T, alpha=(1.0 - beta) / a)
        r = (g_hat_sq @ inv_dR) / b
        c = (inv_dL @ g_hat_sq) / a
        state.dL.mul_(beta).add_(r, alpha=1.0 - beta)
        state.dR.mul_(beta).add_(c, alpha=1.0 - beta)
        if group["clamp"]:
            state.dL.clamp_(min=clamp_floor(a, group["clamp_cap"]))
            state.dR.clamp_(min=clamp_floor(b, group["clamp_cap"]))

    def _refresh_inputs(
        self, state: KLShampooState, group: dict[str, Any], t: int
    ) -> BasisRefreshInputs | None:
        return basis_refresh_inputs(state)

    def _result_layout(self, block: Block, config: BlockConfig, dtype: torch.dtype) -> ResultLayout:
        """New bases of the rotated sides (KL-Shampoo does not sort)."""
        return basis_result_layout(self.spec, block, config, dtype, permutations=False)

    def _install(self, block: Block, state: KLShampooState, result: BasisRefreshResult) -> None:
        """Replace Q only; d carries over unchanged, as in the reference (§6)."""
        if result.QL is not None:
            state.QL = result.QL
        if result.QR is not None:
            state.QR = result.QR
