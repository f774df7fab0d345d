"""Refresh results as one byte buffer, so a publication is one collective per block.

A result is a dataclass of optional tensors (SOAP: ``QL``, ``QR``, ``perm_L``,
``perm_R``; Shampoo: ``L_root``, ``R_root``), some None when a side is not
rotated or its computation failed. Ranks that did not compute it know its
*layout* (every field that can be present, with shape and dtype, from the
block's plan) but not which fields are present, so the buffer starts with one
presence byte per field, then every field's bytes (zeros where absent), in
layout order. Receivers allocate the same buffer from the layout alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class FieldLayout:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * torch.empty((), dtype=self.dtype).element_size()


@dataclass(frozen=True)
class ResultLayout:
    """Every field a block's refresh result may hold; the buffer is ``nbytes`` long."""

    fields: tuple[FieldLayout, ...]

    @property
    def nbytes(self) -> int:
        return len(self.fields) + sum(f.nbytes for f in self.fields)

    def empty(self, device: torch.device) -> torch.Tensor:
        return torch.zeros(self.nbytes, dtype=torch.uint8, device=device)


def pack(result: Any, layout: ResultLayout, device: torch.device) -> torch.Tensor:
    """The result's bytes: presence flags, then each field (zeros where absent)."""
    buffer = layout.empty(device)
    offset = len(layout.fields)
    for index, f in enumerate(layout.fields):
        value = getattr(result, f.name)
        if value is not None:
            if tuple(value.shape) != f.shape or value.dtype != f.dtype:
                raise ValueError(
                    f"result field {f.name}: {tuple(value.shape)} {value.dtype} does not match"
                    f" its layout {f.shape} {f.dtype}"
                )
            buffer[index] = 1
            raw = value.detach().contiguous().reshape(-1).view(torch.uint8)
            buffer[offset : offset + f.nbytes].copy_(raw)
        offset += f.nbytes
    return buffer


def unpack(buffer: torch.Tensor, layout: ResultLayout, result_type: type) -> Any:
    """The result a ``pack``ed buffer holds, its tensors views of fresh copies."""
    values: dict[str, Any] = {}
    offset = len(layout.fields)
    flags = buffer[: len(layout.fields)].tolist()
    for present, f in zip(flags, layout.fields, strict=True):
        if present:
            raw = buffer[offset : offset + f.nbytes].clone()
            values[f.name] = raw.view(f.dtype).reshape(f.shape)
        else:
            values[f.name] = None
        offset += f.nbytes
    known = {f.name for f in dataclasses.fields(result_type)}
    return result_type(**{k: v for k, v in values.items() if k in known})
