"""The real optimizers against the independent float64 references in tests/reference.

Float64 parameters are compared at ~1e-9 of how far they have moved, after
every step, over enough steps to cover several root computations or basis
refreshes; one float32 run per optimizer is compared at ~1e-4.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

try:
    from reference import KLShampooReference, ShampooReference, SOAPReference
    from reference.harness import (
        ScaleFn,
        assert_tracks,
        gradient_sequence,
        has_stable_initial_basis,
        matrix_shape,
        min_refresh_period,
        random_like_shapes,
    )
except ModuleNotFoundError:  # tests/ became a package
    from tests.reference import KLShampooReference, ShampooReference, SOAPReference
    from tests.reference.harness import (
        ScaleFn,
        assert_tracks,
        gradient_sequence,
        has_stable_initial_basis,
        matrix_shape,
        min_refresh_period,
        random_like_shapes,
    )

REFERENCES: dict[str, Callable[..., Any]] = {
    "Shampoo": ShampooReference,
    "SOAP": SOAPReference,
    "KLShampoo": KLShampooReference,
}
F64_RTOL, F64_ATOL = 1e-9, 1e-13
F32_RTOL, F32_ATOL = 1e-4, 2e-6

# Derandomized (reproducible without a database) and without shrinking, which costs
# tens of seconds per failure here; the failing example is printed as drawn.
HYPOTHESIS = settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
BATCHED = False
"""Whether the runtime optimizers run batched (set per test by ``execution_path``)."""


@pytest.fixture(autouse=True, params=["per-block", "batched"])
def execution_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every comparison holds for both execution paths: per block and batched."""
    monkeypatch.setitem(globals(), "BATCHED", request.param == "batched")


def runtime_class(name: str) -> Any:
    import runtime

    return getattr(runtime, name)


def run_against_reference(
    name: str,
    shapes: Sequence[Sequence[int]],
    hparams: dict[str, Any],
    *,
    steps: int,
    seed: int,
    dtype: torch.dtype = torch.float64,
    rtol: float = F64_RTOL,
    atol: float = F64_ATOL,
    zero_first: Sequence[int] = (),
    scale: ScaleFn | None = None,
    lr_at: Callable[[int], float] | None = None,
) -> Any:
    """Step the real optimizer and its reference on the same gradients; compare every step.

    ``lr_at(call)`` sets every group's lr before each call, as a scheduler would.
    Returns the reference, for tests that inspect its state afterwards.
    """
    generator = torch.Generator().manual_seed(seed)
    initial = random_like_shapes(shapes, generator)
    params = [torch.nn.Parameter(x.to(dtype)) for x in initial]
    from runtime import ExecutionConfig

    optimizer = runtime_class(name)(params, **hparams, execution=ExecutionConfig(batched=BATCHED))
    reference = REFERENCES[name]([p.detach() for p in params], **hparams)
    starts = [p.detach().to(torch.float64).clone() for p in params]
    sequence = gradient_sequence(shapes, steps, generator, zero_first=zero_first, scale=scale)
    for step, grads in enumerate(sequence):
        grads = [g.to(dtype) for g in grads]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        lr = None
        if lr_at is not None:
            lr = lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
        optimizer.step()
        reference.step(grads, lr=lr)
        for index, (p, expected, start) in enumerate(
            zip(params, reference.params, starts, strict=True)
        ):
            assert p.dtype == dtype, f"{name} changed the dtype of param {index}"
            assert_tracks(
                p,
                expected,
                start,
                rtol=rtol,
                atol=atol,
                what=f"{name} {hparams} param {index} shape {tuple(shapes[index])} call {step}",
            )
    return reference


def unstable_basis_params(shapes: Sequence[Sequence[int]], block_size: int | None) -> list[int]:
    """Indices that need a zero first gradient (see tests/reference/harness.py)."""
    return [i for i, shape in enumerate(shapes) if not has_stable_initial_basis(shape, block_size)]


# --------------------------------------------------------------------------- Shampoo

SHAMPOO_SHAPES = [(6, 6), (9, 5), (5,), (3, 2, 2), (1, 5), (4, 7)]


@pytest.mark.parametrize("grafting", ["none", "adam"])
@pytest.mark.parametrize("beta2", [1.0, 0.99])
def test_shampoo_matches_reference(grafting: str, beta2: float) -> None:
    hparams = dict(
        lr=0.05,
        betas=(0.9, beta2),
        weight_decay=0.05,
        block_size=4,
        precondition_frequency=3,
        start_preconditioning_step=4,
        grafting=grafting,
        grafting_beta2=0.99,
    )
    run_against_reference("Shampoo", SHAMPOO_SHAPES, hparams, steps=30, seed=11)


def test_shampoo_reference_defaults_match_reference() -> None:
    """Distributed Shampoo's defaults: f = t0 = 1, β2 = 1 (running sums), ε = 1e-12, no
    grafting; the reference class takes them as its own defaults."""
    hparams = runtime_class("Shampoo").reference_defaults()
    assert hparams["betas"][1] == 1.0 and hparams["grafting"] == "none"
    run_against_reference("Shampoo", [(5, 4), (3,), (4, 6)], hparams, steps=12, seed=12)


def test_shampoo_root_exponent_two_matches_reference() -> None:
    hparams = dict(lr=0.02, root_exponent=2, precondition_frequency=2, eps=1e-6, block_size=5)
    run_against_reference("Shampoo", [(7, 6), (4,)], hparams, steps=16, seed=13)


# --------------------------------------------------------------------------- SOAP

SOAP_SHAPES = [(5, 5), (5, 4), (12, 11), (3, 2, 2), (7,), (1, 5), (9, 2)]


@pytest.mark.parametrize("normalize_grads", [False, True])
@pytest.mark.parametrize("shampoo_beta", [None, 0.9])
def test_soap_matches_reference(normalize_grads: bool, shampoo_beta: float | None) -> None:
    hparams = dict(
        lr=0.01,
        betas=(0.9, 0.95),
        shampoo_beta=shampoo_beta,
        weight_decay=0.05,
        precondition_frequency=5,
        block_size=6,
        normalize_grads=normalize_grads,
    )
    zero_first = unstable_basis_params(SOAP_SHAPES, 6)
    assert zero_first == [6]
    run_against_reference("SOAP", SOAP_SHAPES, hparams, steps=32, seed=21, zero_first=zero_first)


def test_soap_max_precond_dim_leaves_one_side_unrotated() -> None:
    """(5, 12) keeps Q_R = I and (12, 5) keeps Q_L = I; (6, 6) rotates both sides."""
    hparams = dict(lr=0.01, weight_decay=0.02, precondition_frequency=4, max_precond_dim=8)
    reference = run_against_reference(
        "SOAP", [(5, 12), (12, 5), (6, 6)], hparams, steps=20, seed=22
    )
    assert reference.block_state("p0.r0.c0")["QR"] is None
    assert reference.block_state("p1.r0.c0")["QL"] is None


def test_soap_default_hyperparameters_match_reference() -> None:
    assert runtime_class("SOAP").reference_defaults().items() <= defaults_of("SOAP").items()
    run_against_reference("SOAP", [(6, 5), (4,), (2, 3, 1)], {}, steps=23, seed=23)


# --------------------------------------------------------------------------- KL-Shampoo

KL_SHAPES = SOAP_SHAPES


def tiny_from_call_8(step: int, index: int) -> float:
    """Gradients of scale 1e-3 from call 8 on drive d down onto the clamp."""
    return 1e-3 if step >= 8 else 1.0


def test_kl_shampoo_matches_reference() -> None:
    hparams = dict(
        lr=0.01,
        betas=(0.9, 0.95),
        weight_decay=0.05,
        precondition_frequency=5,
        block_size=6,
    )
    zero_first = unstable_basis_params(KL_SHAPES, 6)
    run_against_reference("KLShampoo", KL_SHAPES, hparams, steps=32, seed=31, zero_first=zero_first)


@pytest.mark.parametrize("clamp", [True, False])
def test_kl_shampoo_clamp_uses_the_side_dimension_and_cap(clamp: bool) -> None:
    """κ = max(10, min(dim, cap)): (13, 12) with cap 12 gives κ = 12 on both sides,
    (11, 4) gives κ = 11 on the left and 10 on the right; tiny gradients reach the floor."""
    shapes = [(13, 12), (11, 4), (6,)]
    hparams = dict(
        lr=0.01,
        betas=(0.9, 0.5),
        weight_decay=0.0,
        precondition_frequency=3,
        clamp=clamp,
        clamp_cap=12,
    )
    zero_first = unstable_basis_params(shapes, None)
    reference = run_against_reference(
        "KLShampoo",
        shapes,
        hparams,
        steps=20,
        seed=32,
        zero_first=zero_first,
        scale=tiny_from_call_8,
    )
    smallest = min(
        min(state.dL.min().item(), state.dR.min().item())
        for state in reference.block_states.values()
    )
    if clamp:
        assert smallest == pytest.approx(1 / 12**2, rel=1e-12), "the clamp was never reached"
    else:
        assert smallest < 1 / 12**2


def test_kl_shampoo_max_precond_dim_leaves_one_side_unrotated() -> None:
    hparams = dict(lr=0.01, precondition_frequency=4, max_precond_dim=8)
    reference = run_against_reference(
        "KLShampoo", [(5, 12), (12, 5), (6, 6)], hparams, steps=20, seed=33
    )
    assert reference.block_state("p0.r0.c0")["QR"] is None
    assert reference.block_state("p1.r0.c0")["QL"] is None


def test_kl_shampoo_reference_defaults_match_reference() -> None:
    hparams = runtime_class("KLShampoo").reference_defaults()
    assert hparams["eigenvalue_init"] == 0.1
    run_against_reference("KLShampoo", [(6, 5), (4,), (2, 3, 1)], hparams, steps=23, seed=34)


# --------------------------------------------------------------------------- LLM defaults


def defaults_of(name: str) -> dict[str, Any]:
    """The runtime constructor's keyword defaults."""
    signature = inspect.signature(runtime_class(name).__init__)
    return {
        k: p.default
        for k, p in signature.parameters.items()
        if p.default is not inspect.Parameter.empty and k != "execution"
    }


@pytest.mark.parametrize("name", ["Shampoo", "KLShampoo"])
def test_llm_defaults_match_reference(name: str) -> None:
    """The constructors' own (LLM) defaults, passed explicitly to the reference, track it;
    for KL-Shampoo that includes c0 derived from each block's first gradient, at two
    gradient scales (the derived c0 follows the scale; a fixed one would not)."""
    hparams = defaults_of(name)
    if name == "Shampoo":
        assert hparams.pop("root_solver") == "eigh"  # §2.2, what the reference computes
        assert hparams["betas"][1] < 1.0 and hparams["grafting"] == "adam"
        assert hparams["precondition_frequency"] > 1
    else:
        assert hparams["eigenvalue_init"] is None
    shapes = [(6, 5), (4,), (2, 3, 1), (5, 5)]
    for seed, scale in ((35, 1.0), (36, 1e-3)):
        run_against_reference(
            name, shapes, hparams, steps=23, seed=seed, scale=lambda step, index, s=scale: s
        )


# --------------------------------------------------------------------------- all three

FP32_CASES = {
    "Shampoo": dict(lr=0.02, betas=(0.9, 0.999), grafting="adam", precondition_frequency=3),
    "SOAP": dict(lr=0.01, precondition_frequency=4),
    "KLShampoo": dict(lr=0.01, precondition_frequency=4),
}


@pytest.mark.parametrize("name", sorted(FP32_CASES))
def test_float32_parameters_track_the_float64_reference(name: str) -> None:
    """Square blocks only: their eigenbases are well conditioned in float32."""
    run_against_reference(
        name,
        [(4, 4), (6, 6), (5,)],
        FP32_CASES[name],
        steps=20,
        seed=41,
        dtype=torch.float32,
        rtol=F32_RTOL,
        atol=F32_ATOL,
    )


SCHEDULE_CASES = {
    "Shampoo": dict(weight_decay=0.1, grafting="adam", precondition_frequency=2, block_size=3),
    "SOAP": dict(weight_decay=0.1, precondition_frequency=3, block_size=3),
    "KLShampoo": dict(weight_decay=0.1, precondition_frequency=3, block_size=3),
}


@pytest.mark.parametrize("name", sorted(SCHEDULE_CASES))
def test_lr_changed_between_calls_matches_reference(name: str) -> None:
    """The lr of each call (update and decoupled decay) is read from param_groups."""
    run_against_reference(
        name,
        [(3, 4), (4,)],
        SCHEDULE_CASES[name],
        steps=12,
        seed=42,
        lr_at=lambda call: 0.05 / math.sqrt(1 + call),
    )


BIAS_CORRECTION_OFF = {
    "Shampoo": dict(lr=0.01, betas=(0.9, 0.99), grafting="adam", precondition_frequency=2),
    "SOAP": dict(lr=0.01, precondition_frequency=3),
}


@pytest.mark.parametrize("name", sorted(BIAS_CORRECTION_OFF))
def test_bias_correction_off_matches_reference(name: str) -> None:
    """SOAP: α = η (§4.3 step 3). Shampoo: §3.2 names only c2; the reference reads the flag
    as switching off every correction, 1/(1 − β1^t) on M̂ and 1/(1 − β2g^t) in the graft
    too, and the vector fallback's (Distributed Shampoo's use_bias_correction does both)."""
    run_against_reference(
        name,
        [(4, 4), (5, 4), (5,)],
        dict(BIAS_CORRECTION_OFF[name], bias_correction=False),
        steps=10,
        seed=44,
    )


FALLBACK_CASES = {
    "Shampoo": dict(lr=0.01, eps=1e-3, grafting_eps=1e-3, grafting_beta2=0.9, weight_decay=0.1),
    "SOAP": dict(lr=0.01, eps=1e-3, weight_decay=0.1),
    "KLShampoo": dict(lr=0.01, eps=1e-3, weight_decay=0.1),
}


@pytest.mark.parametrize("name", sorted(FALLBACK_CASES))
def test_vector_fallback_is_adamw_with_eps_1e_8(name: str) -> None:
    """§1.1: vectors (and (1, n), (1, 1) params) use AdamW with ε = 1e-8, whatever the
    optimizer's own ε (and, for Shampoo, grafting ε); small gradients make ε visible."""
    run_against_reference(
        name,
        [(6,), (1, 4), (1, 1)],
        FALLBACK_CASES[name],
        steps=8,
        seed=43,
        scale=lambda step, index: 1e-3,
    )


# --------------------------------------------------------------------------- hypothesis

dims = st.integers(min_value=1, max_value=7)
shapes_strategy = st.lists(
    st.one_of(
        st.tuples(dims, dims),
        st.tuples(dims, dims, st.integers(min_value=1, max_value=2)),
        st.tuples(dims),
    ),
    min_size=1,
    max_size=3,
)


@HYPOTHESIS
@given(
    shapes=shapes_strategy,
    block_size=st.sampled_from([2, 3, 5, 1024]),
    betas=st.sampled_from([(0.9, 1.0), (0.9, 0.99), (0.0, 1.0), (0.5, 0.9)]),
    grafting=st.sampled_from(["none", "adam"]),
    root_exponent=st.sampled_from([2, 4]),
    frequency=st.integers(min_value=1, max_value=4),
    start=st.one_of(st.none(), st.integers(min_value=1, max_value=5)),
    eps=st.sampled_from([1e-12, 1e-6, 1e-2]),
    grafting_eps=st.sampled_from([1e-8, 1e-3]),
    weight_decay=st.sampled_from([0.0, 0.1]),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_shampoo_matches_reference_hypothesis(
    shapes: list[tuple[int, ...]],
    block_size: int,
    betas: tuple[float, float],
    grafting: str,
    root_exponent: int,
    frequency: int,
    start: int | None,
    eps: float,
    grafting_eps: float,
    weight_decay: float,
    seed: int,
) -> None:
    hparams = dict(
        lr=0.03,
        betas=betas,
        eps=eps,
        grafting_eps=grafting_eps,
        weight_decay=weight_decay,
        block_size=block_size,
        precondition_frequency=frequency,
        start_preconditioning_step=start,
        root_exponent=root_exponent,
        grafting=grafting,
    )
    run_against_reference("Shampoo", shapes, hparams, steps=12, seed=seed, rtol=1e-8)


def _soap_or_kl_case(
    draw: st.DrawFn, shapes: list[tuple[int, ...]]
) -> tuple[int | None, int, list[int]]:
    block_size = draw(st.sampled_from([None, 2, 3, 5]))
    low = min_refresh_period(shapes, block_size)
    frequency = draw(st.integers(min_value=low, max_value=low + 2))
    return block_size, frequency, unstable_basis_params(shapes, block_size)


def _matrix_eps(shapes: list[tuple[int, ...]]) -> st.SearchStrategy[float]:
    """A non-default ε only without vector params; the fallback's ε has its own test."""
    if any(matrix_shape(shape) is None for shape in shapes):
        return st.just(1e-8)
    return st.sampled_from([1e-8, 1e-3])


@st.composite
def soap_cases(draw: st.DrawFn) -> dict[str, Any]:
    shapes = draw(shapes_strategy)
    block_size, frequency, zero_first = _soap_or_kl_case(draw, shapes)
    hparams = dict(
        lr=draw(st.sampled_from([3e-3, 0.03])),
        betas=draw(st.sampled_from([(0.95, 0.95), (0.9, 0.99), (0.0, 0.5)])),
        shampoo_beta=draw(st.sampled_from([None, 0.8])),
        eps=draw(_matrix_eps(shapes)),
        weight_decay=draw(st.sampled_from([0.0, 0.01, 0.2])),
        precondition_frequency=frequency,
        # A finite max_precond_dim only on unblocked params: whether it compares with
        # the block's or the parameter's dim is not fixed by ALGORITHMS.md.
        max_precond_dim=draw(st.sampled_from([10000, 0] if block_size else [10000, 4, 0])),
        block_size=block_size,
        normalize_grads=draw(st.booleans()),
    )
    return dict(shapes=shapes, hparams=hparams, zero_first=zero_first, steps=3 * frequency + 2)


@st.composite
def kl_cases(draw: st.DrawFn) -> dict[str, Any]:
    shapes = draw(shapes_strategy)
    block_size, frequency, zero_first = _soap_or_kl_case(draw, shapes)
    hparams = dict(
        lr=draw(st.sampled_from([1e-4, 0.02])),
        betas=draw(st.sampled_from([(0.9, 0.98), (0.9, 0.9), (0.0, 0.5)])),
        shampoo_beta=draw(st.sampled_from([None, 0.8])),
        eps=draw(_matrix_eps(shapes)),
        weight_decay=draw(st.sampled_from([0.0, 0.01, 0.2])),
        precondition_frequency=frequency,
        eigenvalue_init=draw(st.sampled_from([0.1, 1.0, None])),
        clamp=draw(st.booleans()),
        clamp_cap=draw(st.sampled_from([4000, 12])),
        max_precond_dim=draw(st.sampled_from([None, 0] if block_size else [None, 4, 0])),
        block_size=block_size,
    )
    return dict(shapes=shapes, hparams=hparams, zero_first=zero_first, steps=3 * frequency + 2)


@HYPOTHESIS
@given(case=soap_cases(), seed=st.integers(min_value=0, max_value=2**31 - 1))
def test_soap_matches_reference_hypothesis(case: dict[str, Any], seed: int) -> None:
    run_against_reference(
        "SOAP",
        case["shapes"],
        case["hparams"],
        steps=min(case["steps"], 30),
        seed=seed,
        zero_first=case["zero_first"],
        rtol=1e-8,
    )


@HYPOTHESIS
@given(case=kl_cases(), seed=st.integers(min_value=0, max_value=2**31 - 1))
def test_kl_shampoo_matches_reference_hypothesis(case: dict[str, Any], seed: int) -> None:
    run_against_reference(
        "KLShampoo",
        case["shapes"],
        case["hparams"],
        steps=min(case["steps"], 30),
        seed=seed,
        zero_first=case["zero_first"],
        rtol=1e-8,
    )
