"""Seeded inputs and tolerance checks shared by the optimizer tests.

Two facts about eigenbases shape these helpers. An a×b block whose first
gradient is random has a left factor of rank min(a, b), so when |a − b| ≥ 2
its initial eigenbasis (§4.2, §5.3) is arbitrary inside a degenerate null
space: round-off alone then decides SOAP's and KL-Shampoo's whole trajectory.
Such parameters get a zero first gradient, which makes the initial factor 0
and the basis the (exactly computed) eigh basis of 1e-30·I, and enough steps
before the first refresh for every factor to have full rank.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._blocks import DTYPE, chunk_slices, matrix_shape

ScaleFn = Callable[[int, int], float]


def block_shapes(shape: Sequence[int], block_size: int | None) -> list[tuple[int, int]]:
    """The (a_i, b_j) of every block of a parameter (§1.2); empty for a vector."""
    matrix = matrix_shape(shape)
    if matrix is None:
        return []
    rows = [s.stop - s.start for s in chunk_slices(matrix[0], block_size)]
    cols = [s.stop - s.start for s in chunk_slices(matrix[1], block_size)]
    return [(a, b) for a in rows for b in cols]


def has_stable_initial_basis(shape: Sequence[int], block_size: int | None) -> bool:
    """True when every block's first-gradient factors have a null space of dim ≤ 1."""
    return all(abs(a - b) <= 1 for a, b in block_shapes(shape, block_size))


def min_refresh_period(shapes: Sequence[Sequence[int]], block_size: int | None) -> int:
    """Smallest f after which every factor is a sum of enough gradients to have full rank."""
    period = 1
    for shape in shapes:
        for a, b in block_shapes(shape, block_size):
            period = max(period, math.ceil((max(a, b) + 2) / min(a, b)))
    return period


def random_like_shapes(shapes: Sequence[Sequence[int]], generator: torch.Generator) -> list[Tensor]:
    return [torch.randn(tuple(shape), generator=generator, dtype=DTYPE) for shape in shapes]


def gradient_sequence(
    shapes: Sequence[Sequence[int]],
    steps: int,
    generator: torch.Generator,
    *,
    zero_first: Sequence[int] = (),
    scale: ScaleFn | None = None,
) -> list[list[Tensor]]:
    """``steps`` lists of float64 gradients; ``scale(step, index)`` multiplies each.

    Without ``scale`` every gradient gets a random log-uniform factor in
    [e⁻³, e], so moments and factors see changing magnitudes.
    """
    sequence = []
    for step in range(steps):
        grads = []
        for index, shape in enumerate(shapes):
            g = torch.randn(tuple(shape), generator=generator, dtype=DTYPE)
            if scale is None:
                factor = math.exp(-3 + 4 * torch.rand((), generator=generator, dtype=DTYPE).item())
            else:
                factor = scale(step, index)
            g = g * factor
            if step == 0 and index in zero_first:
                g = torch.zeros_like(g)
            grads.append(g)
        sequence.append(grads)
    return sequence


def tracking_error(actual: Tensor, expected: Tensor, start: Tensor) -> tuple[float, float]:
    """(max |actual − expected|, max |expected − start|), both in float64."""
    actual64, expected64 = actual.detach().to(DTYPE), expected.detach().to(DTYPE)
    error = (actual64 - expected64).abs().max().item() if actual64.numel() else 0.0
    moved = (expected64 - start.to(DTYPE)).abs().max().item() if actual64.numel() else 0.0
    return error, moved


def assert_tracks(
    actual: Tensor, expected: Tensor, start: Tensor, *, rtol: float, atol: float, what: str
) -> None:
    """Error ≤ rtol·(how far the expected value has moved) + atol, with a useful message."""
    error, moved = tracking_error(actual, expected, start)
    bound = rtol * moved + atol
    assert error <= bound, (
        f"{what}: max abs error {error:.3e} > {bound:.3e} "
        f"(moved {moved:.3e}, rtol {rtol:g}, atol {atol:g})"
    )
