"""What machine a run ran on, and how the host and GPUs behaved while it ran.

The metadata half (``collect_hardware``, ``collect_software``, ``git_revision``)
is called once per run and makes a trace interpretable and reproducible. The
counter half (``TelemetrySampler``) is called every few training steps and so
must stay cheap: no subprocesses, no blocking ``cpu_percent`` interval, NVML
handles looked up once.

Everything here degrades instead of failing: no GPU, no NVML library, an NVML
that refuses to initialise or a query a GPU does not support (energy on older
boards, memory on unified-memory parts) simply leave the GPU fields or
counters out. A run must never die for want of a power reading.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import os
import platform
import socket
import subprocess
import warnings
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import psutil

from traces.recorder import Recorder
from traces.schema import GpuInfo, HardwareInfo, SoftwareInfo

__all__ = [
    "TelemetrySampler",
    "collect_hardware",
    "collect_software",
    "git_revision",
]

_GIT_TIMEOUT_S = 5.0


def _load_nvml() -> ModuleType | None:
    """Import pynvml quietly (the package warns about its own deprecation)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module("pynvml")
    except Exception:
        return None


def _nvml_init() -> ModuleType | None:
    """An initialised NVML module, or None where there is none to be had.

    NVML reference-counts init/shutdown, so each user pairs its own calls.
    """
    nvml = _load_nvml()
    if nvml is None:
        return None
    try:
        nvml.nvmlInit()
    except Exception:
        return None
    return nvml


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _cpu_model() -> str:
    with (
        contextlib.suppress(OSError),
        open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh,
    ):
        for line in fh:
            key, _, value = line.partition(":")
            # x86 says "model name"; some ARM kernels say "Model" or "Hardware".
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def _gpus() -> tuple[GpuInfo, ...]:
    nvml = _nvml_init()
    if nvml is None:
        return ()
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            try:
                memory_bytes = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
            except Exception:  # unified-memory parts (GB10) do not report device memory
                memory_bytes = 0
            gpus.append(GpuInfo(index, _text(nvml.nvmlDeviceGetName(handle)), memory_bytes, driver))
        return tuple(gpus)
    except Exception:
        return ()
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def collect_hardware() -> HardwareInfo:
    """Describe this machine: CPU, memory and NVIDIA GPUs (none if NVML is unavailable)."""
    logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False) or logical
    return HardwareInfo(
        cpu_model=_cpu_model(),
        cpu_cores_logical=int(logical),
        cpu_cores_physical=int(physical),
        memory_bytes=int(psutil.virtual_memory().total),
        gpus=_gpus(),
        hostname=socket.gethostname(),
    )


def _package_version() -> str:
    """The installed distribution's version ("unknown" in a source tree that was never installed).

    The runtime does not import the CLI package to ask it: layers import one
    way only. Callers that know better pass ``package_version``.
    """
    try:
        return importlib.metadata.version("asteria-bench")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def collect_software(package_version: str | None = None) -> SoftwareInfo:
    """Versions that decide the numbers a run produces."""
    import torch

    return SoftwareInfo(
        python=platform.python_version(),
        torch=str(torch.__version__),
        platform=platform.platform(),
        asteria_bench=package_version or _package_version(),
        cuda=torch.version.cuda,
    )


def _git(path: Path, *args: str) -> str | None:
    # GIT_OPTIONAL_LOCKS=0: `git status` must not refresh (write) the index of
    # a repository someone else is committing to.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0"}
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=path,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            env=env,
            check=False,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_revision(path: str | os.PathLike[str]) -> str | None:
    """The commit checked out at ``path``, with ``+dirty`` if the tree has changes.

    None when ``path`` is not in a git work tree, has no commit yet, or git is
    missing or too slow: a run records what it knows rather than failing.
    """
    root = Path(path)
    head = _git(root, "rev-parse", "HEAD")
    if head is None or not head.strip():
        return None
    status = _git(root, "status", "--porcelain")
    if status is None:
        return None
    return head.strip() + ("+dirty" if status.strip() else "")


class TelemetrySampler:
    """Appends host and GPU counters to a recorder each time ``sample`` is called.

    Counters (all share one timestamp per call): ``host_cpu_percent`` (system
    wide, since the previous call), ``host_rss_bytes`` (this process),
    ``host_available_bytes``, ``process_cpu_seconds`` (user + system time of
    this process, every thread, since it started: what a rank asks of the
    host's cores, which the simulator shares among the ranks of one host); with NVML, per GPU (key = NVML index):
    ``gpu_power_w``, ``gpu_energy_j`` (since this sampler started),
    ``gpu_memory_used_bytes``; with CUDA, ``device_memory_bytes`` (bytes
    allocated by torch on the current device). Not thread-safe: call it from
    one thread (the training loop).
    """

    def __init__(self, recorder: Recorder, *, gpu: bool = True) -> None:
        self._recorder = recorder
        self._process = psutil.Process()
        psutil.cpu_percent(interval=None)  # the first reading is meaningless; start the window
        self._nvml = _nvml_init() if gpu else None
        self._handles: list[tuple[str, Any]] = []
        self._energy_start_mj: dict[str, int] = {}
        if self._nvml is not None:
            self._open_gpus(self._nvml)
        self._cuda: Any = None
        if gpu:
            with contextlib.suppress(Exception):
                import torch

                if torch.cuda.is_available():
                    self._cuda = torch.cuda

    def _open_gpus(self, nvml: ModuleType) -> None:
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                key = str(index)
                self._handles.append((key, handle))
                with contextlib.suppress(Exception):  # energy is absent before Volta
                    self._energy_start_mj[key] = int(
                        nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                    )
        except Exception:
            self._handles = []

    @property
    def gpu_count(self) -> int:
        """GPUs whose counters this sampler reports (0 without NVML)."""
        return len(self._handles)

    def sample(self, step: int) -> None:
        rec = self._recorder
        if not rec.enabled:
            return
        now_ns = rec.clock()

        def put(name: str, value: float, key: str | None = None) -> None:
            rec.counter(name, value, step=step, key=key, time_ns=now_ns)

        put("host_cpu_percent", psutil.cpu_percent(interval=None))
        with contextlib.suppress(psutil.Error):
            put("host_rss_bytes", self._process.memory_info().rss)
        with contextlib.suppress(psutil.Error):
            times = self._process.cpu_times()
            put("process_cpu_seconds", times.user + times.system)
        put("host_available_bytes", psutil.virtual_memory().available)
        nvml = self._nvml
        if nvml is not None:
            for key, handle in self._handles:
                with contextlib.suppress(Exception):
                    put("gpu_power_w", nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0, key)
                if key in self._energy_start_mj:
                    with contextlib.suppress(Exception):
                        energy_mj = int(nvml.nvmlDeviceGetTotalEnergyConsumption(handle))
                        put("gpu_energy_j", (energy_mj - self._energy_start_mj[key]) / 1000.0, key)
                with contextlib.suppress(Exception):
                    put("gpu_memory_used_bytes", nvml.nvmlDeviceGetMemoryInfo(handle).used, key)
        if self._cuda is not None:
            with contextlib.suppress(Exception):
                put("device_memory_bytes", self._cuda.memory_allocated())

    def close(self) -> None:
        """Release NVML; safe to call twice. Later ``sample`` calls report host counters only."""
        nvml, self._nvml = self._nvml, None
        self._handles = []
        if nvml is not None:
            with contextlib.suppress(Exception):
                nvml.nvmlShutdown()

    def __enter__(self) -> TelemetrySampler:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
