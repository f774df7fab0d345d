"""Drive a float64 reference like a ``torch.optim`` optimizer, for tests that run both."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor


class Reference(Protocol):
    params: list[Tensor]
    blocks: list[Any]

    def step(self, grads: Sequence[Tensor | None], lr: float | None = None) -> None: ...

    def block_state(self, block_id: str) -> dict[str, Tensor | None]: ...


class ReferenceOptimizer:
    """Reads ``p.grad`` from torch parameters, steps the reference, writes the values back.

    Only ``step``, ``blocks`` and ``block_state`` are offered: enough for the
    oracle tests, which run the same checks on the real optimizers and on the
    references.
    """

    def __init__(self, params: Sequence[torch.nn.Parameter], reference: Reference) -> None:
        self.params = list(params)
        self.reference = reference

    @property
    def blocks(self) -> list[Any]:
        return self.reference.blocks

    def block_state(self, block_id: str) -> dict[str, Tensor | None]:
        return self.reference.block_state(block_id)

    @torch.no_grad()
    def step(self) -> None:
        self.reference.step([p.grad for p in self.params])
        for p, value in zip(self.params, self.reference.params, strict=True):
            p.copy_(value.to(p.dtype))
