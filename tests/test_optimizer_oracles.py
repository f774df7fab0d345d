"""ALGORITHMS.md §9 oracles 1-6 and 8, each checked on its own terms.

Every oracle runs against the real optimizer and against the float64
reference of tests/reference, so a failure on one side only points at that
side. The AdamW, inverse roots and slicing used as expected values are written
here again, independently of both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import torch
from torch import Tensor

try:
    from reference import (
        KLShampooReference,
        ReferenceOptimizer,
        ShampooReference,
        SOAPReference,
    )
except ModuleNotFoundError:  # tests/ became a package
    from tests.reference import (
        KLShampooReference,
        ReferenceOptimizer,
        ShampooReference,
        SOAPReference,
    )

F64 = torch.float64
IMPLEMENTATIONS = ["runtime", "runtime-batched", "reference"]
REFERENCES = {"Shampoo": ShampooReference, "SOAP": SOAPReference, "KLShampoo": KLShampooReference}


def make_optimizer(impl: str, name: str, params: Sequence[torch.nn.Parameter], **hparams: Any):
    """The real optimizer (per-block or batched), or the reference driven through the same
    parameters."""
    if impl.startswith("runtime"):
        import runtime

        execution = runtime.ExecutionConfig(batched=impl == "runtime-batched")
        return getattr(runtime, name)(params, **hparams, execution=execution)
    reference = REFERENCES[name]([p.detach() for p in params], **hparams)
    return ReferenceOptimizer(params, reference)


def field(state: Any, *names: str) -> Tensor:
    """A tensor of ``optimizer.block_state(id)``, by attribute or key; first name that exists."""
    for name in names:
        if isinstance(state, Mapping) and name in state:
            return state[name]
        if not isinstance(state, Mapping) and hasattr(state, name):
            return getattr(state, name)
    raise AssertionError(f"block state {type(state).__name__} has none of {names}")


def parameters(shapes: Sequence[Sequence[int]], seed: int, dtype=F64) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(tuple(s), generator=generator, dtype=F64).to(dtype))
        for s in shapes
    ]


def set_grads(params: Sequence[torch.nn.Parameter], grads: Sequence[Tensor]) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = g.to(p.dtype).clone()


def relative_error(actual: Tensor, expected: Tensor) -> float:
    actual, expected = actual.detach().to(F64), expected.detach().to(F64)
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-300)).item()


class SoapConventionAdamW:
    """AdamW as §9.1 states it: ε on the uncorrected √V, both corrections in α, decay after."""

    def __init__(self, w: Tensor, lr: float, betas: tuple[float, float], eps: float, wd: float):
        self.w = w.detach().to(F64).clone()
        self.lr, (self.b1, self.b2), self.eps, self.wd = lr, betas, eps, wd
        self.m = torch.zeros_like(self.w)
        self.v = torch.zeros_like(self.w)
        self.t = 0

    def step(self, g: Tensor) -> Tensor:
        self.t += 1
        g = g.to(F64)
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g.square()
        step_size = self.lr * math.sqrt(1 - self.b2**self.t) / (1 - self.b1**self.t)
        self.w = self.w - step_size * self.m / (self.v.sqrt() + self.eps)
        self.w = self.w - self.lr * self.wd * self.w
        return self.w


# ------------------------------------------------------------------ oracle 1


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_oracle1_soap_without_rotated_sides_is_soap_convention_adamw(
    impl: str, dtype: torch.dtype, rtol: float
) -> None:
    """§9.1 with max_precond_dim = 0 (no side rotates); a 1-D param and a 3-D param too.

    The first call of every parameter only initialises SOAP's state, so AdamW sees
    the gradients from the second call on.
    """
    shapes = [(5, 3), (4, 6), (2, 3, 2), (7,)]
    hp = dict(lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    params = parameters(shapes, seed=101, dtype=dtype)
    optimizer = make_optimizer(
        impl, "SOAP", params, precondition_frequency=2, max_precond_dim=0, **hp
    )
    adams = [
        SoapConventionAdamW(p, hp["lr"], hp["betas"], hp["eps"], hp["weight_decay"]) for p in params
    ]
    starts = [p.detach().clone() for p in params]
    generator = torch.Generator().manual_seed(102)
    for call in range(15):
        grads = [torch.randn(s, generator=generator, dtype=F64).to(dtype) for s in shapes]
        set_grads(params, grads)
        optimizer.step()
        for index, (p, adam, g) in enumerate(zip(params, adams, grads, strict=True)):
            if call == 0:
                assert torch.equal(p, starts[index]), "the first SOAP call must not move params"
                continue
            expected = adam.step(g)
            moved = (expected - starts[index].to(F64)).abs().max().item()
            error = (p.detach().to(F64) - expected).abs().max().item()
            assert error <= rtol * moved + 1e-7 * (dtype == torch.float32), (
                f"param {index} call {call}: error {error:.3e}, moved {moved:.3e}"
            )


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_oracle1_soap_with_frozen_identity_bases_is_soap_convention_adamw(impl: str) -> None:
    """§9.1 with bases that do rotate: a first gradient whose statistics are diagonal with
    distinct descending entries gives Q_L, Q_R = signed identities (eigh of a diagonal
    matrix is exact), and a huge precondition_frequency freezes them. Adam commutes with
    sign flips, so SOAP equals AdamW to round-off."""
    shapes = [(4, 4), (5, 4), (3, 4), (6,)]
    hp = dict(lr=0.02, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05)
    params = parameters(shapes, seed=103)
    optimizer = make_optimizer(impl, "SOAP", params, precondition_frequency=10**6, **hp)
    adams = [
        SoapConventionAdamW(p, hp["lr"], hp["betas"], hp["eps"], hp["weight_decay"]) for p in params
    ]
    first = []
    for shape in shapes:
        g0 = torch.zeros(shape, dtype=F64)
        for i in range(min(shape)):
            g0[(i, i) if len(shape) == 2 else (i,)] = 4.0 - i
        first.append(g0)
    set_grads(params, first)
    optimizer.step()
    generator = torch.Generator().manual_seed(104)
    for call in range(1, 16):
        grads = [torch.randn(s, generator=generator, dtype=F64) for s in shapes]
        set_grads(params, grads)
        optimizer.step()
        for index, (p, adam, g) in enumerate(zip(params, adams, grads, strict=True)):
            expected = adam.step(g)
            error = (p.detach() - expected).abs().max().item()
            assert error <= 1e-13, f"param {index} call {call}: error {error:.3e}"


# ------------------------------------------------------------------ oracle 2


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", [(5, 5), (4, 6)])
def test_oracle2_soap_is_adamw_on_the_rotated_parameter(impl: str, shape: tuple[int, int]) -> None:
    """§9.2: with Q_L, Q_R fixed (read from the optimizer after its first call, and frozen by
    a precondition_frequency beyond the run), each SOAP step on W equals an AdamW step on
    Q_Lᵀ·W·Q_R, rotated back."""
    hp = dict(lr=0.03, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    params = parameters([shape], seed=201)
    optimizer = make_optimizer(impl, "SOAP", params, precondition_frequency=1000, **hp)
    generator = torch.Generator().manual_seed(202)
    set_grads(params, [torch.randn(shape, generator=generator, dtype=F64)])
    optimizer.step()
    state = optimizer.block_state("p0.r0.c0")
    q_left = field(state, "QL").detach().clone()
    q_right = field(state, "QR").detach().clone()
    for q in (q_left, q_right):
        assert relative_error(q.T @ q, torch.eye(q.shape[0], dtype=F64)) < 1e-12
    adam = SoapConventionAdamW(q_left.T @ params[0].detach() @ q_right, **_adam_args(hp))
    for call in range(1, 11):
        g = torch.randn(shape, generator=generator, dtype=F64)
        set_grads(params, [g])
        optimizer.step()
        rotated = adam.step(q_left.T @ g @ q_right)
        expected = q_left @ rotated @ q_right.T
        assert relative_error(params[0], expected) < 1e-12, f"call {call}"
    assert torch.equal(field(optimizer.block_state("p0.r0.c0"), "QL"), q_left)


def _adam_args(hp: dict[str, Any]) -> dict[str, Any]:
    return dict(lr=hp["lr"], betas=hp["betas"], eps=hp["eps"], wd=hp["weight_decay"])


# ------------------------------------------------------------------ oracle 3


def shifted_inverse_root(matrix: Tensor, root: float, eps: float, rule: str = "spec") -> Tensor:
    """L^(−1/r) by float64 eigh. ``rule="spec"`` is §2.2: λ − min λ + ε when min λ < ε,
    else λ unchanged; "always" shifts unconditionally and "clamp" takes max(λ, ε) (the
    wrong readings, used only to show that a case can tell them apart)."""
    eigenvalues, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    if rule == "clamp":
        eigenvalues = eigenvalues.clamp_min(eps)
    elif rule == "always" or eigenvalues.min() < eps:
        eigenvalues = eigenvalues - eigenvalues.min() + eps
    return (vectors * eigenvalues.pow(-1.0 / root)) @ vectors.T


def designed_gradient(shape: tuple[int, int], singular_values: list[float], seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    left, _ = torch.linalg.qr(torch.randn(shape[0], shape[0], generator=generator, dtype=F64))
    right, _ = torch.linalg.qr(torch.randn(shape[1], shape[1], generator=generator, dtype=F64))
    k = len(singular_values)
    return left[:, :k] @ torch.diag(torch.tensor(singular_values, dtype=F64)) @ right[:, :k].T


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("eps", [1e-12, 1e-3, 0.5])
def test_oracle3_shampoo_step_is_the_closed_form(impl: str, eps: float) -> None:
    """§9.3: f = 1, t0 = 1, β2 = 1, β1 = 0, no grafting: ΔW = −η·L^(−1/4)·G·R^(−1/4) with
    L, R the running sums. The first gradient of the square param has singular values
    (2, 1, 0.3, 0.05): ε = 1e-3 leaves its spectrum unshifted, ε = 0.5 shifts it, and the
    (5, 3) param is rank-deficient at first, so the shift always applies there."""
    shapes = [(4, 4), (5, 3)]
    lr = 0.1
    params = parameters(shapes, seed=301)
    optimizer = make_optimizer(
        impl,
        "Shampoo",
        params,
        lr=lr,
        betas=(0.0, 1.0),
        eps=eps,
        precondition_frequency=1,
        start_preconditioning_step=1,
        grafting="none",
        weight_decay=0.0,
    )
    history: list[list[Tensor]] = [[] for _ in shapes]
    generator = torch.Generator().manual_seed(302)
    for call in range(6):
        grads = [torch.randn(s, generator=generator, dtype=F64) for s in shapes]
        if call == 0:
            grads[0] = designed_gradient(shapes[0], [2.0, 1.0, 0.3, 0.05], seed=303)
        before = [p.detach().clone() for p in params]
        set_grads(params, grads)
        optimizer.step()
        for index, g in enumerate(grads):
            history[index].append(g)
            left = sum(x @ x.T for x in history[index])
            right = sum(x.T @ x for x in history[index])
            expected = (
                -lr * shifted_inverse_root(left, 4, eps) @ g @ shifted_inverse_root(right, 4, eps)
            )
            delta = params[index].detach() - before[index]
            assert relative_error(delta, expected) < 1e-9, f"param {index} call {call}"
            if call == 0 and index == 0 and eps > 1e-6:
                other = shifted_inverse_root(left, 4, eps, rule="clamp" if eps > 0.1 else "always")
                other_step = -lr * other @ g @ shifted_inverse_root(right, 4, eps)
                assert relative_error(other_step, expected) > 1e-3, "case cannot see the shift rule"


# ------------------------------------------------------------------ oracle 4


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_oracle4_grafted_direction_has_the_adam_norm_per_block(impl: str) -> None:
    """§9.4: for t ≥ t0, ‖D − λ_wd·W‖_F equals ‖A‖_F of the Adam graft, block by block;
    for t < t0 the direction is A itself. D is read back from the parameter change."""
    shapes = [(7, 5), (4, 4)]
    block, lr, wd, start = 3, 0.1, 0.05, 3
    beta1, gbeta2, geps = 0.9, 0.95, 1e-6
    params = parameters(shapes, seed=401)
    optimizer = make_optimizer(
        impl,
        "Shampoo",
        params,
        lr=lr,
        betas=(beta1, 0.99),
        weight_decay=wd,
        block_size=block,
        precondition_frequency=2,
        start_preconditioning_step=start,
        grafting="adam",
        grafting_beta2=gbeta2,
        grafting_eps=geps,
    )
    m = [torch.zeros(s, dtype=F64) for s in shapes]
    v = [torch.zeros(s, dtype=F64) for s in shapes]
    generator = torch.Generator().manual_seed(402)
    preconditioned = False
    for t in range(1, 13):
        grads = [torch.randn(s, generator=generator, dtype=F64) for s in shapes]
        before = [p.detach().clone() for p in params]
        set_grads(params, grads)
        optimizer.step()
        for index, g in enumerate(grads):
            m[index] = beta1 * m[index] + (1 - beta1) * g
            v[index] = gbeta2 * v[index] + (1 - gbeta2) * g * g
            m_hat = m[index] / (1 - beta1**t)
            adam = m_hat / ((v[index] / (1 - gbeta2**t)).sqrt() + geps)
            w_old = before[index]
            direction = (w_old - params[index].detach()) / lr - wd * w_old
            rows, cols = shapes[index]
            for r0 in range(0, rows, block):
                for c0 in range(0, cols, block):
                    cut = (slice(r0, r0 + block), slice(c0, c0 + block))
                    d, a = direction[cut], adam[cut]
                    where = f"param {index} block ({r0}, {c0}) t {t}"
                    if t < start:
                        assert relative_error(d, a) < 1e-10, where
                        continue
                    assert d.norm().item() == pytest.approx(a.norm().item(), rel=1e-10), where
                    preconditioned |= relative_error(d, a) > 1e-3
    assert preconditioned, "Shampoo's direction never differed from the graft"


# ------------------------------------------------------------------ oracle 5


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_oracle5_kl_shampoo_factors_reach_the_kl_fixed_point(impl: str) -> None:
    """§9.5: feeding one G again and again (β = 0.5, f = 1), S_L·b → G·S_R⁻¹·Gᵀ and
    S_R·a → Gᵀ·S_L⁻¹·G, and d → the eigenvalues of S in the converged bases.

    A single repeated G only has a fixed point when it is square and full rank (for a ≠ b
    G·S_R⁻¹·Gᵀ is singular), so G is 4×4 with singular values (2, 1.5, 1, 0.6). At the
    fixed point the direction U = S_L^(−1/2)·M·S_R^(−1/2) with M = G satisfies U·Uᵀ = b·I,
    which is checked from the parameter change alone.
    """
    n, lr = 4, 1e-3
    g = designed_gradient((n, n), [2.0, 1.5, 1.0, 0.6], seed=501)
    params = [torch.nn.Parameter(torch.zeros(n, n, dtype=F64))]
    optimizer = make_optimizer(
        impl,
        "KLShampoo",
        params,
        lr=lr,
        betas=(0.5, 0.9),
        shampoo_beta=0.5,
        weight_decay=0.0,
        precondition_frequency=1,
    )
    for _ in range(80):
        before = params[0].detach().clone()
        set_grads(params, [g])
        optimizer.step()
    state = optimizer.block_state("p0.r0.c0")
    s_left, s_right = field(state, "SL", "L").to(F64), field(state, "SR", "R").to(F64)
    q_left, q_right = field(state, "QL").to(F64), field(state, "QR").to(F64)
    d_left, d_right = field(state, "dL").to(F64), field(state, "dR").to(F64)
    assert relative_error(s_left * n, g @ torch.linalg.inv(s_right) @ g.T) < 1e-8
    assert relative_error(s_right * n, g.T @ torch.linalg.inv(s_left) @ g) < 1e-8
    assert relative_error(q_left.T @ s_left @ q_left, torch.diag(d_left)) < 1e-8
    assert relative_error(q_right.T @ s_right @ q_right, torch.diag(d_right)) < 1e-8
    direction = (before - params[0].detach()) / lr
    assert relative_error(direction @ direction.T, n * torch.eye(n, dtype=F64)) < 1e-6


# ------------------------------------------------------------------ oracle 6

BLOCKING_CASES = {
    "Shampoo": (dict(lr=0.05, grafting="adam", betas=(0.9, 0.99), precondition_frequency=3), 1024),
    "SOAP": (dict(lr=0.01, precondition_frequency=3), None),
    "KLShampoo": (dict(lr=0.01, precondition_frequency=3), None),
}


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("name", sorted(BLOCKING_CASES))
def test_oracle6_one_block_per_matrix_is_bitwise_unblocked(impl: str, name: str) -> None:
    """§9.6: with B ≥ max(a, b) blocked and unblocked runs are identical, bit for bit."""
    shapes = [(5, 4), (6,), (3, 2, 2)]
    hparams, unblocked = BLOCKING_CASES[name]
    runs = []
    for block_size in (5, unblocked):
        params = parameters(shapes, seed=601)
        runs.append((params, make_optimizer(impl, name, params, block_size=block_size, **hparams)))
    generator = torch.Generator().manual_seed(602)
    for call in range(12):
        grads = [torch.randn(s, generator=generator, dtype=F64) for s in shapes]
        for params, optimizer in runs:
            set_grads(params, grads)
            optimizer.step()
        for index, (blocked, whole) in enumerate(zip(runs[0][0], runs[1][0], strict=True)):
            assert torch.equal(blocked, whole), f"param {index} differs at call {call}"


# ------------------------------------------------------------------ oracle 8


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", [(5, 4), (6, 6)])
def test_oracle8_soap_basis_install_keeps_the_first_moment(
    impl: str, shape: tuple[int, int]
) -> None:
    """§9.8: across a basis install Q_L·M·Q_Rᵀ (M in parameter space) is unchanged, so after
    every call it equals β1·(its value after the previous call) + (1 − β1)·G_t.

    The refresh computed at t mod f = 0 is used from step t + 1 (§4.3 step 7, §6); between
    calls it may already be installed (synchronous) or still pending (installed at the
    start of the next step): both are accepted. Bases move only at those boundaries, and V
    is permuted, not rotated, so its entries are the ones the old basis gave.
    """
    beta1, beta2, frequency = 0.9, 0.95, 3
    params = parameters([shape], seed=801)
    optimizer = make_optimizer(
        impl, "SOAP", params, lr=0.01, betas=(beta1, beta2), precondition_frequency=frequency
    )
    generator = torch.Generator().manual_seed(802)
    set_grads(params, [torch.randn(shape, generator=generator, dtype=F64)])
    optimizer.step()
    moves = []
    for t in range(1, 11):
        old = optimizer.block_state("p0.r0.c0")
        q_left, q_right = field(old, "QL").clone(), field(old, "QR").clone()
        m_param = q_left @ field(old, "M") @ q_right.T
        v_old = field(old, "V").clone()
        old_factors = {"L": field(old, "L").clone(), "R": field(old, "R").clone()}
        g = torch.randn(shape, generator=generator, dtype=F64)
        set_grads(params, [g])
        optimizer.step()
        new = optimizer.block_state("p0.r0.c0")
        q_left_new, q_right_new, v_new = field(new, "QL"), field(new, "QR"), field(new, "V")
        expected_m = beta1 * m_param + (1 - beta1) * g
        assert relative_error(q_left_new @ field(new, "M") @ q_right_new.T, expected_m) < 1e-12
        v_in_old_basis = beta2 * v_old + (1 - beta2) * (q_left.T @ g @ q_right).square()
        if torch.equal(q_left_new, q_left) and torch.equal(q_right_new, q_right):
            assert relative_error(v_new, v_in_old_basis) < 1e-12, f"t = {t}"
            continue
        moves.append(t)
        assert not torch.allclose(q_left_new, q_left), f"only Q_R moved at t = {t}"
        assert not torch.allclose(q_right_new, q_right), f"only Q_L moved at t = {t}"
        # Synchronous install at the end of step t: the old-basis V, permuted by the sort
        # of diag(Qᵀ·X·Q) computed with this step's factors.
        installed_now = permuted(v_in_old_basis, new, q_left, q_right)
        # Install at the start of step t: the previous V permuted (by the factors of the
        # step before), then this step's moment update in the new basis.
        g_new = (q_left_new.T @ g @ q_right_new).square()
        installed_first = (
            beta2 * permuted(v_old, old_factors, q_left, q_right) + (1 - beta2) * g_new
        )
        assert min(relative_error(v_new, installed_now), relative_error(v_new, installed_first)) < (
            1e-12
        ), f"V is not the permuted old-basis V at t = {t}"
    assert len(moves) == 3 and all(t % frequency in (0, 1) for t in moves), moves


def permuted(v: Tensor, factors: Any, q_left: Tensor, q_right: Tensor) -> Tensor:
    """V with rows and columns in the order of descending diag(Qᵀ·X·Q) (§4.3 step 7.2)."""
    left = torch.diag(q_left.T @ field(factors, "L") @ q_left)
    right = torch.diag(q_right.T @ field(factors, "R") @ q_right)
    return v[torch.argsort(left, descending=True)][:, torch.argsort(right, descending=True)]
