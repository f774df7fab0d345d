"""``asteria-bench profile``: measure this machine and write it as a hardware profile.

The profile has the format of ``simulator/profiles/*.toml``; measured numbers
carry ``basis = "measured"`` and say how they were measured, the few that
cannot be measured from one process (network, link latency) are marked
assumed. On a machine without a GPU the CPU is the compute device, as it is
for the runtime: its memory is the "device" memory and the link is unified.
"""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path

import psutil

from asteria_bench.errors import UserError
from runtime.probe import Measurements, measure
from simulator.profiles import (
    Basis,
    GpuSpec,
    HardwareProfile,
    HostSpec,
    LinkKind,
    LinkSpec,
    NetworkSpec,
    NvmeSpec,
    Quantity,
    dump_profile,
    loads_profile,
)
from traces.atomic import atomic_write_text

HOW = "measured by asteria-bench profile"


def _measured(value: float, unit: str, how: str) -> Quantity:
    return Quantity(value=float(value), unit=unit, source=f"{HOW}: {how}", basis=Basis.MEASURED)


def _count(value: int, how: str) -> Quantity:
    return Quantity(value=int(value), unit="count", source=f"{HOW}: {how}", basis=Basis.MEASURED)


def _assumed(value: float, unit: str, why: str) -> Quantity:
    return Quantity(value=float(value), unit=unit, source=why, basis=Basis.ASSUMED)


def _cpu_model() -> str:
    from runtime.telemetry import collect_hardware

    return collect_hardware().cpu_model or platform.processor() or "unknown CPU"


def to_profile(m: Measurements, name: str) -> HardwareProfile:
    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    memory = psutil.virtual_memory().total
    eigh = ", ".join(f"eigh {n}: {1e3 * s:.1f} ms" for n, s in sorted(m.eigh_seconds.items()))
    host = HostSpec(
        cpu_model=_cpu_model(),
        cpu_cores=_count(cores, "psutil physical cores"),
        cpu_fp64_flops=_measured(m.cpu_fp64_flops, "FLOP/s", "fp64 GEMM, all threads"),
        cpu_fp32_flops=_measured(m.cpu_fp32_flops, "FLOP/s", f"fp32 GEMM, all threads ({eigh})"),
        memory_bytes=_measured(memory, "B", "psutil total memory"),
        memory_bandwidth=_measured(
            m.host_copy_bandwidth, "B/s", "large tensor clone, bytes read + written"
        ),
    )
    if m.gpu_name is not None:
        assert m.gpu_bf16_flops and m.gpu_fp32_flops and m.gpu_memory_bytes and m.gpu_copy_bandwidth
        assert m.h2d_bandwidth and m.d2h_bandwidth
        gpu = GpuSpec(
            model=m.gpu_name,
            bf16_dense_flops=_measured(m.gpu_bf16_flops, "FLOP/s", "bf16 GEMM 8192^3"),
            fp32_flops=_measured(m.gpu_fp32_flops, "FLOP/s", "fp32 GEMM 8192^3 (TF32 off)"),
            memory_bytes=_measured(m.gpu_memory_bytes, "B", "torch.cuda device properties"),
            memory_bandwidth=_measured(
                m.gpu_copy_bandwidth, "B/s", "1 GiB device clone, bytes read + written"
            ),
        )
        lowered = m.gpu_name.lower()
        kind = (
            LinkKind.NVLINK_C2C
            if "gh200" in lowered
            else LinkKind.UNIFIED
            if "gb10" in lowered
            else LinkKind.PCIE
        )
        link = LinkSpec(
            kind=kind,
            h2d_bandwidth=_measured(m.h2d_bandwidth, "B/s", "pinned 256 MiB host-to-device copy"),
            d2h_bandwidth=_measured(m.d2h_bandwidth, "B/s", "pinned 256 MiB device-to-host copy"),
            latency=_assumed(5e-6, "s", "estimate: launch plus transfer setup of a small copy"),
        )
    else:
        gpu = GpuSpec(
            model=f"none: the CPU ({host.cpu_model}) is the compute device",
            bf16_dense_flops=_measured(
                m.cpu_fp32_flops, "FLOP/s", "no GPU: the CPU's fp32 GEMM rate"
            ),
            fp32_flops=_measured(m.cpu_fp32_flops, "FLOP/s", "no GPU: the CPU's fp32 GEMM rate"),
            memory_bytes=_measured(memory, "B", "no GPU: host memory"),
            memory_bandwidth=_measured(
                m.host_copy_bandwidth, "B/s", "no GPU: host clone bandwidth"
            ),
        )
        link = LinkSpec(
            kind=LinkKind.UNIFIED,
            h2d_bandwidth=_measured(
                m.host_copy_bandwidth, "B/s", "no GPU: one memory, host clone bandwidth"
            ),
            d2h_bandwidth=_measured(
                m.host_copy_bandwidth, "B/s", "no GPU: one memory, host clone bandwidth"
            ),
            latency=_assumed(1e-7, "s", "no GPU: a memory access, estimate"),
        )
    if m.disk_read_bandwidth is not None:
        assert m.disk_write_bandwidth is not None and m.disk_latency_s is not None
        io = "O_DIRECT" if m.disk_direct_io else "buffered + fsync, cache dropped"
        nvme = NvmeSpec(
            read_bandwidth=_measured(m.disk_read_bandwidth, "B/s", f"sequential read, {io}"),
            write_bandwidth=_measured(m.disk_write_bandwidth, "B/s", f"sequential write, {io}"),
            latency=_measured(m.disk_latency_s, "s", f"median 4 KiB read, {io}"),
        )
    else:
        nvme = NvmeSpec(
            read_bandwidth=_assumed(
                6.5e9, "B/s", "not measured (--no-disk); data-center Gen4 default of HARDWARE.md"
            ),
            write_bandwidth=_assumed(
                3.5e9, "B/s", "not measured (--no-disk); data-center Gen4 default of HARDWARE.md"
            ),
            latency=_assumed(1e-4, "s", "not measured (--no-disk); typical NVMe read latency"),
        )
    network = NetworkSpec(gpus_per_node=_count(1, "this process sees one device"))
    return HardwareProfile(
        name=name,
        description=f"measured on {platform.node() or 'this machine'}",
        gpu=gpu,
        host=host,
        link=link,
        nvme=nvme,
        network=network,
    )


def profile_command(
    out: Path,
    *,
    name: str,
    disk_dir: Path | None,
    no_disk: bool,
    quick: bool,
    overwrite: bool = False,
) -> None:
    from asteria_bench.outputs import check_out_file

    check_out_file(out, overwrite=overwrite)
    if not name.strip():
        raise UserError("--name: expected a non-empty profile name")
    if disk_dir is not None and not disk_dir.is_dir():
        raise UserError(f"--disk-dir: {disk_dir} is not a folder")
    directory = None if no_disk else (disk_dir or Path(tempfile.gettempdir()))
    if directory is not None:
        try:
            with tempfile.NamedTemporaryFile(dir=directory):
                pass
        except OSError as exc:
            raise UserError(
                f"--disk-dir: cannot write a test file in {directory} ({exc.strerror})"
            ) from None
    measurements = measure(directory, quick=quick)
    text = dump_profile(to_profile(measurements, name))
    loads_profile(text, source=str(out))  # what we write must load
    atomic_write_text(out, text)
    print(str(out))
