"""The NVMe spill tier: optimizer-state tensors as checked files in a per-run folder.

- ``directory``: the private per-run folder and its clean-up (exit, SIGTERM, Ctrl-C);
- ``layout``: the file format (header, 4 KiB alignment, XXH3-64 payload checksum);
- ``store``: ``SpillStore``, which writes and reads tensors on I/O threads;
- ``errors``: the one-line errors of all three.
"""

from runtime.spill.directory import SpillDirectory, probe_direct_io
from runtime.spill.errors import (
    ChecksumError,
    SpillError,
    SpillFull,
    SpillKey,
    SpillReadError,
    SpillWriteError,
)
from runtime.spill.layout import ALIGN, SpillFile
from runtime.spill.store import SpillStats, SpillStore

__all__ = [
    "ALIGN",
    "ChecksumError",
    "SpillDirectory",
    "SpillError",
    "SpillFile",
    "SpillFull",
    "SpillKey",
    "SpillReadError",
    "SpillStats",
    "SpillStore",
    "SpillWriteError",
    "probe_direct_io",
]
