"""SOAP (Adam in Shampoo's eigenbasis), float64, written from ALGORITHMS.md §4.

Blocked per §1.2 (``block_size=None`` is unblocked, the reference behaviour).
A block side longer than ``max_precond_dim`` is not rotated: its basis is the
identity and it keeps no factor (§1.1, §4.1).
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
class SoapBlockState:
    """§4.1: the state of one a×b block; ``None`` marks a side that is not rotated."""

    L: Tensor | None
    R: Tensor | None
    QL: Tensor | None
    QR: Tensor | None
    M: Tensor
    V: Tensor


def soap_init_block(g: Tensor, shampoo_beta: float, max_precond_dim: int) -> SoapBlockState:
    """§4.2: factors from the first gradient, bases from them, zero moments."""
    rows, cols = g.shape
    left = symmetrize((1 - shampoo_beta) * (g @ g.T)) if rows <= max_precond_dim else None
    right = symmetrize((1 - shampoo_beta) * (g.T @ g)) if cols <= max_precond_dim else None
    return SoapBlockState(
        L=left,
        R=right,
        QL=None if left is None else basis(left),
        QR=None if right is None else basis(right),
        M=torch.zeros(rows, cols, dtype=DTYPE),
        V=torch.zeros(rows, cols, dtype=DTYPE),
    )


def sorted_refresh(factor: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    """§4.3 step 7.1-7.3 for one side: returns (new Q, the column permutation).

    Columns of Q are reordered by descending e = diag(Qᵀ·X·Q), then one power
    step with QR: Q ← orth(X·Q_sorted).
    """
    estimates = torch.diag(q.T @ factor @ q)
    order = torch.argsort(estimates, descending=True)
    return orth(factor @ q[:, order]), order


def soap_step_block(
    w: Tensor,
    g: Tensor,
    state: SoapBlockState,
    t: int,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    shampoo_beta: float,
    eps: float,
    weight_decay: float,
    precondition_frequency: int,
    normalize_grads: bool,
    bias_correction: bool,
) -> None:
    """§4.3 steps 1-7 for one block at step t (already incremented); edits ``w``."""
    # Steps 1-2: rotate the gradient, Adam moments in the rotated space.
    g_rot = rotate_in(g, state.QL, state.QR)
    state.M = beta1 * state.M + (1 - beta1) * g_rot
    state.V = beta2 * state.V + (1 - beta2) * g_rot * g_rot
    # Step 3: both bias corrections folded into the step size.
    alpha = lr
    if bias_correction:
        alpha = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
    # Step 4: direction rotated back, optionally normalized to unit RMS (per block).
    update = rotate_out(state.M / (state.V.sqrt() + eps), state.QL, state.QR)
    if normalize_grads:
        update = update / update.square().mean().sqrt()
    # Step 5: update, then decoupled decay.
    w.sub_(alpha * update)
    w.sub_(lr * weight_decay * w)
    # Step 6: statistics with the raw gradient.
    if state.L is not None:
        state.L = symmetrize(shampoo_beta * state.L + (1 - shampoo_beta) * (g @ g.T))
    if state.R is not None:
        state.R = symmetrize(shampoo_beta * state.R + (1 - shampoo_beta) * (g.T @ g))
    # Step 7: amortized refresh; M re-expressed from the old (unsorted) basis, V permuted.
    if t % precondition_frequency == 0:
        m_param = rotate_out(state.M, state.QL, state.QR)
        if state.L is not None and state.QL is not None:
            state.QL, order = sorted_refresh(state.L, state.QL)
            state.V = state.V[order, :]
        if state.R is not None and state.QR is not None:
            state.QR, order = sorted_refresh(state.R, state.QR)
            state.V = state.V[:, order]
        state.M = rotate_in(m_param, state.QL, state.QR)


class SOAPReference:
    """SOAP over a list of tensors; same hyperparameters as ``runtime.SOAP``.

    Every parameter's first call only initialises its state (§4.2); vectors use
    the AdamW fallback (§1.1) with the optimizer's β1, β2 and weight decay,
    ε = 1e-8, and the same skipped first call.
    """

    def __init__(
        self,
        params: Sequence[Tensor],
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
    ) -> None:
        self.params = float64_copies(params)
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.shampoo_beta = betas[1] if shampoo_beta is None else shampoo_beta
        self.eps = eps
        self.weight_decay = weight_decay
        self.frequency = precondition_frequency
        self.max_precond_dim = max_precond_dim
        self.normalize_grads = normalize_grads
        self.bias_correction = bias_correction
        self.steps = [0] * len(self.params)
        self.initialised = [False] * len(self.params)
        self.shapes = [matrix_shape(p.shape) for p in self.params]
        self.blocks: list[RefBlock] = []
        for index, shape in enumerate(self.shapes):
            if shape is not None:
                self.blocks.extend(param_blocks(index, shape, block_size))
        self.block_states: dict[str, SoapBlockState] = {}
        self.vector_states: dict[int, AdamWState] = {}

    def block_state(self, block_id: str) -> dict[str, Tensor | None]:
        """The proposed accessor: the block's tensors by their §4.1 names."""
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
                    bias_correction=self.bias_correction,
                )
                continue
            self.steps[index] += 1
            w2, g2 = w.view(shape), g.reshape(shape)
            for block in self.blocks:
                if block.param_index == index:
                    soap_step_block(
                        w2[block.rows, block.cols],
                        g2[block.rows, block.cols],
                        self.block_states[block.id],
                        self.steps[index],
                        lr=lr,
                        beta1=self.beta1,
                        beta2=self.beta2,
                        shampoo_beta=self.shampoo_beta,
                        eps=self.eps,
                        weight_decay=self.weight_decay,
                        precondition_frequency=self.frequency,
                        normalize_grads=self.normalize_grads,
                        bias_correction=self.bias_correction,
                    )

    def _initialise(self, index: int, g: Tensor) -> None:
        """§4.2: the first call for a parameter; t stays 0, no update."""
        self.initialised[index] = True
        shape = self.shapes[index]
        if shape is None:
            self.vector_states[index] = AdamWState.zeros_like(self.params[index])
            return
        g2 = g.reshape(shape)
        for block in self.blocks:
            if block.param_index == index:
                self.block_states[block.id] = soap_init_block(
                    g2[block.rows, block.cols], self.shampoo_beta, self.max_precond_dim
                )
