"""SOAP: Adam in Shampoo's eigenbasis (ALGORITHMS.md §4), as the reference soap.py.

Hot path per block and step: rotate the gradient into the basis, Adam moments
there, rotate the direction back, update, then the factor statistics with the
same raw gradient. Amortized (every f steps): sort each basis by estimated
eigenvalue and take one QR power-iteration step; installing it permutes V and
re-expresses M in the new basis in the same step boundary (§6). The reference
runs the refresh at the end of step v and uses it from step v + 1, so its
staleness is 1.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from runtime.blocking import Block
from runtime.distributed.packing import FieldLayout, ResultLayout
from runtime.execution import ExecutionConfig
from runtime.matrix_functions import (
    eigenbasis,
    is_finite,
    qr_refresh,
    sort_basis_by_estimated_eigenvalues,
)
from runtime.optim.base import BlockedOptimizer, check_positive, check_probability
from runtime.plan.spec import SOAP as SOAP_SPEC
from runtime.plan.spec import BlockConfig, OptimizerSpec
from runtime.state import SlotKind, slot


@dataclass
class SOAPState:
    """M and V are kept in rotated coordinates; Q is None on an unrotated side."""

    L: torch.Tensor | None = slot(SlotKind.FACTOR)
    R: torch.Tensor | None = slot(SlotKind.FACTOR)
    QL: torch.Tensor | None = slot(SlotKind.BASIS)
    QR: torch.Tensor | None = slot(SlotKind.BASIS)
    M: torch.Tensor | None = slot(SlotKind.MOMENT)
    V: torch.Tensor | None = slot(SlotKind.MOMENT)


@dataclass
class BasisRefreshInputs:
    """Factors and bases at version v; a side with Q None is not rotated."""

    L: torch.Tensor | None
    R: torch.Tensor | None
    QL: torch.Tensor | None
    QR: torch.Tensor | None


@dataclass
class BasisRefreshResult:
    """New bases and the column orders applied before the QR step (None: side unchanged)."""

    QL: torch.Tensor | None = None
    QR: torch.Tensor | None = None
    perm_L: torch.Tensor | None = None
    perm_R: torch.Tensor | None = None


def compute_soap_refresh(inputs: BasisRefreshInputs) -> BasisRefreshResult:
    """Sort by diag(QᵀXQ), then Q ← orth(X·Q_sorted), for each rotated side; pure."""
    result = BasisRefreshResult()
    for side in ("L", "R"):
        factor, q = getattr(inputs, side), getattr(inputs, f"Q{side}")
        if q is None or factor is None or not is_finite(factor):
            continue
        q_sorted, permutation = sort_basis_by_estimated_eigenvalues(factor, q)
        q_new = qr_refresh(factor, q_sorted)
        if not is_finite(q_new):
            continue
        setattr(result, f"Q{side}", q_new)
        setattr(result, f"perm_{side}", permutation)
    return result


def basis_refresh_inputs(state: Any) -> BasisRefreshInputs | None:
    """Factors and bases of a SOAP or KL-Shampoo block at version v (None: no side rotated)."""
    if state.QL is None and state.QR is None:
        return None
    return BasisRefreshInputs(state.L, state.R, state.QL, state.QR)


def basis_result_layout(
    spec: OptimizerSpec,
    block: Block,
    config: BlockConfig,
    dtype: torch.dtype,
    *,
    permutations: bool,
) -> ResultLayout:
    """Every field a basis refresh of ``block`` may hold: the new bases of its rotated sides,
    and with ``permutations`` (SOAP) the column orders applied before their QR step."""
    fields = []
    for side, dim in zip(("L", "R"), block.shape, strict=True):
        if spec.rotated(dim, config):
            fields.append(FieldLayout(f"Q{side}", (dim, dim), dtype))
            if permutations:
                fields.append(FieldLayout(f"perm_{side}", (dim,), torch.int64))
    return ResultLayout(tuple(fields))


def rotate_in(x: torch.Tensor, ql: torch.Tensor | None, qr: torch.Tensor | None) -> torch.Tensor:
    """Q_Lᵀ·X·Q_R, skipping unrotated sides."""
    if ql is not None:
        x = ql.T @ x
    if qr is not None:
        x = x @ qr
    return x


def rotate_out(x: torch.Tensor, ql: torch.Tensor | None, qr: torch.Tensor | None) -> torch.Tensor:
    """Q_L·X·Q_Rᵀ, skipping unrotated sides."""
    if ql is not None:
        x = ql @ x
    if qr is not None:
        x = x @ qr.T
    return x


class SOAP(BlockedOptimizer):
    """SOAP with the reference soap.py defaults (§4.4); ``block_size=None`` is unblocked.

    A side longer than ``max_precond_dim`` is not rotated (one-sided SOAP).
    The reference's defaults are already the ones recommended for LLM training
    (the SOAP paper trains language models with them), so ``reference_defaults``
    returns the constructor's own.
    """

    spec = SOAP_SPEC
    block_state_type = SOAPState
    refresh_result_type = BasisRefreshResult
    compute_refresh = compute_soap_refresh

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 3e-3,
        betas: tuple[float, float] = (0.95, 0.95),
        shampoo_beta: float | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        precondition_frequency: int = 10,
        max_precond_dim: int = 10000,
        block_size: int | None = None,
        normalize_grads: bool = False,
        bias_correction: bool = True,
        *,
        execution: ExecutionConfig | None = None,
    ) -> None:
        check_probability("betas[0]", betas[0])
        check_probability("betas[1]", betas[1])
        shampoo_beta = betas[1] if shampoo_beta is None else shampoo_beta
        check_probability("shampoo_beta", shampoo_beta)
        check_positive("eps", eps)
        if not isinstance(precondition_frequency, int) or precondition_frequency < 1:
            raise ValueError(
                f"precondition_frequency must be a positive integer, got {precondition_frequency!r}"
            )
        if max_precond_dim < 0:
            raise ValueError(f"max_precond_dim must be non-negative, got {max_precond_dim}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            shampoo_beta=shampoo_beta,
            eps=eps,
            weight_decay=weight_decay,
            precondition_frequency=precondition_frequency,
            max_precond_dim=max_precond_dim,
            block_size=block_size,
            normalize_grads=normalize_grads,
            bias_correction=bias_correction,
        )
        super().__init__(params, defaults, execution=execution)

    @classmethod
    def reference_defaults(cls) -> dict[str, Any]:
        """The reference soap.py's constructor defaults (§4.4), as keyword arguments."""
        return dict(lr=3e-3, betas=(0.95, 0.95), precondition_frequency=10)

    def _fallback_hyperparameters(self, group: dict[str, Any]) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        return dict(
            beta1=beta1,
            beta2=beta2,
            eps=1e-8,  # ALGORITHMS.md §1.1: the fallback's ε is 1e-8 whatever SOAP's ε
            weight_decay=group["weight_decay"],
            bias_correction=group["bias_correction"],
        )

    def _init_block(self, block: Block, g: torch.Tensor, group: dict[str, Any]) -> SOAPState:
        a, b = g.shape
        w = 1.0 - group["shampoo_beta"]
        dmax = group["max_precond_dim"]
        state = SOAPState(M=torch.zeros_like(g), V=torch.zeros_like(g))
        if a <= dmax:
            state.L = (g @ g.T).mul_(w)
            state.QL = eigenbasis(state.L)
        if b <= dmax:
            state.R = (g.T @ g).mul_(w)
            state.QR = eigenbasis(state.R)
        return state

    def _precondition(
        self,
        block: Block,
        state: SOAPState,
        w: torch.Tensor,
        g: torch.Tensor,
        group: dict[str, Any],
        t: int,
    ) -> None:
        assert state.M is not None and state.V is not None
        beta1, beta2 = group["betas"]
        g_rot = rotate_in(g, state.QL, state.QR)
        state.M.mul_(beta1).add_(g_rot, alpha=1.0 - beta1)
        state.V.mul_(beta2).addcmul_(g_rot, g_rot, value=1.0 - beta2)
        step_size = group["lr"]
        if group["bias_correction"]:
            step_size = step_size * (1.0 - beta2**t) ** 0.5 / (1.0 - beta1**t)
        direction = rotate_out(state.M / (state.V.sqrt() + group["eps"]), state.QL, state.QR)
        if group["normalize_grads"]:
            direction = direction / (1e-30 + direction.square().mean().sqrt())
        w.add_(direction.to(w.dtype), alpha=-step_size)
        if group["weight_decay"] > 0.0:
            w.add_(w, alpha=-group["lr"] * group["weight_decay"])

    def _statistics(
        self, block: Block, state: SOAPState, g: torch.Tensor, group: dict[str, Any], t: int
    ) -> None:
        """§4.3 step 6: with the same raw gradient, after the update."""
        ws = 1.0 - group["shampoo_beta"]
        if state.L is not None:
            state.L.lerp_(g @ g.T, ws)
        if state.R is not None:
            state.R.lerp_(g.T @ g, ws)

    def _refresh_inputs(
        self, state: SOAPState, group: dict[str, Any], t: int
    ) -> BasisRefreshInputs | None:
        return basis_refresh_inputs(state)

    def _result_layout(self, block: Block, config: BlockConfig, dtype: torch.dtype) -> ResultLayout:
        return basis_result_layout(self.spec, block, config, dtype, permutations=True)

    def _install(self, block: Block, state: SOAPState, result: BasisRefreshResult) -> None:
        """Swap in the new bases; permute V and re-express M in the same boundary (§4.3.7)."""
        assert state.M is not None and state.V is not None
        if result.QL is None and result.QR is None:
            return
        m_param_space = rotate_out(state.M, state.QL, state.QR)
        if result.perm_L is not None:
            state.V = state.V.index_select(0, result.perm_L)
            state.QL = result.QL
        if result.perm_R is not None:
            state.V = state.V.index_select(1, result.perm_R)
            state.QR = result.QR
        state.M = rotate_in(m_param_space, state.QL, state.QR)
