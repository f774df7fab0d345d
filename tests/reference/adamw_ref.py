"""AdamW with SOAP's conventions, the 1-D fallback of all three optimizers.

ALGORITHMS.md §1.1 (fallback hyperparameters), §4.3 steps 2-5 with Q = I, and
§9 item 1: ε is added to the *uncorrected* √V, both bias corrections are folded
into the step size α = η·√(1 − β2^t)/(1 − β1^t), and the decoupled decay
W ← W − η·λ_wd·W is applied *after* the step. This is not ``torch.optim.AdamW``
(which puts ε on the corrected √V and decays before the step).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._blocks import DTYPE, float64_copies

FALLBACK_EPS = 1e-8
"""§1.1: the fallback's ε is 1e-8 for all three optimizers, whatever their own ε."""


@dataclass
class AdamWState:
    """First and second moment of one tensor and its own step counter t (§0)."""

    m: Tensor
    v: Tensor
    t: int = 0

    @classmethod
    def zeros_like(cls, w: Tensor) -> AdamWState:
        return cls(torch.zeros_like(w), torch.zeros_like(w))


def adamw_step(
    w: Tensor,
    g: Tensor,
    state: AdamWState,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    bias_correction: bool = True,
) -> None:
    """One AdamW step with SOAP's conventions (§4.3 steps 1-5 with identity bases); edits ``w``."""
    state.t += 1
    t = state.t
    state.m = beta1 * state.m + (1 - beta1) * g
    state.v = beta2 * state.v + (1 - beta2) * g * g
    alpha = lr
    if bias_correction:
        alpha = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
    w.sub_(alpha * (state.m / (state.v.sqrt() + eps)))
    w.sub_(lr * weight_decay * w)


class AdamWReference:
    """AdamW (SOAP conventions) over a list of tensors, float64.

    ``skip_first=True`` reproduces SOAP's and KL-Shampoo's first call (§4.2,
    §5.3): it only creates zero moments; t stays 0 and the tensor is unchanged.
    """

    def __init__(
        self,
        params: Sequence[Tensor],
        *,
        lr: float,
        betas: tuple[float, float],
        eps: float = FALLBACK_EPS,
        weight_decay: float = 0.0,
        skip_first: bool = False,
        bias_correction: bool = True,
    ) -> None:
        self.params = float64_copies(params)
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.skip_first = skip_first
        self.bias_correction = bias_correction
        self.states: list[AdamWState | None] = [None] * len(self.params)

    def step(self, grads: Sequence[Tensor | None], lr: float | None = None) -> None:
        lr = self.lr if lr is None else lr
        for index, (w, g) in enumerate(zip(self.params, grads, strict=True)):
            if g is None:
                continue
            state = self.states[index]
            if state is None:
                state = self.states[index] = AdamWState.zeros_like(w)
                if self.skip_first:
                    continue
            adamw_step(
                w,
                g.to(DTYPE),
                state,
                lr=lr,
                beta1=self.betas[0],
                beta2=self.betas[1],
                eps=self.eps,
                weight_decay=self.weight_decay,
                bias_correction=self.bias_correction,
            )
