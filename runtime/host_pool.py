"""Preallocated host memory for optimizer state at rest: pinned where CUDA is present.

Why a pool: pinning a tensor (``cudaHostAlloc``) costs milliseconds and
serialises with the device, and a fresh CPU tensor pays a page fault per 4 KiB
the first time it is touched, which held spill reads at half the disk's rate.
Optimizer state comes in a handful of sizes that repeat every step (one per
block shape and slot), so a free list per exact size makes the steady state
allocate nothing: a buffer released by one slot is the next one's.

Memory comes in chunks (``chunk_bytes``, or one request if larger) carved
from the front; every buffer starts on a 4 KiB boundary, as O_DIRECT and DMA
want. Chunks are never returned (the pool lives as long as the state store).
A buffer released with ``after=`` (a CUDA event) goes back to its free list
only once the event has completed, so an asynchronous copy still reading it
never sees it reused.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

import torch

from traces.recorder import NULL_RECORDER, Recorder
from traces.schema import NO_STEP, Category

ALIGN = 4096
DEFAULT_CHUNK_BYTES = 64 * 2**20


def _align_up(n: int) -> int:
    return -(-max(n, 1) // ALIGN) * ALIGN


@dataclass(frozen=True)
class PoolStats:
    """Bytes held by the pool and how often a request found a buffer ready."""

    reserved_bytes: int = 0  # every chunk allocated so far
    in_use_bytes: int = 0  # buffers handed out and not yet released (aligned sizes)
    peak_in_use_bytes: int = 0
    acquires: int = 0
    reuses: int = 0  # acquires served from a free list
    chunks: int = 0


class HostPool:
    """Host buffers by exact (4 KiB-rounded) size; thread-safe.

    ``tensor(dtype, shape)`` hands out a contiguous tensor whose storage is a
    pool buffer; ``release(tensor)`` takes it back. A tensor must be released
    at most once and not used afterwards (its memory will hold another slot).
    """

    def __init__(
        self,
        *,
        pin_memory: bool | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        recorder: Recorder = NULL_RECORDER,
    ) -> None:
        if chunk_bytes < ALIGN:
            raise ValueError(f"chunk_bytes must be at least {ALIGN}, got {chunk_bytes}")
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.chunk_bytes = _align_up(chunk_bytes)
        self._recorder = recorder
        self._lock = threading.Lock()
        self._free: defaultdict[int, list[torch.Tensor]] = defaultdict(list)
        self._out: dict[int, tuple[int, torch.Tensor]] = {}  # address -> (size, buffer)
        self._deferred: list[tuple[Any, int, torch.Tensor]] = []  # (event, size, buffer)
        self._chunk: torch.Tensor | None = None
        self._cursor = 0
        self._stats = PoolStats()

    def stats(self) -> PoolStats:
        with self._lock:
            return self._stats

    def reserve(self, nbytes: int) -> None:
        """Allocate ``nbytes`` now (one chunk), so that the first steps do not pay for it."""
        with self._lock:
            if self._chunk is None or self._chunk.numel() - self._cursor < nbytes:
                self._grow(_align_up(nbytes))

    def tensor(self, dtype: torch.dtype, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """A contiguous tensor of ``dtype`` and ``shape`` in pool memory (contents undefined)."""
        numel = 1
        for n in shape:
            numel *= n
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        return self.acquire(nbytes)[:nbytes].view(dtype).view(tuple(shape))

    def copy_of(self, source: torch.Tensor) -> torch.Tensor:
        """``source`` copied into pool memory (from any device; blocking)."""
        out = self.tensor(source.dtype, source.shape)
        out.copy_(source.detach())
        return out

    def acquire(self, nbytes: int) -> torch.Tensor:
        """A uint8 buffer of at least ``nbytes`` (rounded up to 4 KiB) at a 4 KiB boundary."""
        size = _align_up(nbytes)
        with self._lock:
            self._collect()
            free = self._free[size]
            reused = bool(free)
            if reused:
                buffer = free.pop()
            else:
                if self._chunk is None or self._chunk.numel() - self._cursor < size:
                    self._grow(max(self.chunk_bytes, size))
                assert self._chunk is not None
                buffer = self._chunk[self._cursor : self._cursor + size]
                self._cursor += size
            self._out[buffer.data_ptr()] = (size, buffer)
            in_use = self._stats.in_use_bytes + size
            self._stats = replace(
                self._stats,
                in_use_bytes=in_use,
                peak_in_use_bytes=max(in_use, self._stats.peak_in_use_bytes),
                acquires=self._stats.acquires + 1,
                reuses=self._stats.reuses + reused,
            )
        return buffer

    def release(self, tensor: torch.Tensor, *, after: Any = None) -> None:
        """Give back a tensor from ``tensor``/``acquire``/``copy_of``; with ``after`` (a CUDA
        event), only once it has completed."""
        with self._lock:
            entry = self._out.pop(tensor.data_ptr(), None)
            if entry is None:
                raise ValueError("release: this tensor does not start a buffer of this pool")
            size, buffer = entry
            self._stats = replace(self._stats, in_use_bytes=self._stats.in_use_bytes - size)
            if after is None:
                self._free[size].append(buffer)
            else:
                self._deferred.append((after, size, buffer))

    def owns(self, tensor: torch.Tensor) -> bool:
        with self._lock:
            return tensor.data_ptr() in self._out

    def _collect(self) -> None:
        """Move buffers whose copies have completed back to their free lists (lock held)."""
        if not self._deferred:
            return
        waiting = []
        for event, size, buffer in self._deferred:
            if event.query():
                self._free[size].append(buffer)
            else:
                waiting.append((event, size, buffer))
        self._deferred = waiting

    def _grow(self, nbytes: int) -> None:
        """A new chunk of ``nbytes`` (lock held); the old chunk's tail stays unused."""
        raw = torch.empty(nbytes + ALIGN, dtype=torch.uint8, pin_memory=self.pin_memory)
        offset = -raw.data_ptr() % ALIGN
        self._chunk = raw[offset : offset + nbytes]
        self._cursor = 0
        self._stats = replace(
            self._stats,
            reserved_bytes=self._stats.reserved_bytes + nbytes,
            chunks=self._stats.chunks + 1,
        )
        now = self._recorder.clock()
        self._recorder.add_span(
            "host_pool_grow",
            Category.EVENT,
            now,
            now,
            step=NO_STEP,
            nbytes=nbytes,
            detail="pinned" if self.pin_memory else "pageable",
        )
