"""A state dict split in two: its tensors by path, and everything else as JSON.

The tensors go to torch.distributed.checkpoint, which stores tensors and
(with pickle) anything else; keeping "anything else" out of it is what lets a
checkpoint load without unpickling a single object. The JSON skeleton keeps
the structure exactly: dicts with int keys stay int-keyed, tuples stay tuples,
floats round-trip (``repr`` precision, NaN and infinities included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

_SCALARS = (bool, int, str, type(None))


@dataclass(frozen=True)
class TensorRef:
    """Where a tensor went, and what it looked like (a load target is made from this)."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    device: str


class StateError(ValueError):
    """A state dict holding something a checkpoint cannot store without pickle."""


def flatten(state: Any, prefix: str) -> tuple[Any, dict[str, torch.Tensor]]:
    """``state`` -> (a JSON-ready skeleton, ``{key: tensor}``); keys start with ``prefix``."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            key = f"{prefix}{path}"
            tensors[key] = value.detach()
            return {
                "tensor": key,
                "dtype": str(value.dtype).removeprefix("torch."),
                "shape": list(value.shape),
                "device": value.device.type,
            }
        if isinstance(value, float):
            return {"float": repr(value)} if not math.isfinite(value) else value
        if isinstance(value, _SCALARS):
            return value
        if isinstance(value, dict):
            items = []
            for k, v in value.items():
                if not isinstance(k, (str, int)) or isinstance(k, bool):
                    raise StateError(f"{prefix}{path}: dict key {k!r} is not a str or int")
                items.append([k, walk(v, f"{path}/{k}")])
            return {"dict": items}
        if isinstance(value, (list, tuple)):
            kind = "list" if isinstance(value, list) else "tuple"
            return {kind: [walk(v, f"{path}/{i}") for i, v in enumerate(value)]}
        raise StateError(f"{prefix}{path}: cannot store a {type(value).__name__} in a checkpoint")

    return walk(state, ""), tensors


def tensor_refs(skeleton: Any) -> list[TensorRef]:
    """Every tensor a skeleton refers to, in order."""
    out: list[TensorRef] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "tensor" in node:
                out.append(
                    TensorRef(
                        str(node["tensor"]),
                        str(node["dtype"]),
                        tuple(int(n) for n in node["shape"]),
                        str(node.get("device", "cpu")),
                    )
                )
            elif "dict" in node:
                for _, v in node["dict"]:
                    walk(v)
            else:
                for v in node.get("list") or node.get("tuple") or []:
                    walk(v)

    walk(skeleton)
    return out


def dtype_of(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise StateError(f"unknown tensor dtype {name!r}")
    return dtype


def unflatten(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of ``flatten``: the state, its tensors taken from ``tensors``."""
    if isinstance(skeleton, dict):
        if "tensor" in skeleton:
            return tensors[str(skeleton["tensor"])]
        if "float" in skeleton:
            return float(skeleton["float"])
        if "dict" in skeleton:
            return {k: unflatten(v, tensors) for k, v in skeleton["dict"]}
        if "list" in skeleton:
            return [unflatten(v, tensors) for v in skeleton["list"]]
        if "tuple" in skeleton:
            return tuple(unflatten(v, tensors) for v in skeleton["tuple"])
        raise StateError(f"unknown node in a checkpoint skeleton: {sorted(skeleton)}")
    if isinstance(skeleton, list):
        raise StateError("a bare list in a checkpoint skeleton")
    return skeleton
