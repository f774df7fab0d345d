"""Each optimizer's per-block math, written once more for stacks of same-shape blocks.

A group of n blocks of shape (a, b) holds every slot as one tensor with a
leading block axis: factors (n, a, a), moments (n, a, b), eigenvalue vectors
(n, a). Each function here is the per-block rule of ``runtime.optim.soap``,
``shampoo``, ``kl_shampoo`` or ``adamw`` for a *batch* of such groups (all of
one param group and step): matmuls run once per group, as batched ones (``@``
on 3-D tensors, ``baddbmm_``), and elementwise work (moment and factor EMAs,
square roots, eigenvalue estimates, grafting norms) runs once for the whole
batch with ``torch._foreach_*`` over the groups' stacks. Per-block norms over
several groups are one ``_foreach_norm`` over the blocks' views. The
preconditioning returns each group's update, which the stepper applies with
``torch._foreach_*`` to all groups' block views at once. The operations are the
same and in the same order, so a batch step equals the per-block steps to
round-off (bitwise where the batched kernel sums in the same order).

Refreshes are batched per group (``*_refresh_batched``): batched QR and eigh
over the group's snapshot, returning one per-block result each, the type the
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
def column(batch: list[Slots], name: str) -> list[torch.Tensor]:
    """Slot ``name`` of every group of the batch (a slot every group holds)."""
    out = [s[name] for s in batch]
    assert all(x is not None for x in out), name
    return out  # type: ignore[return-value]


def present(batch: list[Slots], name: str) -> list[torch.Tensor]:
    """Slot ``name`` of the groups that hold it (an unrotated side holds no factor)."""
    return [x for s in batch if (x := s[name]) is not None]


def block_norms(stacks: list[torch.Tensor]) -> torch.Tensor:
    """The Frobenius norm of every block of every stack, in order: one ``_foreach_norm``."""
    return torch.stack(torch._foreach_norm([block for x in stacks for block in x.unbind(0)]))


def per_group(values: torch.Tensor, stacks: list[torch.Tensor]) -> list[torch.Tensor]:
    """One value per block (``block_norms``' order) as (n, 1, 1) per stack, to broadcast."""
    return [x.view(-1, 1, 1) for x in values.split([s.shape[0] for s in stacks])]


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
def ema_(
    average: list[torch.Tensor], x: list[torch.Tensor] | tuple[torch.Tensor, ...], beta: float
) -> None:
    """``average = beta * average + (1 - beta) * x``, in the per-block path's two operations."""
    torch._foreach_mul_(average, beta)
    torch._foreach_add_(average, x, alpha=1.0 - beta)


def ema_square_(average: list[torch.Tensor], x: list[torch.Tensor], beta: float) -> None:
    """``average = beta * average + (1 - beta) * x²``, in the per-block path's two operations."""
    torch._foreach_mul_(average, beta)
    torch._foreach_addcmul_(average, x, x, value=1.0 - beta)


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
    ema_(m, g, beta1)
    ema_square_(v, g, beta2)
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
    s: list[Slots],
    w: list[list[torch.Tensor]],
    g: list[torch.Tensor],
    group: dict[str, Any],
    t: int,
) -> list[Update]:
    m, v = column(s, "M"), column(s, "V")
    beta1, beta2 = group["betas"]
    g_rot = [rotate_in(x, si["QL"], si["QR"]) for si, x in zip(s, g, strict=True)]
    ema_(m, g_rot, beta1)
    ema_square_(v, g_rot, beta2)
    step_size = group["lr"]
    if group["bias_correction"]:
        step_size = step_size * (1.0 - beta2**t) ** 0.5 / (1.0 - beta1**t)
    denominator = torch._foreach_sqrt(v)
    torch._foreach_add_(denominator, group["eps"])
    rotated = torch._foreach_div(m, denominator)
    directions = [rotate_out(x, si["QL"], si["QR"]) for si, x in zip(s, rotated, strict=True)]
    if group["normalize_grads"]:
        rms = [d.square().mean(dim=(-2, -1), keepdim=True).sqrt() for d in directions]
        directions = [d / (1e-30 + r) for d, r in zip(directions, rms, strict=True)]
    return [(d, -step_size, group["lr"] * group["weight_decay"]) for d in directions]


def soap_statistics(s: list[Slots], g: list[torch.Tensor], group: dict[str, Any], t: int) -> None:
    factors, products = [], []
    for si, x in zip(s, g, strict=True):
        if si["L"] is not None:
            factors.append(si["L"])
            products.append(x @ x.mT)
        if si["R"] is not None:
            factors.append(si["R"])
            products.append(x.mT @ x)
    if factors:
        torch._foreach_lerp_(factors, products, 1.0 - group["shampoo_beta"])


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
def shampoo_statistics(
    s: list[Slots], g: list[torch.Tensor], group: dict[str, Any], t: int
) -> None:
    beta2 = group["betas"][1]
    weight = 1.0 - beta2 if beta2 < 1.0 else 1.0
    if beta2 < 1.0:
        torch._foreach_mul_(column(s, "L") + column(s, "R"), beta2)
    for si, x in zip(s, g, strict=True):
        left, right = si["L"], si["R"]
        assert left is not None and right is not None
        left.baddbmm_(x, x.mT, alpha=weight)
        right.baddbmm_(x.mT, x, alpha=weight)
    v = present(s, "V")
    if v:
        beta2g = group["grafting_beta2"]
        ema_square_(v, g, beta2g)


def shampoo_precondition(
    s: list[Slots],
    w: list[list[torch.Tensor]],
    g: list[torch.Tensor],
    group: dict[str, Any],
    t: int,
) -> list[Update]:
    m = column(s, "M")
    beta1 = group["betas"][0]
    ema_(m, g, beta1)
    c1 = 1.0 - beta1**t if group["bias_correction"] else 1.0
    m_hat = torch._foreach_div(m, c1)
    directions = [
        si["L_root"] @ x @ si["R_root"]  # type: ignore[operator]
        for si, x in zip(s, m_hat, strict=True)
    ]
    v = present(s, "V")
    if v:  # Adam grafting: the direction takes Adam's norm, block by block
        c2g = 1.0 - group["grafting_beta2"] ** t if group["bias_correction"] else 1.0
        denominator = torch._foreach_div(v, c2g)
        torch._foreach_sqrt_(denominator)
        torch._foreach_add_(denominator, group["grafting_eps"])
        adam = list(torch._foreach_div(m_hat, denominator))
        if t < group["start_preconditioning_step"]:
            directions = adam
        else:
            ratio = block_norms(adam) / (block_norms(directions) + 1e-16)
            directions = [
                d * k for d, k in zip(directions, per_group(ratio, directions), strict=True)
            ]
    if group["weight_decay"] > 0.0:
        blocks = [block for d in directions for block in d.unbind(0)]
        params = [x for ws in w for x in ws]
        if params[0].dtype != blocks[0].dtype:
            params = [x.to(blocks[0].dtype) for x in params]
        torch._foreach_add_(blocks, params, alpha=group["weight_decay"])
    return [(d, -group["lr"], 0.0) for d in directions]


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
    s: list[Slots],
    w: list[list[torch.Tensor]],
    g: list[torch.Tensor],
    group: dict[str, Any],
    t: int,
) -> list[Update]:
    m, d_left, d_right = column(s, "M"), column(s, "dL"), column(s, "dR")
    beta1 = group["betas"][0]
    ema_(m, g, beta1)
    m_rot = [rotate_in(x, si["QL"], si["QR"]) for si, x in zip(s, m, strict=True)]
    scale = [dl.unsqueeze(-1) * dr.unsqueeze(-2) for dl, dr in zip(d_left, d_right, strict=True)]
    torch._foreach_sqrt_(scale)
    torch._foreach_add_(scale, group["eps"])
    rotated = torch._foreach_div(m_rot, scale)
    directions = [rotate_out(x, si["QL"], si["QR"]) for si, x in zip(s, rotated, strict=True)]
    return [(d, -group["lr"], group["lr"] * group["weight_decay"]) for d in directions]


def kl_statistics(s: list[Slots], g: list[torch.Tensor], group: dict[str, Any], t: int) -> None:
    """All from the current Q and the pre-update d: every input is computed before a write."""
    d_left, d_right = column(s, "dL"), column(s, "dR")
    beta, n = group["shampoo_beta"], len(s)
    g_hat = [rotate_in(x, si["QL"], si["QR"]) for si, x in zip(s, g, strict=True)]
    g_hat_sq = torch._foreach_mul(g_hat, g_hat)
    inverse = torch._foreach_reciprocal(d_left + d_right)
    inv_dl, inv_dr = inverse[:n], inverse[n:]
    root = torch._foreach_sqrt(inverse)
    root_inv_dl, root_inv_dr = root[:n], root[n:]
    factors = present(s, "L") + present(s, "R")
    if factors:
        torch._foreach_mul_(factors, beta)
    for i, (si, x) in enumerate(zip(s, g, strict=True)):
        a, b = x.shape[-2:]
        if si["L"] is not None:  # G·Q_R·diag(d_R^-1/2)
            h = rotate_in(x, None, si["QR"]) * root_inv_dr[i].unsqueeze(-2)
            si["L"].baddbmm_(h, h.mT, alpha=(1.0 - beta) / b)
        if si["R"] is not None:  # Gᵀ·Q_L·diag(d_L^-1/2)
            k = rotate_in(x.mT, None, si["QL"]) * root_inv_dl[i].unsqueeze(-2)
            si["R"].baddbmm_(k, k.mT, alpha=(1.0 - beta) / a)
    r = [(sq @ v.unsqueeze(-1)).squeeze(-1) for sq, v in zip(g_hat_sq, inv_dr, strict=True)]
    c = [(v.unsqueeze(-2) @ sq).squeeze(-2) for sq, v in zip(g_hat_sq, inv_dl, strict=True)]
    rows = [float(x.shape[-2]) for x in g]
    cols = [float(x.shape[-1]) for x in g]
    estimates = torch._foreach_div(r + c, cols + rows)
    d = d_left + d_right
    ema_(d, estimates, beta)
    if group["clamp"]:
        cap = group["clamp_cap"]
        floors = [clamp_floor(int(a), cap) for a in rows] + [clamp_floor(int(b), cap) for b in cols]
        torch._foreach_clamp_min_(d, floors)


# ------------------------------------------------------------------- rules
@dataclass(frozen=True)
class BatchedRule:
    """One optimizer's batched phases and refresh, and the slots they stack."""

    slots: tuple[str, ...]
    read_only: frozenset[str]
    """Slots the hot phases only read (bases, roots): their stacks need no copy back."""
    statistics: Callable[[list[Slots], list[torch.Tensor], dict[str, Any], int], None]
    """A batch's factor statistics: each group's slots and stacked gradient, in place."""
    precondition: Callable[
        [list[Slots], list[list[torch.Tensor]], list[torch.Tensor], dict[str, Any], int],
        list[Update],
    ]
    """A batch's moments and each group's update (its parameters' block views are read only)."""
    refresh: Callable[[Any], list[Any]]
    """One group's refresh: its stacked inputs to one per-block result each."""


RULES: dict[str, BatchedRule] = {
    "soap": BatchedRule(
        ("L", "R", "QL", "QR", "M", "V"),
        frozenset({"QL", "QR"}),
        soap_statistics,
        soap_precondition,
        soap_refresh_batched,
    ),
    "shampoo": BatchedRule(
        ("L", "R", "L_root", "R_root", "M", "V"),
        frozenset({"L_root", "R_root"}),
        shampoo_statistics,
        shampoo_precondition,
        shampoo_refresh_batched,
    ),
    "kl-shampoo": BatchedRule(
        ("L", "R", "QL", "QR", "dL", "dR", "M"),
        frozenset({"QL", "QR"}),
        kl_statistics,
        kl_precondition,
        kl_refresh_batched,
    ),
}
"""The batched rule of each optimizer, by its plan's name."""
