"""Shapes, blocks and small matrix helpers shared by the float64 references.

Written from ALGORITHMS.md only (§0, §1.1, §1.2, §2.1, §2.4); nothing here
imports ``runtime``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

DTYPE = torch.float64


@dataclass(frozen=True)
class RefBlock:
    """One independent optimizer unit (§1.2 step 4) of a 2-D parameter view."""

    id: str
    param_index: int
    row_index: int
    col_index: int
    rows: slice
    cols: slice


def matrix_shape(shape: Sequence[int]) -> tuple[int, int] | None:
    """§1.1 and §1.2 step 1: drop size-1 dims, merge trailing dims of ≥3-D tensors.

    Returns ``(a, b)`` for a matrix, or ``None`` for a vector or scalar (the
    AdamW fallback).
    """
    dims = [int(d) for d in shape if d != 1]
    if len(dims) < 2:
        return None
    return dims[0], math.prod(dims[1:])


def chunk_slices(length: int, block_size: int | None) -> list[slice]:
    """§1.2 step 3: consecutive chunks of ``block_size``; the last may be shorter."""
    if block_size is None:
        return [slice(0, length)]
    return [slice(start, min(start + block_size, length)) for start in range(0, length, block_size)]


def param_blocks(
    param_index: int, shape: tuple[int, int], block_size: int | None
) -> list[RefBlock]:
    """§1.2 step 4: the blocks of one matrix, row-major, with ids ``p{i}.r{r}.c{c}``."""
    rows, cols = shape
    return [
        RefBlock(f"p{param_index}.r{r}.c{c}", param_index, r, c, row_slice, col_slice)
        for r, row_slice in enumerate(chunk_slices(rows, block_size))
        for c, col_slice in enumerate(chunk_slices(cols, block_size))
    ]


def float64_copies(params: Sequence[Tensor]) -> list[Tensor]:
    """Detached float64 copies: the references own their parameters."""
    return [p.detach().to(DTYPE).clone() for p in params]


def symmetrize(matrix: Tensor) -> Tensor:
    """§2.1: (A + Aᵀ)/2."""
    return (matrix + matrix.T) / 2


def basis(matrix: Tensor) -> Tensor:
    """§2.4: eigenvectors of A + 1e-30·I with columns in descending eigenvalue order."""
    identity = torch.eye(matrix.shape[0], dtype=matrix.dtype)
    _, vectors = torch.linalg.eigh(matrix + 1e-30 * identity)
    return torch.flip(vectors, dims=[1])


def orth(matrix: Tensor) -> Tensor:
    """§0: the Q factor of a thin (reduced) QR decomposition."""
    q, _ = torch.linalg.qr(matrix)
    return q


def rotate_in(x: Tensor, q_left: Tensor | None, q_right: Tensor | None) -> Tensor:
    """§0: X' = Q_Lᵀ·X·Q_R; a ``None`` side is the identity (not rotated)."""
    if q_left is not None:
        x = q_left.T @ x
    if q_right is not None:
        x = x @ q_right
    return x


def rotate_out(x: Tensor, q_left: Tensor | None, q_right: Tensor | None) -> Tensor:
    """§0: X = Q_L·X'·Q_Rᵀ; a ``None`` side is the identity (not rotated)."""
    if q_left is not None:
        x = q_left @ x
    if q_right is not None:
        x = x @ q_right.T
    return x
