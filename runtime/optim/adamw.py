"""The AdamW fallback for 1-D parameters (biases, norm gains), ALGORITHMS.md §1.1.

It uses SOAP's conventions (§9.1): ε is added to the *uncorrected* √V, both
bias corrections are folded into the step size, and decoupled weight decay is
applied after the step. SOAP and KL-Shampoo reduce to exactly this when no side
of a block is rotated, so all three optimizers share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime.state import SlotKind, slot


@dataclass
class AdamWState:
    M: torch.Tensor | None = slot(SlotKind.MOMENT)
    V: torch.Tensor | None = slot(SlotKind.MOMENT)


def init_adamw_state(like: torch.Tensor) -> AdamWState:
    return AdamWState(M=torch.zeros_like(like), V=torch.zeros_like(like))


def adamw_step(
    w: torch.Tensor,
    g: torch.Tensor,
    state: AdamWState,
    *,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    bias_correction: bool = True,
) -> None:
    """One update of ``w`` in place; ``step`` is t ≥ 1 after its increment."""
    assert state.M is not None and state.V is not None
    state.M.mul_(beta1).add_(g, alpha=1.0 - beta1)
    state.V.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
    step_size = lr
    if bias_correction:
        step_size = lr * (1.0 - beta2**step) ** 0.5 / (1.0 - beta1**step)
    direction = state.M / state.V.sqrt().add_(eps)
    w.add_(direction.to(w.dtype), alpha=-step_size)
    if weight_decay > 0.0:
        w.add_(w, alpha=-lr * weight_decay)
