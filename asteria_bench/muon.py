"""Muon on the hidden matrices and AdamW on the rest: the baseline users pick instead.

Muon (torch.optim.Muon, torch >= 2.9) orthogonalizes each 2-D update with a
few Newton-Schulz iterations. It is meant for the matrices inside the
transformer blocks only; embeddings, the (tied) head and every vector keep
AdamW, as in the Muon recipe. Muon runs with ``adjust_lr_fn="match_rms_adamw"``
(the update's RMS matched to AdamW's), so one learning rate and one weight
decay serve both parts and a schedule scales them together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from asteria_bench.errors import UserError

MUON_MIN_TORCH = "2.9"


def muon_available() -> bool:
    return hasattr(torch.optim, "Muon")


def require_muon() -> None:
    """One line, naming the option, when this torch has no Muon."""
    if not muon_available():
        raise UserError(
            f"--optimizer muon: needs torch.optim.Muon (torch >= {MUON_MIN_TORCH});"
            f" this is torch {torch.__version__}"
        )


def muon_parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Hidden matrices (2-D weights inside the transformer blocks) for Muon; the rest AdamW.

    Each group carries ``muon`` (True or False), which ``MuonWithAdamW`` splits on.
    Embeddings and the tied head stay with AdamW, decayed; vectors are not decayed.
    """
    hidden: list[torch.nn.Parameter] = []
    other_matrices: list[torch.nn.Parameter] = []
    vectors: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() < 2:
            vectors.append(p)
        elif name.startswith("blocks.") and p.dim() == 2:
            hidden.append(p)
        else:
            other_matrices.append(p)
    groups = [
        {"params": hidden, "weight_decay": weight_decay, "muon": True},
        {"params": other_matrices, "weight_decay": weight_decay, "muon": False},
        {"params": vectors, "weight_decay": 0.0, "muon": False},
    ]
    return [g for g in groups if g["params"]]


class MuonWithAdamW(torch.optim.Optimizer):
    """torch's Muon on the groups marked ``muon``, torch's AdamW on the others.

    ``param_groups`` is the two inner optimizers' groups (the same dicts), so a
    learning-rate schedule that edits them reaches both.
    """

    def __init__(
        self,
        groups: list[dict[str, Any]],
        *,
        lr: float,
        weight_decay: float,
        momentum: float = 0.95,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
    ) -> None:
        require_muon()
        muon_groups = [dict(g) for g in groups if g.get("muon")]
        adamw_groups = [dict(g) for g in groups if not g.get("muon")]
        if not muon_groups:
            raise ValueError("Muon needs at least one hidden 2-D matrix (a group marked muon)")
        for g in muon_groups:
            bad = [tuple(p.shape) for p in g["params"] if p.dim() != 2]
            if bad:
                raise ValueError(f"Muon updates 2-D matrices only, got shapes {bad}")
        defaults = dict(lr=lr, weight_decay=weight_decay)
        super().__init__([dict(g) for g in groups], defaults)
        self.muon = torch.optim.Muon(
            muon_groups,
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            adjust_lr_fn="match_rms_adamw",
        )
        self.adamw = torch.optim.AdamW(
            adamw_groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay
        )
        self.param_groups = [*self.muon.param_groups, *self.adamw.param_groups]

    @property  # type: ignore[override]
    def state(self) -> dict[Any, Any]:
        """Both inner optimizers' per-parameter state (read-only view)."""
        inner = (getattr(self, "muon", None), getattr(self, "adamw", None))
        merged: dict[Any, Any] = {}
        for opt in inner:
            if opt is not None:
                merged.update(opt.state)
        return merged

    @state.setter
    def state(self, value: Any) -> None:
        """torch's constructor assigns an empty state; the inner optimizers own it."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
