"""Measure the machine at hand: compute rates, memory and link bandwidths, disk.

``asteria-bench profile`` turns these numbers into a hardware profile in the
simulator's format, so a trace recorded here can be replayed against what
this machine really does. Every figure is a median over repetitions after a
warm-up; sizes are chosen so that one measurement takes tens of milliseconds.
"""

from __future__ import annotations

import functools
import mmap
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class Measurements:
    cpu_fp32_flops: float
    cpu_fp64_flops: float
    host_copy_bandwidth: float  # bytes read + written per second by a large clone
    eigh_seconds: dict[int, float] = field(default_factory=dict)  # fp32, by matrix size
    gpu_name: str | None = None
    gpu_bf16_flops: float | None = None
    gpu_fp32_flops: float | None = None
    gpu_memory_bytes: int | None = None
    gpu_copy_bandwidth: float | None = None
    h2d_bandwidth: float | None = None  # pinned
    d2h_bandwidth: float | None = None
    disk_write_bandwidth: float | None = None
    disk_read_bandwidth: float | None = None
    disk_latency_s: float | None = None
    disk_direct_io: bool = False


def _median_seconds(
    fn: Callable[[], object], reps: int, sync: Callable[[], None] = lambda: None
) -> float:
    fn()
    sync()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gemm_flops(dtype: torch.dtype, device: torch.device, n: int, reps: int = 5) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return 2.0 * n**3 / _median_seconds(lambda: a @ b, reps, sync)


def copy_bandwidth(device: torch.device, nbytes: int, reps: int = 5) -> float:
    x = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return 2.0 * nbytes / _median_seconds(x.clone, reps, sync)


def eigh_seconds(sizes: tuple[int, ...] = (128, 256, 512)) -> dict[int, float]:
    out = {}
    for n in sizes:
        x = torch.randn(n, n)
        a = x @ x.T
        out[n] = _median_seconds(functools.partial(torch.linalg.eigh, a), 3)
    return out


def pinned_bandwidth(nbytes: int, reps: int = 5) -> tuple[float, float]:
    """(host-to-device, device-to-host) bytes/s with pinned host memory."""
    host = torch.empty(nbytes // 4, dtype=torch.float32).pin_memory()
    dev = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda")
    sync = torch.cuda.synchronize
    h2d = nbytes / _median_seconds(lambda: dev.copy_(host, non_blocking=True), reps, sync)
    d2h = nbytes / _median_seconds(lambda: host.copy_(dev, non_blocking=True), reps, sync)
    return h2d, d2h


def disk_bandwidth(
    directory: Path, nbytes: int = 128 * 2**20, chunk: int = 8 * 2**20
) -> tuple[float, float, float, bool]:
    """(write B/s, read B/s, 4 KiB read latency s, O_DIRECT used) of real files in ``directory``.

    O_DIRECT with page-aligned buffers bypasses the page cache where the file
    system allows it; elsewhere the write is fsynced and the read follows a
    ``posix_fadvise(DONTNEED)`` so that it still comes from the device.
    """
    path = directory / f".asteria-probe-{os.getpid()}"
    buffer = mmap.mmap(-1, chunk)
    buffer.write(os.urandom(chunk))
    direct = getattr(os, "O_DIRECT", 0)
    try:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | direct, 0o600)
            used_direct = bool(direct)
        except OSError:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            used_direct = False
        start = time.perf_counter()
        try:
            for _ in range(nbytes // chunk):
                os.write(fd, buffer)
        except OSError:
            os.close(fd)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            used_direct = False
            start = time.perf_counter()
            for _ in range(nbytes // chunk):
                os.write(fd, buffer)
        os.fsync(fd)
        write_bw = nbytes / (time.perf_counter() - start)
        os.close(fd)
        flags = os.O_RDONLY | (direct if used_direct else 0)
        fd = os.open(path, flags)
        if not used_direct and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        start = time.perf_counter()
        while os.readv(fd, [buffer]) > 0:
            pass
        read_bw = nbytes / (time.perf_counter() - start)
        small = mmap.mmap(-1, 4096)
        latencies = []
        for i in range(32):
            offset = (i * 7919 * 4096) % max(4096, nbytes - 4096)
            offset -= offset % 4096
            t0 = time.perf_counter()
            os.preadv(fd, [small], offset)
            latencies.append(time.perf_counter() - t0)
        os.close(fd)
        return write_bw, read_bw, statistics.median(latencies), used_direct
    finally:
        path.unlink(missing_ok=True)


def worker_interference(n: int = 384, seconds: float = 1.0) -> float:
    """How much a concurrent refresh-like job slows the training thread, as a fraction.

    Times a one-thread GEMM loop alone, then while another thread runs eigh in a
    loop (what a host refresh worker does); returns slowdown - 1. On a machine
    with cores to spare this is near 0; with shared cores or memory bandwidth
    it is what an asynchronous run pays on its critical path.
    """
    import threading

    a = torch.randn(n, n)
    sym = a @ a.T

    def gemm_rate() -> float:
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ a
            done += 1
        return done / (time.perf_counter() - start)

    alone = gemm_rate()
    stop = threading.Event()

    def job() -> None:
        while not stop.is_set():
            torch.linalg.eigh(sym)

    worker = threading.Thread(target=job, name="probe-worker")
    worker.start()
    try:
        shared = gemm_rate()
    finally:
        stop.set()
        worker.join()
    return max(0.0, alone / shared - 1.0)


def measure(disk_dir: Path | None, *, quick: bool = False) -> Measurements:
    n = 256 if quick else 1024
    cpu = torch.device("cpu")
    m = Measurements(
        cpu_fp32_flops=gemm_flops(torch.float32, cpu, n),
        cpu_fp64_flops=gemm_flops(torch.float64, cpu, n),
        host_copy_bandwidth=copy_bandwidth(cpu, (16 if quick else 256) * 2**20),
        eigh_seconds=eigh_seconds((64, 128) if quick else (128, 256, 512, 1024)),
    )
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        props = torch.cuda.get_device_properties(gpu)
        m.gpu_name = props.name
        m.gpu_memory_bytes = int(props.total_memory)
        m.gpu_bf16_flops = gemm_flops(torch.bfloat16, gpu, 8192)
        m.gpu_fp32_flops = gemm_flops(torch.float32, gpu, 8192)
        m.gpu_copy_bandwidth = copy_bandwidth(gpu, 2**30)
        m.h2d_bandwidth, m.d2h_bandwidth = pinned_bandwidth(2**28)
    if disk_dir is not None:
        size = (16 if quick else 256) * 2**20
        w, r, lat, direct = disk_bandwidth(disk_dir, size, min(size, 8 * 2**20))
        m.disk_write_bandwidth, m.disk_read_bandwidth, m.disk_latency_s, m.disk_direct_io = (
            w,
            r,
            lat,
            direct,
        )
    return m
