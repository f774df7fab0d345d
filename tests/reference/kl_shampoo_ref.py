"""KL-Shampoo, float64, written from ALGORITHMS.md §5.2-5.4.

Blocked per §1.2 (``block_size=None`` is unblocked). A block side longer than
``max_precond_dim`` is not rotated: its basis is the identity, it keeps no
factor S, but it keeps its eigenvalue vector d, which then estimates the
diagonal of the factor (§5.4 with Q = I). ``max_precond_dim=None`` rotates
every side (the reference behaviour).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._blocks import (
    DTYPE,
    RefBlock,
    basis,
    float64_copies,
    matrix_shape,
    orth,
    param_blocks,
    rotate_in,
    rotate_out,
    symmetrize,
)
from .adamw_ref import FALLBACK_EPS, AdamWState, adamw_step


@dataclass
class KLBlockState:
    """§5.2: the state of one a×b block; ``None`` marks a side that is not rotated."""

    SL: Tensor | None
    SR: Tensor | None
    QL: Tensor | None
    QR: Tensor | None
    dL: Tensor
    dR: Tensor
    M: Tensor


def clamp_floor(dim: int, clamp_cap: int) -> float:
    """§5.4 step 4 clamp: d ≥ 1/κ² with κ = max(10, min(dim, cap))."""
    kappa = max(10, min(dim, clamp_cap))
    return 1.0 / kappa**2


def whitener(q: Tensor | None, d: Tensor) -> Tensor:
    """§5.2: the stand-in for S⁻¹, Q·diag(1/d)·Qᵀ (diag(1/d) when not rotated)."""
    if q is None:
        return torch.diag(1.0 / d)
    return q @ torch.diag(1.0 / d) @ q.T


def derived_eigenvalue_init(g: Tensor) -> float:
    """c0 from a block's first gradient: its RMS, or the reference's 0.1 when G0 = 0."""
    rms = math.sqrt(float((g * g).sum()) / g.numel())
    return rms if rms > 0 else 0.1


def kl_init_block(
    g: Tensor, beta: float, eigenvalue_init: float | None, max_precond_dim: int | None
) -> KLBlockState:
    """§5.3: S_L = (1−β)·G0·G0ᵀ/b, S_R = (1−β)·G0ᵀ·G0/a, Q = basis(S), d = c0.

    ``eigenvalue_init=None`` takes c0 from G0 (``derived_eigenvalue_init``).
    """
    rows, cols = g.shape
    if eigenvalue_init is None:
        eigenvalue_init = derived_eigenvalue_init(g)
    limit = float("inf") if max_precond_dim is None else max_precond_dim
    left = symmetrize((1 - beta) * (g @ g.T) / cols) if rows <= limit else None
    right = symmetrize((1 - beta) * (g.T @ g) / rows) if cols <= limit else None
    return KLBlockState(
        SL=left,
        SR=right,
        QL=None if left is None else basis(left),
        QR=None if right is None else basis(right),
        dL=torch.full((rows,), eigenvalue_init, dtype=DTYPE),
        dR=torch.full((cols,), eigenvalue_init, dtype=DTYPE),
        M=torch.zeros(rows, cols, dtype=DTYPE),
    )


def kl_step_block(
    w: Tensor,
    g: Tensor,
    state: KLBlockState,
    t: int,
    *,
    lr: float,
    beta1: float,
    beta: float,
    eps: float,
    weight_decay: float,
    precondition_frequency: int,
    clamp: bool,
    clamp_cap: int,
) -> None:
    """§5.4 steps 2-5 for one block at step t (already incremented); edits ``w``."""
    rows, cols = g.shape
    # Step 2: direction from the state before this step (no bias correction).
    state.M = beta1 * state.M + (1 - beta1) * g
    m_rot = rotate_in(state.M, state.QL, state.QR)
    u_rot = m_rot / (torch.sqrt(torch.outer(state.dL, state.dR)) + eps)
    update = rotate_out(u_rot, state.QL, state.QR)
    # Step 3: update, then decoupled decay.
    w.sub_(lr * update)
    w.sub_(lr * weight_decay * w)
    # Step 4: statistics with the current Q and the pre-update d; compute, then write.
    g_hat = rotate_in(g, state.QL, state.QR)
    g_hat_sq = g_hat * g_hat
    new_left = new_right = None
    if state.SL is not None:
        increment = g @ whitener(state.QR, state.dR) @ g.T / cols
        new_left = symmetrize(beta * state.SL + (1 - beta) * increment)
    if state.SR is not None:
        increment = g.T @ whitener(state.QL, state.dL) @ g / rows
        new_right = symmetrize(beta * state.SR + (1 - beta) * increment)
    r = (g_hat_sq / state.dR[None, :]).sum(dim=1) / cols
    c = (g_hat_sq / state.dL[:, None]).sum(dim=0) / rows
    new_dl = beta * state.dL + (1 - beta) * r
    new_dr = beta * state.dR + (1 - beta) * c
    if clamp:
        new_dl = new_dl.clamp(min=clamp_floor(rows, clamp_cap))
        new_dr = new_dr.clamp(min=clamp_floor(cols, clamp_cap))
    state.SL, state.SR, state.dL, state.dR = new_left, new_right, new_dl, new_dr
    # Step 5: amortized refresh, Q ← orth(S·Q); d kept as it is.
    if t % precondition_frequency == 0:
        if state.SL is not None and state.QL is not None:
            state.QL = orth(state.SL @ state.QL)
        if state.SR is not None and state.QR is not None:
            state.QR = orth(state.SR @ state.QR)


class KLShampooReference:
    """KL-Shampoo over a list of tensors; same hyperparameters and defaults as
    ``runtime.KLShampoo`` (the reference KLOpt's are lr=1e-4, betas=(0.9, 0.98), c0=0.1).

    Every parameter's first call only initialises its state (§5.3); vectors use
    the AdamW fallback (§1.1) with the optimizer's β1, β2 and weight decay,
    ε = 1e-8, and the same skipped first call.
    """

    def __init__(
        self,
        params: Sequence[Tensor],
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
    ) -> None:
        self.params = float64_copies(params)
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.beta = betas[1] if shampoo_beta is None else shampoo_beta
        self.eps = eps
        self.weight_decay = weight_decay
        self.frequency = precondition_frequency
        self.eigenvalue_init = eigenvalue_init
        self.clamp = clamp
        self.clamp_cap = clamp_cap
        self.max_precond_dim = max_precond_dim
        self.steps = [0] * len(self.params)
        self.initialised = [False] * len(self.params)
        self.shapes = [matrix_shape(p.shape) for p in self.params]
        self.blocks: list[RefBlock] = []
        for index, shape in enumerate(self.shapes):
            if shape is not None:
                self.blocks.extend(param_blocks(index, shape, block_size))
        self.block_states: dict[str, KLBlockState] = {}
        self.vector_states: dict[int, AdamWState] = {}

    def block_state(self, block_id: str) -> dict[str, Tensor | None]:
        """The proposed accessor: the block's tensors by their §5.2 names."""
        return dict(vars(self.block_states[block_id]))

    def step(self, grads: Sequence[Tensor | None], lr: float | None = None) -> None:
        lr = self.lr if lr is None else lr
        for index, (w, g) in enumerate(zip(self.params, grads, strict=True)):
            if g is None:
                continue
            g = g.to(DTYPE)
            shape = self.shapes[index]
            if not self.initialised[index]:
                self._initialise(index, g)
                continue
            if shape is None:
                adamw_step(
                    w,
                    g,
                    self.vector_states[index],
                    lr=lr,
                    beta1=self.beta1,
                    beta2=self.beta2,
                    eps=FALLBACK_EPS,
                    weight_decay=self.weight_decay,
                )
                continue
            self.steps[index] += 1
            w2, g2 = w.view(shape), g.reshape(shape)
            for block in self.blocks:
                if block.param_index == index:
                    kl_step_block(
                        w2[block.rows, block.cols],
                        g2[block.rows, block.cols],
                        self.block_states[block.id],
                        self.steps[index],
                        lr=lr,
                        beta1=self.beta1,
                        beta=self.beta,
                        eps=self.eps,
                        weight_decay=self.weight_decay,
                        precondition_frequency=self.frequency,
                        clamp=self.clamp,
                        clamp_cap=self.clamp_cap,
                    )

    def _initialise(self, index: int, g: Tensor) -> None:
        """§5.3: the first call for a parameter; t stays 0, no update."""
        self.initialised[index] = True
        shape = self.shapes[index]
        if shape is None:
            self.vector_states[index] = AdamWState.zeros_like(self.params[index])
            return
        g2 = g.reshape(shape)
        for block in self.blocks:
            if block.param_index == index:
                self.block_states[block.id] = kl_init_block(
                    g2[block.rows, block.cols],
                    self.beta,
                    self.eigenvalue_init,
                    self.max_precond_dim,
                )
