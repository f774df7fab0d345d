"""Spill-tier throughput against raw sequential I/O of the same bytes in the same directory.

Spill side: ``--size`` MiB of float32 tensors, ``--chunk`` MiB each, in
``HostPool`` buffers as the tier manager holds them, written with
``SpillStore.write_async`` (one checksummed file per tensor, ``--threads`` I/O
threads) and waited for, then read back with ``read_async`` into buffers
taken from a ``HostPool`` and given back after (the row ``read``: what the
tier manager does), and once more into new tensors (the row ``read, new
tensors``: an allocation and its page faults per read, for context). Raw
side: one file written sequentially in ``--chunk`` MiB writes from one
page-aligned pool buffer (the memory the spill side reads into) and fsynced,
then read back sequentially into that buffer: what the device gives a single
stream with no checksum, no header and no allocation. Both use O_DIRECT where
the directory takes it; otherwise both write buffered and fsync (the spill
store: ``fdatasync`` per file) and read after ``posix_fadvise(DONTNEED)``,
and the script says so.

Each round runs both sides (write, then read), the side going first
alternating from round to round, after one untimed warm-up round; files are
deleted between rounds, outside the timing. Figures are medians over rounds;
``ratio`` = spill median / raw median (goal: >= 0.8). MB = 10^6 bytes.

Run ``python benchmarks/bench_nvme.py --help``; ``--quick`` is a seconds-long smoke run.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from benchmarks._common import (
    DEFAULT_THREADS,
    environment_line,
    fmt,
    format_table,
    load_average,
    median,
    set_threads,
)
from runtime.host_pool import HostPool
from runtime.spill import SpillDirectory, SpillKey, SpillStore
from runtime.spill.layout import CHECKSUM, checksum

MIB = 2**20
GOAL = 0.8
NEW_TENSORS = "read, new tensors"
"""The extra row: spill reads that allocate their tensors, against the same raw read."""
_O_DIRECT = getattr(os, "O_DIRECT", 0)


def checksum_mbs(nbytes: int = 64 * MIB, reps: int = 3) -> float:
    """Payload-checksum throughput on one core (MB/s): the CPU the spill tier spends per byte."""
    data = np.frombuffer(os.urandom(nbytes), np.uint8)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        checksum(data)
        times.append(time.perf_counter() - start)
    return nbytes / median(times) / 1e6


def mode_name(direct: bool) -> str:
    return "O_DIRECT" if direct else "buffered + fsync"


class RawSequential:
    """One file, written and read front to back in ``chunk_bytes`` calls from one aligned buffer.

    The buffer is a ``HostPool`` buffer, the kind of memory the spill side
    reads into: O_DIRECT's speed depends on the memory too (how its pages are
    backed), and the ratio should compare the I/O paths only.
    """

    def __init__(self, path: Path, total_bytes: int, chunk_bytes: int, direct: bool) -> None:
        self.path, self.direct = path, direct
        self.chunks = total_bytes // chunk_bytes
        self.pool = HostPool()
        self.buffer = self.pool.tensor(torch.uint8, (chunk_bytes,)).numpy()  # page-aligned
        self.buffer[:] = np.frombuffer(os.urandom(chunk_bytes), np.uint8)

    def write(self) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (_O_DIRECT if self.direct else 0)
        fd = os.open(self.path, flags, 0o600)
        try:
            for _ in range(self.chunks):
                if os.write(fd, self.buffer.data) != len(self.buffer):
                    raise OSError(f"short write to {self.path}")
            os.fsync(fd)
        finally:
            os.close(fd)

    def drop_cache(self) -> None:
        """Buffered mode only: make the next read come from the device."""
        if not self.direct and hasattr(os, "posix_fadvise"):
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def read(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | (_O_DIRECT if self.direct else 0))
        try:
            for _ in range(self.chunks):
                if os.readv(fd, [self.buffer.data]) != len(self.buffer):
                    raise OSError(f"short read from {self.path}")
        finally:
            os.close(fd)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


class SpillSide:
    """The spill store writing and reading the same bytes as tensors, one file each."""

    def __init__(self, store: SpillStore, tensors: list[torch.Tensor]) -> None:
        self.store, self.tensors = store, tensors
        self.pool = HostPool(pin_memory=store.pin_memory)
        self.keys = [SpillKey(f"bench/{i}", "payload") for i in range(len(tensors))]

    def write(self) -> None:
        futures = [
            self.store.write_async(k, t) for k, t in zip(self.keys, self.tensors, strict=True)
        ]
        for f in futures:
            f.result()

    def read(self, check: bool = False) -> None:
        """Into pool buffers, each given back once read (and checked), as the tier manager does."""
        futures = [
            self.store.read_async(k, out=self.pool.tensor(t.dtype, t.shape))
            for k, t in zip(self.keys, self.tensors, strict=True)
        ]
        for future, source in zip(futures, self.tensors, strict=True):
            result = future.result()
            if check and not torch.equal(result, source):
                raise SystemExit("spill read returned different bytes than were written")
            self.pool.release(result)

    def read_new(self) -> None:
        """Into a new tensor per read (allocation and first-touch page faults included)."""
        futures = [self.store.read_async(k) for k in self.keys]
        for f in futures:
            f.result()

    def clear(self) -> None:
        for key in self.keys:
            self.store.remove(key)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="parent of the run's spill folder (default: the temp folder)",
    )
    parser.add_argument("--size", type=int, default=512, help="MiB per direction and side (512)")
    parser.add_argument("--chunk", type=int, default=16, help="MiB per tensor / per raw write (16)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (7)")
    parser.add_argument("--threads", type=int, default=2, help="spill I/O threads (2)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 16 MiB in 4 MiB chunks, 2 rounds"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.chunk, args.rounds = 16, 4, 2
    if args.chunk < 1 or args.size < args.chunk or args.rounds < 1:
        parser.error("need --chunk >= 1, --size >= --chunk and --rounds >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads(DEFAULT_THREADS)
    print(environment_line())
    chunk_bytes = args.chunk * MIB
    count = args.size // args.chunk
    total = count * chunk_bytes
    gen = torch.Generator().manual_seed(0)
    # The tier writes from pool buffers (page-aligned), so a read into a pool buffer
    # lines up with the file and goes in place; tensors from torch's allocator are
    # 64-byte aligned only, and their reads into a pool buffer would be bounced.
    sources = HostPool()
    tensors = [sources.copy_of(torch.rand(chunk_bytes // 4, generator=gen)) for _ in range(count)]

    with (
        SpillDirectory(args.dir) as spill_dir,
        SpillStore(spill_dir, threads=args.threads) as store,
    ):
        raw = RawSequential(
            spill_dir.path / "raw-sequential.bin", total, chunk_bytes, spill_dir.direct_io
        )
        spill = SpillSide(store, tensors)
        print(
            f"directory: {spill_dir.path} | {count} x {args.chunk} MiB = {total / MIB:.0f} MiB "
            f"per direction | {args.rounds} rounds + 1 warm-up | spill I/O threads {args.threads}"
        )
        print(f"spill I/O mode: {mode_name(store.direct_io)} ({CHECKSUM} per file, 4 KiB header)")
        print(
            f"raw I/O mode: {mode_name(raw.direct)} (one file, {args.chunk} MiB sequential calls, "
            f"one fsync)"
        )
        if not raw.direct:
            print(
                f"O_DIRECT is not supported in {args.dir}: both sides write buffered with fsync "
                "and read after posix_fadvise(DONTNEED)"
            )

        samples: dict[tuple[str, str], list[float]] = {}
        gc.collect()
        gc.disable()
        try:
            for rnd in range(args.rounds + 1):
                sides: list[tuple[str, SpillSide | RawSequential]] = [
                    ("spill", spill),
                    ("raw", raw),
                ]
                for name, side in sides if rnd % 2 == 0 else sides[::-1]:
                    start = time.perf_counter()
                    side.write()
                    write_s = time.perf_counter() - start
                    if isinstance(side, RawSequential):
                        side.drop_cache()
                    times = {"write": write_s}
                    start = time.perf_counter()
                    side.read()
                    times["read"] = time.perf_counter() - start
                    if isinstance(side, SpillSide):
                        if rnd == 0:
                            side.read(check=True)  # warm-up round: bitwise check, untimed
                        gc.collect()
                        start = time.perf_counter()
                        side.read_new()
                        times[NEW_TENSORS] = time.perf_counter() - start
                    side.clear()
                    gc.collect()
                    for direction, seconds in times.items():
                        if rnd > 0:
                            samples.setdefault((name, direction), []).append(total / seconds / 1e6)
        finally:
            gc.enable()

    rows, verdicts = [], []
    for direction in ("write", "read", NEW_TENSORS):
        spill_mbs = median(samples["spill", direction])
        raw_mbs = median(samples["raw", direction.split(",")[0]])
        ratio = spill_mbs / raw_mbs
        rows.append([direction, fmt(spill_mbs, 0), fmt(raw_mbs, 0), fmt(ratio)])
        if direction != NEW_TENSORS:
            verdicts.append(f"{direction}: {fmt(ratio)} ({'met' if ratio >= GOAL else 'NOT MET'})")
    print()
    print(format_table(["direction", "spill MB/s", "raw MB/s", "ratio"], rows))
    print()
    spread = " | ".join(
        f"{name} {direction} {min(v):.0f}-{max(v):.0f}" for (name, direction), v in samples.items()
    )
    print(f"per-round MB/s min-max: {spread}")
    print(f"goal spill/raw >= {GOAL}: " + "; ".join(verdicts))
    rate = checksum_mbs(16 * MIB if args.quick else 64 * MIB)
    print(
        f"{CHECKSUM} on one core here: {rate:.0f} MB/s; every spilled byte is checksummed once "
        f"per write and once per read, so the spill side needs about raw MB/s / {rate:.0f} of a "
        "free core to keep up with the device"
    )
    print(f"load average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
