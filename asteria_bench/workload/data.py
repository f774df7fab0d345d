"""Bytes in, batches out: loading text, splitting it, and drawing batches.

Two promises make loss curves comparable. Training batches are drawn from a
``torch.Generator`` the caller owns, so a seeded generator gives the same
batches on every machine and a run's data position is just that generator's
state (which a checkpoint can save). Held-out loss is measured on a fixed list
of validation windows at evenly spaced offsets, the same for every run and
every optimizer.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from asteria_bench.workload.corpus import DEFAULT_CORPUS_BYTES, DEFAULT_CORPUS_SEED, generate_corpus

__all__ = ["ByteDataset", "DataError", "default_dataset", "load_text"]

SPLITS = ("train", "val")


class DataError(ValueError):
    """Text that cannot be used for training; the message names the path and what was expected."""


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from exc


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _folder_files(root: Path) -> list[Path]:
    """Visible regular files under ``root``, ordered by relative path.

    Symlinked folders are not followed, so a link cycle cannot make loading loop.
    """
    found: list[tuple[tuple[str, ...], Path]] = []
    for folder, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
        for name in filenames:
            path = Path(folder, name)
            if not _is_hidden(name) and path.is_file():
                found.append((path.relative_to(root).parts, path))
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]


def load_text(path: Path, *, context: int = 64) -> bytes:
    """The training text at ``path``: a file, or a folder read recursively.

    A folder contributes its visible regular files in order of relative path,
    joined with ``b"\\n"``; files containing a NUL byte are taken for binary and
    skipped. The result must hold at least ``2 * context + 2`` bytes, enough for
    one ``context + 1`` byte window in each split.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder, expected a text file or a folder")
    if path.is_dir():
        chunks = [data for data in map(_read, _folder_files(path)) if b"\0" not in data]
        data = b"\n".join(chunk for chunk in chunks if chunk)
        if not data:
            raise DataError(f"{path}: folder holds no non-empty text files, expected at least one")
    elif path.is_file():
        data = _read(path)
        if not data:
            raise DataError(f"{path}: file is empty, expected text")
        if b"\0" in data:
            raise DataError(f"{path}: file contains NUL bytes, expected text")
    else:
        raise DataError(f"{path}: not a regular file or folder, expected text")
    minimum = 2 * context + 2
    if len(data) < minimum:
        raise DataError(
            f"{path}: {len(data)} bytes of text, expected at least {minimum} for context {context}"
        )
    return data


@dataclass
class ByteDataset:
    """A byte corpus split into a training part and the validation part that follows it.

    Both are 1-D ``uint8`` CPU tensors; batches are int64 and on the CPU (the
    caller moves them to its device).
    """

    train: torch.Tensor
    val: torch.Tensor

    def __post_init__(self) -> None:
        for name in SPLITS:
            tensor = getattr(self, name)
            if tensor.dtype != torch.uint8 or tensor.dim() != 1:
                raise ValueError(
                    f"ByteDataset.{name} must be a 1-D uint8 tensor, "
                    f"got {tensor.dtype} with shape {tuple(tensor.shape)}"
                )

    @classmethod
    def from_bytes(cls, data: bytes, val_fraction: float = 0.1) -> ByteDataset:
        """The last ``val_fraction`` of ``data`` (contiguous) becomes validation.

        Keeping validation contiguous and at the end means no validation window
        overlaps a training window except at the single boundary.
        """
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        n_val = int(len(data) * val_fraction)
        if n_val < 1 or n_val >= len(data):
            raise DataError(
                f"<bytes>: {len(data)} bytes cannot be split with val_fraction {val_fraction}"
            )
        everything = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        split = len(data) - n_val
        return cls(train=everything[:split].clone(), val=everything[split:].clone())

    def _split(self, split: str, context: int) -> torch.Tensor:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if context <= 0:
            raise ValueError(f"context must be positive, got {context}")
        data: torch.Tensor = getattr(self, split)
        if data.numel() < context + 1:
            raise DataError(
                f"<{split} split>: {data.numel()} bytes, expected at least {context + 1} "
                f"for context {context}"
            )
        return data

    @staticmethod
    def _windows(
        data: torch.Tensor, offsets: torch.Tensor, context: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = data[offsets.unsqueeze(1) + torch.arange(context + 1)].long()
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()

    def batch(
        self, split: str, batch_size: int, context: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of shape ``(batch_size, context)``; ``y`` is ``x`` shifted by one byte.

        Offsets are uniform over the split and drawn only from ``generator``.
        """
        data = self._split(split, context)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        high = data.numel() - context
        offsets = torch.randint(0, high, (batch_size,), generator=generator)
        x, y = self._windows(data, offsets, context)
        return x, y

    def eval_batches(
        self, batch_size: int, context: int, n_batches: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A fixed list of validation batches, windows at evenly spaced offsets.

        The same arguments always give the same batches, so held-out losses are
        comparable across runs; windows overlap only if the split is too short
        to hold them side by side.
        """
        data = self._split("val", context)
        if batch_size <= 0 or n_batches <= 0:
            raise ValueError(
                f"batch_size and n_batches must be positive, got {batch_size} and {n_batches}"
            )
        total = batch_size * n_batches
        last = data.numel() - context - 1
        offsets = torch.tensor(
            [i * last // (total - 1) if total > 1 else 0 for i in range(total)], dtype=torch.long
        )
        batches = []
        for chunk in offsets.split(batch_size):
            x, y = self._windows(data, chunk, context)
            batches.append((x, y))
        return batches


@functools.lru_cache(maxsize=1)
def _default_corpus() -> bytes:
    return generate_corpus(DEFAULT_CORPUS_SEED, DEFAULT_CORPUS_BYTES)


def default_dataset(val_fraction: float = 0.1) -> ByteDataset:
    """The benchmark dataset; the corpus is generated once per process and reused."""
    return ByteDataset.from_bytes(_default_corpus(), val_fraction)
