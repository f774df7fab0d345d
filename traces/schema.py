"""The trace schema: what a measured or simulated run records.

One schema serves the runtime (which measures), the simulator (which predicts)
and the reports (which compare), so that a measured run and a simulated run are
read by the same code. Bump ``SCHEMA_VERSION`` on any incompatible change and
keep ``SCHEMA.md`` beside this file in step with it.

All times are integer nanoseconds on one monotonic clock per run
(``time.perf_counter_ns`` for measured runs, simulated time for simulated ones).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

SCHEMA_VERSION = 2
"""Version 2 added ``rank`` and ``world_size`` to the metadata (data-parallel runs)."""

READABLE_VERSIONS = (1, 2)
"""Versions this build reads; a version-1 trace is one rank of one."""

NO_STEP = -1
"""The ``step`` of an event that belongs to no training step (setup, teardown)."""


class Category(str, Enum):
    """What kind of work a span is; reports group and colour spans by it."""

    STEP = "step"  # one whole training step, the parent of the others
    COMPUTE = "compute"  # forward, backward, loss
    OPTIMIZER = "optimizer"  # the hot-path optimizer work (factor updates, precondition)
    REFRESH = "refresh"  # amortized eigh / inverse roots / basis refresh
    TRANSFER = "transfer"  # bytes moved between tiers
    WAIT = "wait"  # the critical path waiting (on a refresh, a transfer, a collective)
    IO = "io"  # file I/O (spill tier, checkpoints)
    EVAL = "eval"  # held-out evaluation
    COLLECTIVE = "collective"  # torch.distributed collectives
    EVENT = "event"  # an instantaneous decision or incident (zero duration)


class Tier(str, Enum):
    """Where a piece of optimizer state lives."""

    DEVICE = "device"
    HOST = "host"
    NVME = "nvme"


@dataclass(frozen=True, slots=True)
class Span:
    """One interval of work on one track (a thread, a CUDA stream, a worker)."""

    name: str
    category: Category
    start_ns: int
    end_ns: int
    track: str
    step: int = NO_STEP
    block: str | None = None
    bytes: int = 0
    tier_from: Tier | None = None
    tier_to: Tier | None = None
    detail: str | None = None

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns


@dataclass(frozen=True, slots=True)
class CounterSample:
    """One value of one named counter at one time.

    ``key`` distinguishes series that share a name: the tier of
    ``state_bytes``, the block of ``staleness``, the GPU index of ``gpu_power_w``.
    """

    name: str
    time_ns: int
    value: float
    step: int = NO_STEP
    key: str | None = None


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    memory_bytes: int
    driver_version: str


@dataclass(frozen=True)
class HardwareInfo:
    cpu_model: str
    cpu_cores_logical: int
    cpu_cores_physical: int
    memory_bytes: int
    gpus: tuple[GpuInfo, ...] = ()
    hostname: str = ""


@dataclass(frozen=True)
class SoftwareInfo:
    python: str
    torch: str
    platform: str
    asteria_bench: str
    cuda: str | None = None


@dataclass(frozen=True)
class RunMetadata:
    """Everything needed to interpret, replay or reproduce a run.

    ``config`` is the full run configuration as plain JSON data; ``optimizer``
    names the algorithm and ``hyperparameters`` its resolved settings;
    ``model`` holds the model shape (layers, width, heads, context, parameters).
    """

    run_id: str
    kind: str  # "measured", "simulated" or "imported" (a profiler trace)
    created_utc: str
    hardware: HardwareInfo
    software: SoftwareInfo
    optimizer: str
    hyperparameters: dict[str, Any]
    model: dict[str, Any]
    policies: dict[str, str]
    seed: int
    git_revision: str | None
    device: str
    config: dict[str, Any] = field(default_factory=dict)
    rank: int = 0
    world_size: int = 1
    schema_version: int = SCHEMA_VERSION
