"""The trace schema, its recorder, readers, writers and exporters.

Depends on nothing else of this project, so the runtime, the simulator and the
reports can all read and write it.
"""

from traces.recorder import NULL_RECORDER, Recorder
from traces.schema import (
    NO_STEP,
    SCHEMA_VERSION,
    Category,
    CounterSample,
    GpuInfo,
    HardwareInfo,
    RunMetadata,
    SoftwareInfo,
    Span,
    Tier,
)

__all__ = [
    "NO_STEP",
    "NULL_RECORDER",
    "SCHEMA_VERSION",
    "Category",
    "CounterSample",
    "GpuInfo",
    "HardwareInfo",
    "Recorder",
    "RunMetadata",
    "SoftwareInfo",
    "Span",
    "Tier",
]
