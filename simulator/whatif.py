"""One what-if: a model on a machine under an optimizer and policies, simulated.

``run_whatif`` turns a ``WhatIf`` (plain data: names and numbers, as typed on
the command line) into a roofline-projected workload, simulates it with the
runtime's staleness policy objects, and reduces the result to ``WhatIfResult``
figures. Sweeps and scenario presets are lists of ``WhatIf``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.policies.staleness import parse_staleness
from simulator.engine import SimConfig, SimResult, simulate
from simulator.profiles import load_profile
from simulator.projection import Deployment, Efficiency, Projection, project
from simulator.shapes import get_shape


@dataclass(frozen=True)
class WhatIf:
    hardware: str
    model: str
    optimizer: str
    staleness: str = "sync"
    root_device: str = "device"
    nodes: int = 1
    gpus_per_node: int = 1
    steps: int = 200
    block_size: int | None = 1024
    precondition_frequency: int = 10
    tokens_per_rank: int = 8 * 2048
    workers: int = 4
    label: str = ""

    def describe(self) -> str:
        if self.label:
            return self.label
        if self.optimizer == "adamw":
            return "adamw"
        return f"{self.optimizer} {self.staleness} ({self.root_device} roots)"


@dataclass(frozen=True)
class WhatIfResult:
    whatif: WhatIf
    median_ms: float
    mean_ms: float
    p99_ms: float
    max_ms: float
    compute_ms: float
    overhead: float  # (median step − forward+backward) / forward+backward
    wait_ms_per_step: float
    state_gib_per_rank: float
    device_gib: float
    lower_bound_ms: float
    min_step_ms: float
    simulated: SimResult
    projection: Projection

    @property
    def fits(self) -> bool:
        """Optimizer state alone within the device memory (parameters and activations not counted)."""
        return self.state_gib_per_rank <= self.device_gib

    @property
    def spike(self) -> float:
        return self.p99_ms / self.median_ms if self.median_ms else float("nan")


def run_whatif(w: WhatIf, efficiency: Efficiency | None = None) -> WhatIfResult:
    profile = load_profile(w.hardware)
    shape = get_shape(w.model)
    staleness = parse_staleness(w.staleness)
    deploy = Deployment(
        optimizer=w.optimizer,
        block_size=w.block_size,
        precondition_frequency=w.precondition_frequency,
        tokens_per_rank=w.tokens_per_rank,
        nodes=w.nodes,
        gpus_per_node=w.gpus_per_node,
        root_device=w.root_device,
        workers=w.workers,
    )
    proj = project(shape, profile, deploy, efficiency)
    config = SimConfig(
        steps=w.steps,
        staleness=staleness,
        workers=w.workers,
        stagger=staleness.asynchronous,
        jobs_on_device=w.root_device == "device",
    )
    result = simulate(proj.model, config)
    steps = result.step_ns.astype(np.float64) / 1e6
    compute = (proj.model.step.forward_ns + proj.model.step.backward_ns) / 1e6
    median = float(np.median(steps))
    return WhatIfResult(
        whatif=w,
        median_ms=median,
        mean_ms=float(steps.mean()),
        p99_ms=float(np.percentile(steps, 99)),
        max_ms=float(steps.max()),
        compute_ms=compute,
        overhead=(median - compute) / compute if compute else float("nan"),
        wait_ms_per_step=float(result.wait_ns.sum()) / 1e6 / w.steps,
        state_gib_per_rank=proj.state_bytes_per_rank / 2**30,
        device_gib=profile.gpu.memory_bytes.value / 2**30,
        lower_bound_ms=proj.lower_bound_step_ns / 1e6,
        min_step_ms=float(steps.min()),
        simulated=result,
        projection=proj,
    )


SCENARIOS: dict[str, tuple[str, list[WhatIf]]] = {}


def _scenario(name: str, summary: str, base: dict[str, object]) -> None:
    variants = [
        dict(optimizer="adamw", label="AdamW"),
        dict(optimizer="soap", staleness="sync", root_device="device", label="SOAP, synchronous"),
        dict(
            optimizer="kl-shampoo",
            staleness="sync",
            root_device="device",
            label="KL-Shampoo, synchronous",
        ),
        dict(
            optimizer="soap",
            staleness="bounded:4",
            root_device="host",
            label="SOAP, asteria (bounded:4, host roots)",
        ),
        dict(
            optimizer="kl-shampoo",
            staleness="bounded:4",
            root_device="host",
            label="KL-Shampoo, asteria (bounded:4, host roots)",
        ),
    ]
    SCENARIOS[name] = (summary, [WhatIf(**{**base, **v}) for v in variants])  # type: ignore[arg-type]


_scenario(
    "gb10-1b",
    "a 1B LLaMA-like model on one DGX Spark (GB10, unified memory)",
    dict(
        hardware="gb10", model="1b", nodes=1, gpus_per_node=1, tokens_per_rank=8 * 2048, steps=300
    ),
)
_scenario(
    "gh200-7b",
    "a 7B LLaMA-like model on 8 nodes x 4 GH200 (data parallel, sharded optimizer)",
    dict(
        hardware="gh200", model="7b", nodes=8, gpus_per_node=4, tokens_per_rank=4 * 4096, steps=300
    ),
)
