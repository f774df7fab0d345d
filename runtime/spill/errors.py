"""What can go wrong in the spill tier, and the key that names a spilled tensor.

Every error is an ``OSError`` whose ``str()`` is one line naming the file (and
the key) at fault, so that the CLI can print it as is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple


class SpillKey(NamedTuple):
    """One tensor of the state store: a block id and the name of one of its slots."""

    block: str
    slot: str


class SpillError(OSError):
    """A spill-tier failure; ``str()`` is one line naming the path (and key) at fault."""

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        key: SpillKey | None = None,
        code: int | None = None,
    ) -> None:
        if code is None:
            super().__init__(message)
        else:
            super().__init__(code, message)
        self.message = message
        self.path = None if path is None else Path(path)
        self.key = key

    def __str__(self) -> str:
        return self.message


class SpillWriteError(SpillError):
    """A write failed (EIO, EROFS, a removed directory...); the tensor was not spilled."""


class SpillFull(SpillWriteError):
    """A write failed because the device or the quota is full (ENOSPC, EDQUOT)."""


class SpillReadError(SpillError):
    """A spilled tensor could not be read back."""


class ChecksumError(SpillReadError):
    """The bytes on disk are not the bytes that were written."""
