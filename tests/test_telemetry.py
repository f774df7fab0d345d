"""Hardware/software metadata and the host/GPU counter sampler.

The GPU paths are exercised with a fake NVML module, so they are tested on
the CPU-only machines the suite usually runs on.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
import torch

import asteria_bench
from runtime import telemetry
from runtime.telemetry import TelemetrySampler, collect_hardware, collect_software, git_revision
from traces.recorder import Recorder
from traces.schema import GpuInfo

HOST_COUNTERS = {
    "host_cpu_percent",
    "host_rss_bytes",
    "host_available_bytes",
    "process_cpu_seconds",
}


class FakeNvml:
    """Two GPUs; GPU 1 has no energy counter, as boards before Volta do."""

    def __init__(self, fail_init: bool = False) -> None:
        self.fail_init = fail_init
        self.inits = 0
        self.shutdowns = 0
        self.energy_mj = [50_000, 0]

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> bytes:
        return b"550.54"

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes | str:
        return b"NVIDIA H100" if handle == 0 else "NVIDIA GB10"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        if handle == 1:
            raise RuntimeError("Not Supported")
        return SimpleNamespace(total=80 << 30, used=3 << 30)

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return 250_500 if handle == 0 else 40_000

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        if handle == 1:
            raise RuntimeError("Not Supported")
        return self.energy_mj[0]


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNvml]:
    nvml = FakeNvml()
    monkeypatch.setattr(telemetry, "_load_nvml", lambda: nvml)
    yield nvml


@pytest.mark.cuda
def test_collect_hardware_on_this_machine() -> None:
    hw = collect_hardware()
    assert hw.cpu_model and hw.cpu_model == hw.cpu_model.strip()
    assert 1 <= hw.cpu_cores_physical <= hw.cpu_cores_logical
    assert hw.cpu_cores_logical == psutil.cpu_count()
    assert hw.memory_bytes == psutil.virtual_memory().total > 100 << 20
    assert hw.hostname
    assert isinstance(hw.gpus, tuple)
    if not torch.cuda.is_available():
        assert hw.gpus == ()


def test_collect_hardware_with_nvml(fake_nvml: FakeNvml) -> None:
    gpus = collect_hardware().gpus
    assert gpus == (
        GpuInfo(0, "NVIDIA H100", 80 << 30, "550.54"),
        GpuInfo(1, "NVIDIA GB10", 0, "550.54"),
    )
    assert fake_nvml.inits == fake_nvml.shutdowns == 1


def test_collect_hardware_when_nvml_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "_load_nvml", lambda: FakeNvml(fail_init=True))
    assert collect_hardware().gpus == ()
    monkeypatch.setattr(telemetry, "_load_nvml", lambda: None)
    assert collect_hardware().gpus == ()


def test_collect_software() -> None:
    sw = collect_software()
    assert sw.python == platform.python_version()
    assert sw.torch == torch.__version__
    assert sw.cuda == torch.version.cuda
    assert sw.platform == platform.platform()
    assert sw.asteria_bench == asteria_bench.__version__


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert git_revision(tmp_path / "missing") is None
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    repo = tmp_path / "repo"
    repo.mkdir()
    assert git_revision(repo) is None  # not a repository
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    assert git_revision(repo) is None  # no commit yet
    (repo / "a.txt").write_text("a")
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    clean = git_revision(repo)
    assert clean == head.strip() and re.fullmatch(r"[0-9a-f]{40}", clean)
    (repo / "a.txt").write_text("b")
    assert git_revision(repo) == clean + "+dirty"
    monkeypatch.setenv("PATH", "")
    assert git_revision(repo) is None  # git not found


def counters_by_name(rec: Recorder) -> dict[tuple[str, str | None], float]:
    return {(c.name, c.key): c.value for c in rec.counters}


def test_sample_adds_host_counters() -> None:
    rec = Recorder()
    with TelemetrySampler(rec, gpu=False) as sampler:
        assert sampler.gpu_count == 0
        sampler.sample(step=3)
    values = counters_by_name(rec)
    assert {name for name, _ in values} == HOST_COUNTERS
    assert {c.step for c in rec.counters} == {3}
    assert len({c.time_ns for c in rec.counters}) == 1
    assert 0.0 <= values["host_cpu_percent", None] <= 100.0
    assert 10 << 20 < values["host_rss_bytes", None] < psutil.virtual_memory().total
    assert 0 < values["host_available_bytes", None] <= psutil.virtual_memory().total
    times = psutil.Process().cpu_times()
    assert 0 < values["process_cpu_seconds", None] <= times.user + times.system


def test_process_cpu_seconds_counts_every_thread_of_the_process() -> None:
    """A second thread's busy loop shows in the counter: refresh workers count too."""
    import threading
    import time

    rec = Recorder()
    with TelemetrySampler(rec, gpu=False) as sampler:
        sampler.sample(step=1)

        def spin() -> None:
            end = time.thread_time() + 0.3
            while time.thread_time() < end:
                pass

        worker = threading.Thread(target=spin)
        worker.start()
        worker.join()
        sampler.sample(step=2)
    cpu = [c.value for c in rec.counters if c.name == "process_cpu_seconds"]
    assert len(cpu) == 2 and cpu[1] - cpu[0] >= 0.29


@pytest.mark.cuda
def test_sample_on_this_machine_with_gpu_enabled() -> None:
    rec = Recorder()
    sampler = TelemetrySampler(rec)
    sampler.sample(step=0)
    sampler.close()
    sampler.close()
    names = {c.name for c in rec.counters}
    assert names >= HOST_COUNTERS
    if not torch.cuda.is_available():
        assert names == HOST_COUNTERS


def test_sample_reports_gpu_counters_in_stated_units(fake_nvml: FakeNvml) -> None:
    rec = Recorder()
    sampler = TelemetrySampler(rec)
    assert sampler.gpu_count == 2
    fake_nvml.energy_mj[0] += 1_500  # 1.5 J spent since the sampler started
    sampler.sample(step=7)
    values = counters_by_name(rec)
    assert values["gpu_power_w", "0"] == pytest.approx(250.5)
    assert values["gpu_power_w", "1"] == pytest.approx(40.0)
    assert values["gpu_energy_j", "0"] == pytest.approx(1.5)
    assert ("gpu_energy_j", "1") not in values  # unsupported on that board: left out
    assert values["gpu_memory_used_bytes", "0"] == 3 << 30
    assert ("gpu_memory_used_bytes", "1") not in values
    sampler.close()
    assert fake_nvml.shutdowns == 1
    rec.counters.clear()
    sampler.sample(step=8)
    assert {c.name for c in rec.counters} == HOST_COUNTERS


def test_sampler_without_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "_load_nvml", lambda: FakeNvml(fail_init=True))
    rec = Recorder()
    sampler = TelemetrySampler(rec)
    sampler.sample(step=1)
    assert sampler.gpu_count == 0
    assert {c.name for c in rec.counters} <= HOST_COUNTERS | {"device_memory_bytes"}


def test_sampler_on_disabled_recorder_records_nothing(fake_nvml: FakeNvml) -> None:
    rec = Recorder(enabled=False)
    sampler = TelemetrySampler(rec)
    sampler.sample(step=1)
    sampler.close()
    assert rec.counters == []


def test_sampling_is_cheap() -> None:
    sampler = TelemetrySampler(Recorder(), gpu=False)
    start = time.perf_counter()
    for step in range(200):
        sampler.sample(step)
    # A few hundred microseconds each on an idle machine; the bound leaves room for a busy one.
    assert (time.perf_counter() - start) / 200 < 5e-3
