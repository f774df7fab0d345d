"""Read a torch.distributed.checkpoint folder without unpickling arbitrary objects.

DCP writes its index (``.metadata``) with ``pickle`` and reads it back with
``pickle.load``, which runs whatever a crafted file asks for. Our reader
unpickles the index with an allow-list — DCP's own metadata dataclasses,
torch dtypes, sizes, layouts and memory formats, paths — and refuses any other
global, as ``torch.load(weights_only=True)`` does for tensor files. The tensor
data itself DCP already reads with ``weights_only=True``; our checkpoints hold
no pickled "bytes" items at all (``runtime.checkpoint.flatten``).
"""

from __future__ import annotations

import enum
import io
import pathlib
import pickle
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata

try:
    from torch.distributed.checkpoint.metadata import StorageMeta
except ImportError:  # torch < 2.5
    StorageMeta = None  # type: ignore[assignment,misc]

_DCP_MODULES = (
    "torch.distributed.checkpoint.metadata",
    "torch.distributed.checkpoint.filesystem",
    "torch.distributed.checkpoint._extension",
)
_PATHS = {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"}
_BUILTINS = {"set", "frozenset", "slice", "complex"}


class UnsafeCheckpoint(ValueError):
    """A checkpoint index that names something outside the allow-list."""


class _IndexUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module in _DCP_MODULES:
            found = getattr(__import__(module, fromlist=[name]), name, None)
            if isinstance(found, type) and (
                hasattr(found, "__dataclass_fields__") or issubclass(found, enum.Enum)
            ):
                return found
        elif module == "torch" and name == "Size":
            return torch.Size
        elif module == "torch":
            found = getattr(torch, name, None)
            if isinstance(found, (torch.dtype, torch.layout, torch.memory_format)):
                return found
        elif module == "torch.serialization" and name == "_get_layout":
            from torch.serialization import _get_layout

            return _get_layout
        elif module == "pathlib" and name in _PATHS:
            return getattr(pathlib, name)
        elif module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        elif module == "builtins" and name in _BUILTINS:
            import builtins

            return getattr(builtins, name)
        raise UnsafeCheckpoint(f"checkpoint index refers to {module}.{name}, which is not allowed")


def load_index(data: bytes) -> Metadata:
    """A DCP ``.metadata`` file's content, unpickled through the allow-list."""
    try:
        metadata = _IndexUnpickler(io.BytesIO(data)).load()
    except UnsafeCheckpoint:
        raise
    except Exception as exc:  # truncated or garbled: not a checkpoint index
        raise UnsafeCheckpoint(f"not a checkpoint index ({type(exc).__name__}: {exc})") from None
    if not isinstance(metadata, Metadata):
        raise UnsafeCheckpoint(f"checkpoint index holds a {type(metadata).__name__}")
    return metadata


class SafeReader(FileSystemReader):
    """``FileSystemReader`` whose index is read by ``load_index``."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = pathlib.Path(self.path) / ".metadata"
        metadata = load_index(path.read_bytes())
        if hasattr(metadata, "storage_meta"):  # torch >= 2.5 tags the load
            if metadata.storage_meta is None and StorageMeta is not None:
                metadata.storage_meta = StorageMeta()
            if metadata.storage_meta is not None:
                metadata.storage_meta.load_id = getattr(self, "load_id", None)
        return metadata
