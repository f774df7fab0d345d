"""The spill store: optimizer-state tensors as checked files, moved on I/O threads.

A ``SpillStore`` writes one file per ``(block id, slot)`` key (format in
``runtime.spill.layout``, aligned byte I/O in ``runtime.spill.fileio``) on a
pool of I/O threads and reads it back into a new host tensor (pinned where
CUDA is present) or into a caller's buffer, checking the payload checksum on
every read.

I/O mode: O_DIRECT with page-aligned buffers where the file system takes it
(probed once per directory, ``SpillDirectory.direct_io``), else buffered writes
followed by ``fdatasync`` and ``posix_fadvise(DONTNEED)``, so that a spilled
tensor really leaves host memory (no page-cache copy) in both modes. Files are
scratch: a crash loses them with the run, so O_DIRECT writes are not fsynced.

Failure contract (for the tier manager): a write that fails for any OS reason
raises ``SpillWriteError`` (``SpillFull`` for ENOSPC / EDQUOT) from the future,
with ``key`` and ``path`` set; the partial file is gone and the key is absent
from the store (an older version of it is dropped too, so a stale copy can
never be read). The store has already counted the failure, recorded a
``spill_write_failed`` event on its recorder and called ``on_failure``; the
caller keeps the tensor on the host. A read that fails raises
``SpillReadError`` (``ChecksumError`` when the bytes or the header do not
match what was written): the state is lost, never silently wrong.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import itertools
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from runtime.spill.directory import SpillDirectory
from runtime.spill.errors import (
    ChecksumError,
    SpillError,
    SpillFull,
    SpillKey,
    SpillReadError,
    SpillWriteError,
)
from runtime.spill.fileio import O_DIRECT, Writer, destination, pread_all, read_into, write_file
from runtime.spill.layout import (
    ALIGN,
    SpillFile,
    address,
    aligned_buffer,
    check_header,
    checksum,
    encode_header,
    file_name,
)
from traces.recorder import NULL_RECORDER, Recorder
from traces.schema import NO_STEP, Category, Tier

if TYPE_CHECKING:  # torch is imported where a tensor is touched, so that a process can
    import torch  # set up (and clean up) its spill directory without loading torch

DEFAULT_SEGMENT_BYTES = 8 * 2**20
"""Bounce-buffer size for the one case that needs more than a block: a read into an
``out`` tensor whose address modulo 4096 differs from the file's skew."""

_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


@dataclass
class SpillStats:
    """Totals since the store opened. Seconds are summed over I/O threads (busy time)."""

    writes: int = 0
    reads: int = 0
    bytes_written: int = 0
    bytes_read: int = 0
    write_s: float = 0.0
    read_s: float = 0.0
    failures: int = 0


def _as_key(key: SpillKey | tuple[str, str]) -> SpillKey:
    if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key)):
        raise TypeError(f"a spill key is a (block id, slot) pair of strings, got {key!r}")
    return SpillKey(*key)


class SpillStore:
    """Spilled tensors by ``(block id, slot)``; I/O on a pool of ``threads`` threads.

    ``directory`` is a ``SpillDirectory`` (which the caller closes), or a
    parent folder in which the store makes its own and removes it on
    ``close()``. ``direct_io``: None probes, False forces buffered I/O, True
    requires O_DIRECT. ``writer`` replaces ``os.write`` (tests inject ENOSPC).
    ``on_failure`` is called on the I/O thread with each ``SpillWriteError``
    before it is raised from the future. Reads return pinned tensors when
    ``pin_memory`` (default: CUDA is available).

    Thread-safety: every method may be called from any thread. Operations on
    one key run in submission order (each waits for the key's previous one, so
    a read submitted after a write sees it); a tensor being written must not
    be modified until its future is done (it is read in place, not copied).
    ``key in store``, ``keys()`` and ``total_bytes()`` reflect completed writes.
    """

    def __init__(
        self,
        directory: SpillDirectory | str | os.PathLike[str],
        *,
        threads: int = 2,
        recorder: Recorder = NULL_RECORDER,
        writer: Writer = os.write,
        direct_io: bool | None = None,
        pin_memory: bool | None = None,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        on_failure: Callable[[SpillWriteError], None] | None = None,
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if segment_bytes < ALIGN or segment_bytes % ALIGN:
            raise ValueError(
                f"segment_bytes must be a positive multiple of {ALIGN}, got {segment_bytes}"
            )
        self._owns_directory = not isinstance(directory, SpillDirectory)
        self.directory = (
            directory if isinstance(directory, SpillDirectory) else SpillDirectory(directory)
        )
        if direct_io and not self.directory.direct_io:
            if self._owns_directory:
                self.directory.close()
            raise SpillError(
                f"O_DIRECT is not supported in {self.directory.path}", path=self.directory.path
            )
        self.direct_io: bool = self.directory.direct_io if direct_io is None else direct_io
        import torch

        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self._recorder = recorder
        self._writer = writer
        self._segment_bytes = segment_bytes
        self._on_failure = on_failure
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="spill-io")
        self._lock = threading.Lock()
        self._index: dict[SpillKey, SpillFile] = {}
        self._pending: dict[SpillKey, Future[Any]] = {}  # each key's last operation
        self._stats = SpillStats()
        self._local = threading.local()
        self._serial = itertools.count()
        self._closed = False

    # -- queries ------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self.directory.path

    @property
    def closed(self) -> bool:
        return self._closed

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._index

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    def keys(self) -> list[SpillKey]:
        with self._lock:
            return list(self._index)

    def entry(self, key: SpillKey | tuple[str, str]) -> SpillFile:
        with self._lock:
            return self._index[_as_key(key)]

    def total_bytes(self) -> int:
        """Tensor bytes held (``numel * element_size``, as ``runtime.state.state_bytes``)."""
        with self._lock:
            return sum(e.nbytes for e in self._index.values())

    def disk_bytes(self) -> int:
        """Bytes of the files, headers and padding included."""
        with self._lock:
            return sum(e.file_bytes for e in self._index.values())

    def stats(self) -> SpillStats:
        with self._lock:
            return dataclasses.replace(self._stats)

    # -- operations ---------------------------------------------------------

    def write_async(
        self, key: SpillKey | tuple[str, str], tensor: torch.Tensor, *, step: int = NO_STEP
    ) -> Future[None]:
        """Spill ``tensor`` (CPU, contiguous, any dtype) under ``key``, replacing any earlier one."""
        key = _as_key(key)
        if tensor.device.type != "cpu" or not tensor.is_contiguous():
            raise ValueError(
                f"spill {tuple(key)}: expected a contiguous CPU tensor, got {tensor.device} "
                f"{'contiguous' if tensor.is_contiguous() else 'non-contiguous'}"
            )
        with self._lock:
            self._check_open()
            before = self._pending.get(key)
            future = self._pool.submit(self._write_job, key, tensor.detach(), before, step)
            self._pending[key] = future
        future.add_done_callback(lambda f: self._settle(key, f))
        return future

    def read_async(
        self,
        key: SpillKey | tuple[str, str],
        *,
        out: torch.Tensor | None = None,
        step: int = NO_STEP,
    ) -> Future[torch.Tensor]:
        """Read ``key`` back into a new host tensor, or into ``out`` (same dtype and shape)."""
        key = _as_key(key)
        with self._lock:
            self._check_open()
            before = self._pending.get(key)
            if before is None and key not in self._index:
                raise KeyError(f"no spilled tensor for {tuple(key)}")
            future = self._pool.submit(self._read_job, key, before, out, step)
            self._pending[key] = future
        future.add_done_callback(lambda f: self._settle(key, f))
        return future

    def write(
        self, key: SpillKey | tuple[str, str], tensor: torch.Tensor, *, step: int = NO_STEP
    ) -> None:
        self.write_async(key, tensor, step=step).result()

    def read(
        self,
        key: SpillKey | tuple[str, str],
        *,
        out: torch.Tensor | None = None,
        step: int = NO_STEP,
    ) -> torch.Tensor:
        return self.read_async(key, out=out, step=step).result()

    def remove(self, key: SpillKey | tuple[str, str]) -> None:
        """Delete ``key``'s file (after its pending operations). KeyError if absent."""
        key = _as_key(key)
        with self._lock:
            before = self._pending.get(key)
        if before is not None:
            wait_futures([before])
        with self._lock:
            entry = self._index.pop(key, None)
        if entry is None:
            raise KeyError(f"no spilled tensor for {tuple(key)}")
        with contextlib.suppress(FileNotFoundError):
            entry.path.unlink()

    def flush(self) -> None:
        """Wait for every operation submitted so far (errors stay on their futures)."""
        with self._lock:
            pending = list(self._pending.values())
        wait_futures(pending)

    def close(self) -> None:
        """Finish running I/O, cancel queued I/O, delete every file. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            entries = list(self._index.values())
            self._index.clear()
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                entry.path.unlink()
        if self._owns_directory:
            self.directory.close()

    def __enter__(self) -> SpillStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SpillError(f"spill store in {self.path} is closed", path=self.path)
        if self.directory.closed:
            raise SpillError(f"spill directory {self.path} was removed", path=self.path)

    def _settle(self, key: SpillKey, future: Future[Any]) -> None:
        with self._lock:
            if self._pending.get(key) is future:
                del self._pending[key]

    def _staging(self, nbytes: int) -> np.ndarray:
        """Aligned memory for this I/O thread: its ``segment_bytes`` bounce buffer, reused."""
        if nbytes > self._segment_bytes:
            return aligned_buffer(nbytes)
        bounce = getattr(self._local, "bounce", None)
        if bounce is None:
            bounce = self._local.bounce = aligned_buffer(self._segment_bytes)
        return bounce[:nbytes]

    def _write_job(
        self, key: SpillKey, tensor: torch.Tensor, before: Future[Any] | None, step: int
    ) -> None:
        if before is not None:
            wait_futures([before])
        nbytes = tensor.numel() * tensor.element_size()
        final = self.path / file_name(key)
        tmp = final.with_name(f"{final.name}.{next(self._serial)}.tmp")
        start_ns, t0 = self._recorder.clock(), time.perf_counter()
        try:
            self._check_open()
            entry = self._write_file(key, tensor, final, tmp)
        except OSError as exc:
            self._fail_write(key, tmp, nbytes, step, exc)
        except BaseException:  # not an I/O failure (a bug, an interrupt): no partial file either
            self._discard(key, tmp)
            raise
        seconds = time.perf_counter() - t0
        with self._lock:
            self._index[key] = entry
            self._stats.writes += 1
            self._stats.bytes_written += nbytes
            self._stats.write_s += seconds
        self._recorder.add_span(
            "spill_write",
            Category.IO,
            start_ns,
            self._recorder.clock(),
            step=step,
            block=key.block,
            nbytes=nbytes,
            tier_from=Tier.HOST,
            tier_to=Tier.NVME,
            detail=key.slot,
        )

    def _write_file(self, key: SpillKey, tensor: torch.Tensor, final: Path, tmp: Path) -> SpillFile:
        import torch

        payload = tensor.resolve_conj().resolve_neg().reshape(-1).view(torch.uint8).numpy()
        nbytes = len(payload)
        skew = address(payload) % ALIGN if self.direct_io and nbytes else 0
        digest = checksum(payload)
        entry = SpillFile(key, final, tensor.dtype, tuple(tensor.shape), nbytes, digest, 0, skew)
        header = encode_header(entry)
        entry = dataclasses.replace(entry, header_bytes=len(header))
        write_file(
            tmp,
            header,
            payload,
            skew,
            direct=self.direct_io,
            writer=self._writer,
            staging=self._staging,
        )
        self._check_open()
        os.replace(tmp, final)
        return entry

    def _discard(self, key: SpillKey, tmp: Path) -> None:
        """After a failed write: no partial file, and no older version of ``key`` either."""
        with contextlib.suppress(OSError):
            tmp.unlink()
        with self._lock:
            old = self._index.pop(key, None)
            self._stats.failures += 1
        if old is not None:
            with contextlib.suppress(OSError):
                old.path.unlink()

    def _fail_write(
        self, key: SpillKey, tmp: Path, nbytes: int, step: int, exc: OSError
    ) -> NoReturn:
        self._discard(key, tmp)
        error: SpillWriteError
        if isinstance(exc, SpillError):  # the store or its directory was closed meanwhile
            error = SpillWriteError(exc.message, path=exc.path, key=key, code=exc.errno)
        else:
            cls = SpillFull if exc.errno in _FULL_ERRNOS else SpillWriteError
            reason = exc.strerror or str(exc)
            message = f"cannot spill {tuple(key)} to {tmp}: {reason}"
            error = cls(message, path=tmp, key=key, code=exc.errno)
        now = self._recorder.clock()
        self._recorder.add_span(
            "spill_write_failed",
            Category.EVENT,
            now,
            now,
            step=step,
            block=key.block,
            nbytes=nbytes,
            tier_from=Tier.HOST,
            tier_to=Tier.NVME,
            detail=str(error),
        )
        if self._on_failure is not None:
            self._on_failure(error)
        raise error from exc

    def _read_job(
        self, key: SpillKey, before: Future[Any] | None, out: torch.Tensor | None, step: int
    ) -> torch.Tensor:
        if before is not None:
            wait_futures([before])
        with self._lock:
            entry = self._index.get(key)
        if entry is None:  # its write failed, or it was removed meanwhile
            raise KeyError(f"no spilled tensor for {tuple(key)}")
        start_ns, t0 = self._recorder.clock(), time.perf_counter()
        result, dst, region = destination(entry, out, self.pin_memory)
        try:
            self._check_open()
            fd = os.open(entry.path, os.O_RDONLY | (O_DIRECT if self.direct_io else 0))
            try:
                header = self._staging(entry.header_bytes)
                pread_all(fd, header, 0)
                check_header(header, entry)
                if region is not None:  # our own buffer: the whole region in one call
                    pread_all(fd, region, entry.header_bytes)
                else:
                    read_into(fd, dst, entry, self.direct_io, self._staging, self._segment_bytes)
                if not self.direct_io and hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        except SpillError:
            raise
        except (OSError, EOFError) as exc:
            cls = ChecksumError if isinstance(exc, EOFError) else SpillReadError
            reason = getattr(exc, "strerror", None) or str(exc)
            raise cls(
                f"cannot read spilled tensor {tuple(key)} from {entry.path}: {reason}",
                path=entry.path,
                key=key,
                code=getattr(exc, "errno", None) or errno.EIO,
            ) from exc
        if checksum(dst) != entry.checksum:
            raise ChecksumError(
                f"spilled tensor {tuple(key)} in {entry.path}: payload checksum mismatch",
                path=entry.path,
                key=key,
                code=errno.EIO,
            )
        seconds = time.perf_counter() - t0
        with self._lock:
            self._stats.reads += 1
            self._stats.bytes_read += entry.nbytes
            self._stats.read_s += seconds
        self._recorder.add_span(
            "spill_read",
            Category.IO,
            start_ns,
            self._recorder.clock(),
            step=step,
            block=key.block,
            nbytes=entry.nbytes,
            tier_from=Tier.NVME,
            tier_to=Tier.HOST,
            detail=key.slot,
        )
        return result
