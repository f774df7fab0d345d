"""``simulate --out``: every simulated configuration as a run directory, beside the table.

A simulated run is written in the same schema as a measured one (metadata
with ``kind = "simulated"``, spans, counters), so that reports and
comparisons read both alike. The metadata describes the what-if: the
hardware is the profile's, the software the simulator's, the model the
named shape, the policies those simulated.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import platform
import re
import sys
from pathlib import Path

from reports.derive import write_derived
from simulator.model_config import load_model
from simulator.profiles import HardwareProfile, load_profile
from simulator.whatif import WhatIfResult
from traces.io import write_trace
from traces.schema import GpuInfo, HardwareInfo, RunMetadata, SoftwareInfo


def slug(text: str) -> str:
    """A folder name for a configuration label."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "run"


def hardware_of(profile: HardwareProfile, gpus_per_node: int) -> HardwareInfo:
    memory = int(profile.gpu.memory_bytes.value)
    return HardwareInfo(
        cpu_model=profile.host.cpu_model,
        cpu_cores_logical=int(profile.host.cpu_cores.value),
        cpu_cores_physical=int(profile.host.cpu_cores.value),
        memory_bytes=int(profile.host.memory_bytes.value),
        gpus=tuple(
            GpuInfo(i, profile.gpu.model, memory, "simulated") for i in range(gpus_per_node)
        ),
        hostname=f"profile:{profile.name}",
    )


def metadata_of(result: WhatIfResult, run_id: str, efficiency_source: str) -> RunMetadata:
    w = result.whatif
    profile = load_profile(w.hardware)
    shape = load_model(w.model)
    from asteria_bench import __version__

    return RunMetadata(
        run_id=run_id,
        kind="simulated",
        created_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        hardware=hardware_of(profile, w.gpus_per_node),
        software=SoftwareInfo(
            python=sys.version.split()[0],
            torch="none (simulated)",
            platform=platform.platform(),
            asteria_bench=__version__,
        ),
        optimizer=w.optimizer,
        hyperparameters={
            "precondition_frequency": w.precondition_frequency,
            "block_size": w.block_size,
        },
        model={
            "name": shape.name,
            "n_layer": shape.n_layer,
            "n_embd": shape.hidden,
            "n_head": shape.n_head,
            "context": shape.context,
            "parameters": shape.parameters(),
        },
        policies={
            "staleness": w.staleness,
            "placement": w.placement,
            "root_device": w.root_device,
            "workers": str(w.workers),
        },
        seed=0,
        git_revision=None,
        device=f"{w.nodes}x{w.gpus_per_node} {profile.name}",
        config={
            "whatif": {k: v for k, v in dataclasses.asdict(w).items() if v is not None},
            "efficiency": efficiency_source,
        },
    )


def write_simulated_runs(
    results: list[WhatIfResult], out: Path, efficiency_source: str
) -> list[Path]:
    """One run directory per configuration under ``out``: ``NN-<label>/trace/``."""
    folders = []
    for index, result in enumerate(results, start=1):
        folder = out / f"{index:02d}-{slug(result.whatif.describe())}"
        folder.mkdir(parents=True, exist_ok=True)
        recorder = result.simulated.recorder
        metadata = metadata_of(result, folder.name, efficiency_source)
        write_trace(folder, metadata, recorder.spans, recorder.counters)
        write_derived(folder)  # metrics.parquet, summary.md, Perfetto: as a measured run has
        folders.append(folder)
    return folders
