"""Byte-level file I/O of the spill tier: whole writes and reads, O_DIRECT-aligned.

O_DIRECT moves bytes between the file and memory only in aligned blocks
(address, offset and length multiples of ``ALIGN``). A payload is written
from where it lies: its middle goes in place, a partial first or last block
goes through an aligned, zero-padded staging buffer (``runtime.spill.layout.pieces``
says which is which). The same holds for reads, plus one case: a destination
whose address does not share the file's skew, read through the staging
buffer in segments. ``staging(nbytes)`` is the caller's aligned scratch
memory (the store's per-thread bounce buffer). ``destination`` makes (or
checks) the memory a read lands in.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.spill.layout import ALIGN, SpillFile, address, align_up, pieces

if TYPE_CHECKING:
    import torch

O_DIRECT = getattr(os, "O_DIRECT", 0)

Writer = Callable[[int, Any], int]
"""``os.write``'s signature: (fd, bytes-like) -> bytes written."""

Staging = Callable[[int], np.ndarray]


def write_all(writer: Writer, fd: int, data: np.ndarray) -> None:
    view = data.data
    while view:
        written = writer(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]


def pread_all(fd: int, out: np.ndarray, offset: int) -> None:
    done = 0
    while done < len(out):
        got = os.preadv(fd, [out[done:].data], offset + done)
        if got == 0:
            raise EOFError(f"file ends {len(out) - done} bytes early")
        done += got


def write_file(
    path: Path,
    header: bytes,
    payload: np.ndarray,
    skew: int,
    *,
    direct: bool,
    writer: Writer,
    staging: Staging,
) -> None:
    """Create ``path`` (which must not exist) holding the header, then the payload at ``skew``.

    Buffered writes are made durable and dropped from the page cache, so that
    a spilled tensor really leaves host memory in both modes.
    """
    nbytes = len(payload)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | (O_DIRECT if direct else 0)
    fd = os.open(path, flags, 0o600)
    try:
        staged = staging(len(header))
        staged[:] = np.frombuffer(header, np.uint8)
        write_all(writer, fd, staged)
        for start, end, in_place in pieces(nbytes, skew, direct):
            if in_place:
                write_all(writer, fd, payload[start:end])
            else:  # a partial first or last block: zero-filled around the bytes
                lo = start + skew - (start + skew) % ALIGN
                staged = staging(align_up(end + skew) - lo)
                staged[:] = 0
                staged[start + skew - lo : end + skew - lo] = payload[start:end]
                write_all(writer, fd, staged)
        if not direct:
            os.fdatasync(fd)
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_into(
    fd: int, dst: np.ndarray, entry: SpillFile, direct: bool, staging: Staging, segment: int
) -> None:
    """Fill ``dst`` (a caller's buffer) with the payload: in place where O_DIRECT allows."""
    nbytes, base, skew = entry.nbytes, entry.header_bytes, entry.skew
    if not direct:
        pread_all(fd, dst, base + skew)
        return
    if address(dst) % ALIGN == skew:
        ranges = pieces(nbytes, skew, direct=True)
    else:  # nothing lines up: everything through the bounce buffer
        size = align_up(skew + nbytes)
        ranges = [
            (max(0, lo - skew), min(nbytes, lo + segment - skew), False)
            for lo in range(0, size, segment)
        ]
    for start, end, in_place in ranges:
        if in_place:
            pread_all(fd, dst[start:end], base + skew + start)
        else:
            lo = start + skew - (start + skew) % ALIGN
            staged = staging(align_up(end + skew) - lo)
            pread_all(fd, staged, base + lo)
            np.copyto(dst[start:end], staged[start + skew - lo : end + skew - lo])


def destination(
    entry: SpillFile, out: torch.Tensor | None, pin_memory: bool
) -> tuple[torch.Tensor, np.ndarray, np.ndarray | None]:
    """The tensor to return, its bytes, and (for a new tensor) the whole aligned region
    it sits in, laid out as in the file: ``skew`` bytes, the payload, the padding."""
    import torch

    if out is not None:
        if (
            out.device.type != "cpu"
            or not out.is_contiguous()
            or out.dtype != entry.dtype
            or tuple(out.shape) != entry.shape
        ):
            raise ValueError(
                f"read {tuple(entry.key)}: out must be a contiguous CPU tensor of "
                f"{entry.dtype} and shape {entry.shape}"
            )
        return out, out.reshape(-1).view(torch.uint8).numpy(), None
    size = align_up(entry.skew + entry.nbytes)
    raw = torch.empty(size, dtype=torch.uint8, pin_memory=pin_memory)
    if raw.data_ptr() % ALIGN:  # the CPU allocator aligns to 64 bytes only
        raw = torch.empty(size + ALIGN, dtype=torch.uint8, pin_memory=pin_memory)
        offset = -raw.data_ptr() % ALIGN
        raw = raw[offset : offset + size]
    payload = raw[entry.skew : entry.skew + entry.nbytes]
    result = payload.view(entry.dtype).reshape(entry.shape)
    return result, payload.numpy(), raw.numpy()
