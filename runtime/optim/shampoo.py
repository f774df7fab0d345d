"""Shampoo with Distributed Shampoo's semantics (ALGORITHMS.md §3).

Hot path per block and step: factor statistics, grafting second moment, first
moment, preconditioning with the cached inverse roots L̃·M̂·R̃ and, optionally,
Adam grafting of the step's norm. Amortized: the inverse roots, computed at
t0 and every f steps after, before that step's preconditioning (staleness 0
in the synchronous reference).
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
    EighFailure,
    coupled_newton_inverse_root,
    inverse_root,
    is_finite,
)
from runtime.optim.base import BlockedOptimizer, check_positive, check_probability
from runtime.plan.spec import SHAMPOO, BlockConfig
from runtime.state import SlotKind, slot

MAX_CONSECUTIVE_ROOT_FAILURES = 3
"""Distributed Shampoo's tolerance before a failing root becomes an error (§2.2.4)."""


@dataclass
class ShampooState:
    L: torch.Tensor | None = slot(SlotKind.FACTOR)
    R: torch.Tensor | None = slot(SlotKind.FACTOR)
    L_root: torch.Tensor | None = slot(SlotKind.ROOT)
    R_root: torch.Tensor | None = slot(SlotKind.ROOT)
    M: torch.Tensor | None = slot(SlotKind.MOMENT)
    V: torch.Tensor | None = slot(SlotKind.MOMENT)
    root_failures: torch.Tensor | None = slot(SlotKind.MOMENT)


@dataclass
class ShampooRefreshInputs:
    L: torch.Tensor
    R: torch.Tensor
    bias_correction2: float
    root_exponent: float
    eps: float
    solver: str = "eigh"


@dataclass
class ShampooRefreshResult:
    """New inverse roots; a side is None when its computation failed."""

    L_root: torch.Tensor | None = None
    R_root: torch.Tensor | None = None


ROOT_SOLVERS = ("eigh", "newton")


def matrix_inverse_root(factor: torch.Tensor, inputs: ShampooRefreshInputs) -> torch.Tensor:
    """The inverse root of one factor (or a stack) by the configured solver.

    ``eigh`` is §2.2 (spectrum shifted only where min λ < ε); ``newton`` is the
    matmul-only coupled Newton iteration on A + ε·I, for a GPU stream.
    """
    if inputs.solver == "newton":
        return coupled_newton_inverse_root(factor, int(inputs.root_exponent), inputs.eps)
    return inverse_root(factor, inputs.root_exponent, inputs.eps)


def compute_shampoo_roots(inputs: ShampooRefreshInputs) -> ShampooRefreshResult:
    """invroot(L/c2) and invroot(R/c2); pure, safe to run on any thread."""
    result = ShampooRefreshResult()
    for side in ("L", "R"):
        factor = getattr(inputs, side)
        if not is_finite(factor):
            continue
        try:
            root = matrix_inverse_root(factor / inputs.bias_correction2, inputs)
        except EighFailure:
            continue
        setattr(result, f"{side}_root", root)
    return result


class Shampoo(BlockedOptimizer):
    """Blocked Shampoo with defaults for LLM training (the recommended column of §3.3).

    β2 = 0.999 (an EMA, not the reference's running sum, which stops adapting),
    Adam grafting (the step has AdamW's per-block norm, so AdamW's learning
    rates apply), and roots every f = 10 steps from t0 = f (the reference
    recomputes them every step). ``Shampoo(params, **Shampoo.reference_defaults())``
    is Distributed Shampoo's constructor configuration. 1-D parameters use the
    AdamW fallback with β2 = ``grafting_beta2``.
    """

    spec = SHAMPOO
    block_state_type = ShampooState
    refresh_result_type = ShampooRefreshResult
    compute_refresh = compute_shampoo_roots

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
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
        root_solver: str = "eigh",
        *,
        execution: ExecutionConfig | None = None,
    ) -> None:
        check_probability("betas[0]", betas[0])
        check_probability("betas[1]", betas[1], allow_one=True)
        if root_solver not in ROOT_SOLVERS:
            raise ValueError(f"root_solver must be one of {ROOT_SOLVERS}, got {root_solver!r}")
        if root_solver == "newton" and root_exponent != int(root_exponent):
            raise ValueError(
                f"root_solver 'newton' needs an integer root_exponent, got {root_exponent}"
            )
        check_probability("grafting_beta2", grafting_beta2)
        check_positive("eps", eps)
        check_positive("grafting_eps", grafting_eps)
        check_positive("root_exponent", root_exponent)
        if not isinstance(precondition_frequency, int) or precondition_frequency < 1:
            raise ValueError(
                f"precondition_frequency must be a positive integer, got {precondition_frequency!r}"
            )
        t0 = (
            precondition_frequency
            if start_preconditioning_step is None
            else start_preconditioning_step
        )
        if not isinstance(t0, int) or t0 < 1:
            raise ValueError(f"start_preconditioning_step must be a positive integer, got {t0!r}")
        if grafting not in ("none", "adam"):
            raise ValueError(f"grafting must be 'none' or 'adam', got {grafting!r}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            block_size=block_size,
            precondition_frequency=precondition_frequency,
            start_preconditioning_step=t0,
            root_exponent=root_exponent,
            grafting=grafting,
            grafting_beta2=grafting_beta2,
            grafting_eps=grafting_eps,
            bias_correction=bias_correction,
            root_solver=root_solver,
        )
        super().__init__(params, defaults, execution=execution)

    @classmethod
    def reference_defaults(cls) -> dict[str, Any]:
        """Distributed Shampoo's constructor defaults (§3.3), as keyword arguments."""
        return dict(lr=1e-2, betas=(0.9, 1.0), precondition_frequency=1, grafting="none")

    def _fallback_hyperparameters(self, group: dict[str, Any]) -> dict[str, Any]:
        return dict(
            beta1=group["betas"][0],
            beta2=group["grafting_beta2"],
            eps=1e-8,
            weight_decay=group["weight_decay"],
            bias_correction=group["bias_correction"],
        )

    def _init_block(self, block: Block, g: torch.Tensor, group: dict[str, Any]) -> ShampooState:
        a, b = g.shape
        dtype, device = g.dtype, g.device
        return ShampooState(
            L=torch.zeros(a, a, dtype=dtype, device=device),
            R=torch.zeros(b, b, dtype=dtype, device=device),
            L_root=torch.eye(a, dtype=dtype, device=device),
            R_root=torch.eye(b, dtype=dtype, device=device),
            M=torch.zeros_like(g),
            V=torch.zeros_like(g) if group["grafting"] == "adam" else None,
            root_failures=torch.zeros((), dtype=torch.int64, device=g.device),
        )

    def _statistics(
        self, block: Block, state: ShampooState, g: torch.Tensor, group: dict[str, Any], t: int
    ) -> None:
        """§3.2 step 1: statistics and the grafting second moment."""
        assert state.L is not None and state.R is not None
        beta2 = group["betas"][1]
        weight = 1.0 - beta2 if beta2 < 1.0 else 1.0
        if beta2 < 1.0:
            state.L.mul_(beta2)
            state.R.mul_(beta2)
        state.L.addmm_(g, g.T, alpha=weight)
        state.R.addmm_(g.T, g, alpha=weight)
        if state.V is not None:
            beta2g = group["grafting_beta2"]
            state.V.mul_(beta2g).addcmul_(g, g, value=1.0 - beta2g)

    def _refresh_inputs(
        self, state: ShampooState, group: dict[str, Any], t: int
    ) -> ShampooRefreshInputs:
        """§3.2 step 2: the factors of this step over their bias correction."""
        assert state.L is not None and state.R is not None
        beta2 = group["betas"][1]
        c2 = 1.0 - beta2**t if (group["bias_correction"] and beta2 < 1.0) else 1.0
        return ShampooRefreshInputs(
            state.L,
            state.R,
            c2,
            group["root_exponent"],
            group["eps"],
            group.get("root_solver", "eigh"),
        )

    def _precondition(
        self,
        block: Block,
        state: ShampooState,
        w: torch.Tensor,
        g: torch.Tensor,
        group: dict[str, Any],
        t: int,
    ) -> None:
        """§3.2 steps 3–6 with the roots installed for this step."""
        assert state.M is not None and state.L_root is not None and state.R_root is not None
        beta1 = group["betas"][0]
        state.M.mul_(beta1).add_(g, alpha=1.0 - beta1)
        c1 = 1.0 - beta1**t if group["bias_correction"] else 1.0
        m_hat = state.M / c1
        direction = state.L_root @ m_hat @ state.R_root
        if state.V is not None:
            c2g = 1.0 - group["grafting_beta2"] ** t if group["bias_correction"] else 1.0
            adam = m_hat / ((state.V / c2g).sqrt_().add_(group["grafting_eps"]))
            if t < group["start_preconditioning_step"]:
                direction = adam
            else:
                direction = direction * (
                    torch.linalg.norm(adam) / (torch.linalg.norm(direction) + 1e-16)
                )
        if group["weight_decay"] > 0.0:
            direction = direction.add(w, alpha=group["weight_decay"])
        w.add_(direction.to(w.dtype), alpha=-group["lr"])

    def _result_layout(self, block: Block, config: BlockConfig, dtype: torch.dtype) -> ResultLayout:
        """The two inverse roots."""
        a, b = block.shape
        return ResultLayout(
            (FieldLayout("L_root", (a, a), dtype), FieldLayout("R_root", (b, b), dtype))
        )

    def _install(self, block: Block, state: ShampooState, result: ShampooRefreshResult) -> None:
        assert state.root_failures is not None
        failed = False
        for side in ("L", "R"):
            root = getattr(result, f"{side}_root")
            if root is None:
                failed = True
            else:
                setattr(state, f"{side}_root", root)
        if failed:
            state.root_failures += 1
            if int(state.root_failures) > MAX_CONSECUTIVE_ROOT_FAILURES:
                raise RuntimeError(
                    f"Shampoo block {block.id}: inverse root failed {int(state.root_failures)} times in a row"
                    " (non-finite factors or eigh failure); lower the learning rate or raise eps"
                )
        else:
            state.root_failures.zero_()
