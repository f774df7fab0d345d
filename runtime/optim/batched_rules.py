"""Each optimizer's per-block math, written once more for a stack of same-shape blocks.

A group of n blocks of shape (a, b) holds every slot as one tensor with a
leading block axis: factors (n, a, a), moments (n, a, b), eigenvalue vectors
(n, a). Each function here is the per-block rule of ``runtime.optim.soap``,
``shampoo``, ``kl_shampoo`` or ``adamw`` with 2-D matmuls replaced by batched
ones (``@`` on 3-D tensors, ``baddbmm_``) and per-block norms taken over the
last two axes; the preconditioning returns the group's update, which the
stepper applies with ``torch._foreach_*`` to all groups' block views at once. The operations are the same and in the same order, so a group
step equals the per-block steps to round-off (bitwise where the batched
kernel sums in the same order).

Refreshes are batched too (``*_refresh_batched``): batched QR and eigh over
the group's snapshot, returning one per-block result each, the type the
per-block ``_install`` takes. A block whose factor is not finite, or whose
result is not, gets the empty result, as in the per-block functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from runtime.matrix_functions import EighFailure, symmetrize
from runtime.optim.kl_shampoo import clamp_floor
from runtime.optim.shampoo import (
    ShampooRefreshInputs,
    ShampooRefreshResult,
    matrix_inverse_root,
)
from runtime.optim.soap import BasisRefreshInputs, BasisRefreshResult

Slots = dict[str, torch.Tensor | None]
"""A group's stacked slots by field name (None: a side that is not rotated)."""


# ----------------------------------------------------------------- helpers
def rotate_in(x: torch.Tensor, ql: torch.Tensor | None, qr: torch.Tensor | None) -> torch.Tensor:
    """Q_Lᵀ·X·Q_R for every block of the stack, skipping unrotated sides."""
    if ql is not None:
        x = ql.mT @ x
    if qr is not None:
        x = x @ qr
    return x


def rotate_out(x: torch.Tensor, ql: torch.Tensor | None, qr: torch.Tensor | None) -> torch.Tensor:
    """Q_L·X·Q_Rᵀ for every block of the stack, skipping unrotated sides."""
    if ql is not None:
        x = ql @ x
    if qr is not None:
        x = x @ qr.mT
    return x


Update = tuple[torch.Tensor, float, float]
"""A group's parameter update: the stacked direction D, α and the decay (see ``apply_updates``)."""


def apply_updates(updates: list[tuple[list[torch.Tensor], Update]]) -> None:
    """W ← W + α·D, then W ← W − decay·W (decoupled), for every block view of every group.

    Groups with the same α, decay, dtype and device share one ``_foreach`` call:
    a step's parameter updates are a couple of kernels whatever the group count.
    Applied after all groups' phases, which is exact: a block's parameter is
    read only by its own group's preconditioning, before its own update.
    """
    batches: dict[tuple[float, float, torch.dtype, torch.device], tuple[list, list]] = {}
    for w, (direction, alpha, decay) in updates:
        parts = list(direction.unbind(0))
        if parts[0].dtype != w[0].dtype:
            parts = [p.to(w[0].dtype) for p in parts]
        views, deltas = batches.setdefault((alpha, decay, w[0].dtype, w[0].device), ([], []))
        views.extend(w)
        deltas.extend(parts)
    for (alpha, decay, _, _), (views, deltas) in batches.items():
        torch._foreach_add_(views, deltas, alpha=alpha)
        if decay > 0.0:
            torch._foreach_add_(views, views, alpha=-decay)


def finite_blocks(x: torch.Tensor) -> torch.Tensor:
    """One bool per block: all of its entries finite."""
    return torch.isfinite(x).flatten(1).all(1)


# ------------------------------------------------------------------- AdamW
def adamw_step_foreach(
    w: list[torch.Tensor],
    g: list[torch.Tensor],
    m: list[torch.Tensor],
    v: list[torch.Tensor],
    *,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    bias_correction: bool = True,
) -> None:
    """``runtime.optim.adamw.adamw_step`` on lists of tensors (one kernel per operation)."""
    torch._foreach_mul_(m, beta1)
    torch._foreach_add_(m, g, alpha=1.0 - beta1)
    torch._foreach_mul_(v, beta2)
    torch._foreach_addcmul_(v, g, g, value=1.0 - beta2)
    step_size = lr
    if bias_correction:
        step_size = lr * (1.0 - beta2**step) ** 0.5 / (1.0 - beta1**step)
    denominator = torch._foreach_sqrt(v)
    torch._foreach_add_(denominator, eps)
    direction = list(torch._foreach_div(m, denominator))
    if direction[0].dtype != w[0].dtype:
        direction = [d.to(w[0].dtype) for d in direction]
    torch._foreach_add_(w, direction, alpha=-step_size)
    if weight_decay > 0.0:
        torch._foreach_add_(w, w, alpha=-lr * weight_decay)


# -------------------------------------------------------------------- SOAP
def soap_precondition(
    s: Slots, w: list[torch.Tensor], g: torch.Tensor, group: dict[str, Any], t: int
) -> Update:
    m, v = s["M"], s["V"]
    assert m is not None and v is not None
    beta1, beta2 = group["betas"]
    g_rot = rotate_in(g, s["QL"], s["QR"])
    m.mul_(beta1).add_(g_rot, alpha=1.0 - beta1)
    v.mul_(beta2).addcmul_(g_rot, g_rot, value=1.0 - beta2)
    step_size = group["lr"]
    if group["bias_correction"]:
        step_size = step_size * (1.0 - beta2**t) ** 0.5 / (1.0 - beta1**t)
    direction = rotate_out(m / (v.sqrt() + group["eps"]), s["QL"], s["QR"])
    if group["normalize_grads"]:
        rms = direction.square().mean(dim=(-2, -1), keepdim=True).sqrt()
        direction = direction / (1e-30 + rms)
    return direction, -step_size, group["lr"] * group["weight_decay"]


def soap_statistics(s: Slots, g: torch.Tensor, group: dict[str, Any], t: int) -> None:
    ws = 1.0 - group["shampoo_beta"]
    if s["L"] is not None:
        s["L"].lerp_(g @ g.mT, ws)
    if s["R"] is not None:
        s["R"].lerp_(g.mT @ g, ws)


def soap_refresh_batched(inputs: BasisRefreshInputs) -> list[BasisRefreshResult]:
    """Sort each basis by diag(QᵀXQ), then Q ← orth(X·Q_sorted): batched QR."""
    return _basis_refresh(inputs, sort=True)


def kl_refresh_batched(inputs: BasisRefreshInputs) -> list[BasisRefreshResult]:
    """Q ← orth(S·Q) per rotated side, no sorting: batched QR."""
    return _basis_refresh(inputs, sort=False)


def _basis_refresh(inputs: BasisRefreshInputs, *, sort: bool) -> list[BasisRefreshResult]:
    present = [x for x in (inputs.QL, inputs.QR) if x is not None]
    results = [BasisRefreshResult() for _ in range(present[0].shape[0])] if present else []
    for side in ("L", "R"):
        factor, q = getattr(inputs, side), getattr(inputs, f"Q{side}")
        if q is None or factor is None:
            continue
        permutation = None
        if sort:
            estimated = torch.diagonal(q.mT @ factor @ q, dim1=-2, dim2=-1)
            permutation = torch.argsort(estimated, dim=-1, descending=True)
            q = torch.gather(q, -1, permutation.unsqueeze(-2).expand_as(q))
        q_new = torch.linalg.qr(factor @ q)[0].contiguous()
        ok = (finite_blocks(factor) & finite_blocks(q_new)).tolist()
        for i, good in enumerate(ok):
            if good:
                setattr(results[i], f"Q{side}", q_new[i])
                if permutation is not None:
                    setattr(results[i], f"perm_{side}", permutation[i])
    return results


# ----------------------------------------------------------------- Shampoo
def shampoo_statistics(s: Slots, g: torch.Tensor, group: dict[str, Any], t: int) -> None:
    left, right = s["L"], s["R"]
    assert left is not None and right is not None
    beta2 = group["betas"][1]
    weight = 1.0 - beta2 if beta2 < 1.0 else 1.0
    if beta2 < 1.0:
        left.mul_(beta2)
        right.mul_(beta2)
    left.baddbmm_(g, g.mT, alpha=weight)
    right.baddbmm_(g.mT, g, alpha=weight)
    if s["V"] is not None:
        beta2g = group["grafting_beta2"]
        s["V"].mul_(beta2g).addcmul_(g, g, value=1.0 - beta2g)


def shampoo_precondition(
    s: Slots, w: list[torch.Tensor], g: torch.Tensor, group: dict[str, Any], t: int
) -> Update:
    m, left_root, right_root = s["M"], s["L_root"], s["R_root"]
    assert m is not None and left_root is not None and right_root is not None
    beta1 = group["betas"][0]
    m.mul_(beta1).add_(g, alpha=1.0 - beta1)
    c1 = 1.0 - beta1**t if group["bias_correction"] else 1.0
    m_hat = m / c1
    direction = left_root @ m_hat @ right_root
    if s["V"] is not None:
        c2g = 1.0 - group["grafting_beta2"] ** t if group["bias_correction"] else 1.0
        adam = m_hat / ((s["V"] / c2g).sqrt_().add_(group["grafting_eps"]))
        if t < group["start_preconditioning_step"]:
            direction = adam
        else:
            norms = torch.linalg.norm(adam, dim=(-2, -1), keepdim=True)
            direction = direction * (
                norms / (torch.linalg.norm(direction, dim=(-2, -1), keepdim=True) + 1e-16)
            )
    if group["weight_decay"] > 0.0:
        direction = direction.add(torch.stack(w).to(direction.dtype), alpha=group["weight_decay"])
    return direction, -group["lr"], 0.0


def shampoo_refresh_batched(inputs: ShampooRefreshInputs) -> list[ShampooRefreshResult]:
    """invroot(L/c2), invroot(R/c2) by one batched eigh (or Newton iteration) per side.

    Blocks whose factor is not finite get no root (kept by the install, counted
    as a failure); a block whose batched root is not finite is retried alone
    by the per-block ``inverse_root`` (with its float64 eigh retry).
    """
    n = inputs.L.shape[0]
    results = [ShampooRefreshResult() for _ in range(n)]
    for side in ("L", "R"):
        factor = getattr(inputs, side) / inputs.bias_correction2
        finite = finite_blocks(factor)
        eye = torch.eye(factor.shape[-1], dtype=factor.dtype, device=factor.device)
        safe = torch.where(finite[:, None, None], factor, eye)
        try:
            roots: torch.Tensor | None = (
                matrix_inverse_root(safe, inputs)
                if inputs.solver == "newton"
                else batched_inverse_root(safe, inputs.root_exponent, inputs.eps)
            )
            assert roots is not None
            ok = (finite & finite_blocks(roots)).tolist()
        except (RuntimeError, EighFailure):  # the batch failed: every block alone
            roots, ok = None, [False] * n
        for i, (good, is_finite) in enumerate(zip(ok, finite.tolist(), strict=True)):
            if good and roots is not None:
                setattr(results[i], f"{side}_root", roots[i])
            elif is_finite:
                try:
                    root = matrix_inverse_root(factor[i], inputs)
                except EighFailure:
                    continue
                setattr(results[i], f"{side}_root", root)
    return results


def batched_inverse_root(a: torch.Tensor, root: float, epsilon: float) -> torch.Tensor:
    """A^(-1/root) of every matrix of the stack, with §2.2's per-block spectrum shift."""
    eigenvalues, q = torch.linalg.eigh(symmetrize(a))
    lam_min = eigenvalues.min(dim=-1, keepdim=True).values
    eigenvalues = torch.where(lam_min < epsilon, eigenvalues - lam_min + epsilon, eigenvalues)
    return (q * eigenvalues.pow(-1.0 / root).unsqueeze(-2)) @ q.mT


# -------------------------------------------------------------- KL-Shampoo
def kl_precondition(
    s: Slots, w: list[torch.Tensor], g: torch.Tensor, group: dict[str, Any], t: int
) -> Update:
    m, d_left, d_right = s["M"], s["dL"], s["dR"]
    assert m is not None and d_left is not None and d_right is not None
    beta1 = group["betas"][0]
    m.mul_(beta1).add_(g, alpha=1.0 - beta1)
    m_rot = rotate_in(m, s["QL"], s["QR"])
    scale = (d_left.unsqueeze(-1) * d_right.unsqueeze(-2)).sqrt_().add_(group["eps"])
    direction = rotate_out(m_rot / scale, s["QL"], s["QR"])
    return direction, -group["lr"], group["lr"] * group["weight_decay"]


def kl_statistics(s: Slots, g: torch.Tensor, group: dict[str, Any], t: int) -> None:
    d_left, d_right = s["dL"], s["dR"]
    assert d_left is not None and d_right is not None
    beta = group["shampoo_beta"]
    a, b = g.shape[-2:]
    g_hat_sq = rotate_in(g, s["QL"], s["QR"]).square_()
    inv_dl, inv_dr = d_left.reciprocal(), d_right.reciprocal()
    if s["L"] is not None:
        h = rotate_in(g, None, s["QR"]) * inv_dr.sqrt().unsqueeze(-2)
        s["L"].mul_(beta).baddbmm_(h, h.mT, alpha=(1.0 - beta) / b)
    if s["R"] is not None:
        k = rotate_in(g.mT, None, s["QL"]) * inv_dl.sqrt().unsqueeze(-2)
        s["R"].mul_(beta).baddbmm_(k, k.mT, alpha=(1.0 - beta) / a)
    r = (g_hat_sq @ inv_dr.unsqueeze(-1)).squeeze(-1) / b
    c = (inv_dl.unsqueeze(-2) @ g_hat_sq).squeeze(-2) / a
    d_left.mul_(beta).add_(r, alpha=1.0 - beta)
    d_right.mul_(beta).add_(c, alpha=1.0 - beta)
    if group["clamp"]:
        d_left.clamp_(min=clamp_floor(a, group["clamp_cap"]))
        d_right.clamp_(min=clamp_floor(b, group["clamp_cap"]))


# ------------------------------------------------------------------- rules
@dataclass(frozen=True)
class BatchedRule:
    """One optimizer's batched phases and refresh, and the slots they stack."""

    slots: tuple[str, ...]
    statistics: Callable[[Slots, torch.Tensor, dict[str, Any], int], None]
    precondition: Callable[[Slots, list[torch.Tensor], torch.Tensor, dict[str, Any], int], Update]
    refresh: Callable[[Any], list[Any]]


RULES: dict[str, BatchedRule] = {
    "soap": BatchedRule(
        ("L", "R", "QL", "QR", "M", "V"), soap_statistics, soap_precondition, soap_refresh_batched
    ),
    "shampoo": BatchedRule(
        ("L", "R", "L_root", "R_root", "M", "V"),
        shampoo_statistics,
        shampoo_precondition,
        shampoo_refresh_batched,
    ),
    "kl-shampoo": BatchedRule(
        ("L", "R", "QL", "QR", "dL", "dR", "M"), kl_statistics, kl_precondition, kl_refresh_batched
    ),
}
"""The batched rule of each optimizer, by its plan's name."""
