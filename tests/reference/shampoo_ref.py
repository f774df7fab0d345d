"""Blocked Shampoo (Distributed Shampoo semantics), float64, written from ALGORITHMS.md §3.

Slow on purpose: one plain loop over parameters and blocks, no batching, no
failure handling (§2.2 step 4 is out of scope for a reference).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._blocks import DTYPE, RefBlock, float64_copies, matrix_shape, param_blocks, symmetrize
from .adamw_ref import FALLBACK_EPS, AdamWState, adamw_step


def invroot(matrix: Tensor, root: float, eps: float) -> Tensor:
    """§2.2 steps 1-3: Q·diag(λ^(−1/r))·Qᵀ of the symmetrized matrix.

    If min λ < ε the spectrum is shifted to λ − min λ + ε ("perturb before
    computation"); otherwise it is used unchanged.
    """
    eigenvalues, vectors = torch.linalg.eigh(symmetrize(matrix))
    smallest = eigenvalues.min()
    if smallest < eps:
        eigenvalues = eigenvalues - smallest + eps
    return vectors @ torch.diag(eigenvalues.pow(-1.0 / root)) @ vectors.T


@dataclass
class ShampooBlockState:
    """§3.1: the state of one a×b block."""

    L: Tensor
    R: Tensor
    L_root: Tensor
    R_root: Tensor
    M: Tensor
    V: Tensor

    @classmethod
    def fresh(cls, rows: int, cols: int) -> ShampooBlockState:
        return cls(
            L=torch.zeros(rows, rows, dtype=DTYPE),
            R=torch.zeros(cols, cols, dtype=DTYPE),
            L_root=torch.eye(rows, dtype=DTYPE),
            R_root=torch.eye(cols, dtype=DTYPE),
            M=torch.zeros(rows, cols, dtype=DTYPE),
            V=torch.zeros(rows, cols, dtype=DTYPE),
        )


class ShampooReference:
    """Shampoo over a list of tensors; same hyperparameters and defaults as ``runtime.Shampoo``.

    Matrices (after §1.1 reshaping) are blocked per §1.2 and stepped per §3.2;
    vectors use the AdamW fallback (§1.1) with β2 = ``grafting_beta2`` and
    ε = 1e-8. Shampoo does not skip its first call.
    """

    def __init__(
        self,
        params: Sequence[Tensor],
        lr: float = 3e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-12,
        weight_decay: float = 0.0,
        block_size: int | None = 1024,
        precondition_frequency: int = 10,
        start_preconditioning_step: int | None = None,
        root_exponent: float = 4,
        grafting: str = "adam",
        grafting_beta2: float = 0.999,
        grafting_eps: float = 1e-8,
        bias_correction: bool = True,
    ) -> None:
        if grafting not in ("none", "adam"):
            raise ValueError(f"grafting must be 'none' or 'adam', got {grafting!r}")
        self.params = float64_copies(params)
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.frequency = precondition_frequency
        self.start = (
            precondition_frequency
            if start_preconditioning_step is None
            else start_preconditioning_step
        )
        self.root = root_exponent
        self.grafting = grafting == "adam"
        self.grafting_beta2 = grafting_beta2
        self.grafting_eps = grafting_eps
        self.bias_correction = bias_correction
        self.steps = [0] * len(self.params)
        self.shapes = [matrix_shape(p.shape) for p in self.params]
        self.blocks: list[RefBlock] = []
        self.block_states: dict[str, ShampooBlockState] = {}
        self.vector_states: dict[int, AdamWState] = {}
        for index, shape in enumerate(self.shapes):
            if shape is None:
                self.vector_states[index] = AdamWState.zeros_like(self.params[index])
                continue
            for block in param_blocks(index, shape, block_size):
                self.blocks.append(block)
                rows = block.rows.stop - block.rows.start
                cols = block.cols.stop - block.cols.start
                self.block_states[block.id] = ShampooBlockState.fresh(rows, cols)

    def block_state(self, block_id: str) -> dict[str, Tensor]:
        """The proposed accessor: the block's tensors by their §3.1 names."""
        state = self.block_states[block_id]
        return dict(vars(state))

    def step(self, grads: Sequence[Tensor | None], lr: float | None = None) -> None:
        lr = self.lr if lr is None else lr
        for index, (w, g) in enumerate(zip(self.params, grads, strict=True)):
            if g is None:
                continue
            g = g.to(DTYPE)
            shape = self.shapes[index]
            if shape is None:
                adamw_step(
                    w,
                    g,
                    self.vector_states[index],
                    lr=lr,
                    beta1=self.beta1,
                    beta2=self.grafting_beta2,
                    eps=FALLBACK_EPS,
                    weight_decay=self.weight_decay,
                    bias_correction=self.bias_correction,
                )
                continue
            self.steps[index] += 1
            t = self.steps[index]
            w2, g2 = w.view(shape), g.reshape(shape)
            for block in self.blocks:
                if block.param_index == index:
                    self._step_block(
                        w2[block.rows, block.cols],
                        g2[block.rows, block.cols],
                        self.block_states[block.id],
                        t,
                        lr,
                    )

    def _roots_due(self, t: int) -> bool:
        """§3.2 step 2: roots at t = t0 and at every later multiple of f."""
        return t == self.start or (t > self.start and t % self.frequency == 0)

    def _step_block(
        self, w: Tensor, g: Tensor, state: ShampooBlockState, t: int, lr: float
    ) -> None:
        """§3.2 steps 1-6 for one block; edits the block view ``w`` in place."""
        beta2 = self.beta2
        weight = 1 - beta2 if beta2 < 1 else 1.0
        # Step 1: statistics, and the grafting second moment.
        state.L = symmetrize(beta2 * state.L + weight * (g @ g.T))
        state.R = symmetrize(beta2 * state.R + weight * (g.T @ g))
        if self.grafting:
            gb2 = self.grafting_beta2
            state.V = gb2 * state.V + (1 - gb2) * g * g
        # Step 2: amortized inverse roots, inside the step, before preconditioning.
        if self._roots_due(t):
            c2 = 1 - beta2**t if (beta2 < 1 and self.bias_correction) else 1.0
            state.L_root = invroot(state.L / c2, self.root, self.eps)
            state.R_root = invroot(state.R / c2, self.root, self.eps)
        # Step 3: first moment.
        state.M = self.beta1 * state.M + (1 - self.beta1) * g
        m_hat = state.M / (1 - self.beta1**t) if self.bias_correction else state.M
        # Steps 4-5: directions and their combination.
        shampoo_dir = state.L_root @ m_hat @ state.R_root
        if self.grafting:
            v_corr = 1 - self.grafting_beta2**t if self.bias_correction else 1.0
            adam_dir = m_hat / ((state.V / v_corr).sqrt() + self.grafting_eps)
            if t < self.start:
                direction = adam_dir
            else:
                scale = torch.linalg.norm(adam_dir) / (torch.linalg.norm(shampoo_dir) + 1e-16)
                direction = scale * shampoo_dir
        else:
            direction = shampoo_dir
        # Step 6: decoupled weight decay folded into D, then the update.
        direction = direction + self.weight_decay * w
        w.sub_(lr * direction)


__all__ = ["ShampooBlockState", "ShampooReference", "invroot"]
