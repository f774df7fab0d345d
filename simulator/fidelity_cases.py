"""Published, measured LLM training throughput, and the simulator's figure for each.

The cases live in ``simulator/fidelity/cases.toml``, each with its source (a
URL and the table row): the model (a preset name or the config fields of
``simulator.model_config``), the hardware profile, GPUs, data-parallel
stage, sequence length, micro-batch, accumulation, recompute, precision and
the published tokens per second per GPU. ``simulate_case`` runs the same
projection a what-if runs (AdamW, the engine's step: forward, backward,
exposed collectives, optimizer) and returns the simulated tokens/s/GPU.

The profiles' ``[training]`` efficiencies were fitted to these cases (four
numbers per GPU: one per roof, and the collectives' interference) by
``simulator.fidelity_fit``; other published measurements check them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from simulator.llm_step import ComputeEfficiency
from simulator.model_config import load_model, model_from_mapping
from simulator.profiles import Basis, HardwareProfile, Quantity, TrainingSpec, load_profile
from simulator.projection import Deployment, Efficiency, project
from simulator.shapes import ModelShape

__all__ = ["CASES_FILE", "Case", "CaseError", "load_cases", "simulate_case", "with_efficiency"]

CASES_FILE = Path(__file__).with_name("fidelity") / "cases.toml"


class CaseError(ValueError):
    """A case file entry that cannot be used (one line naming the case and the field)."""


@dataclass(frozen=True)
class Case:
    name: str
    shape: ModelShape
    hardware: str
    gpus: int
    gpus_per_node: int
    data_parallel: str
    seq_len: int
    micro_batch: int
    grad_accum: int
    recompute: str
    precision: str
    published_tokens_per_s_per_gpu: float
    framework: str
    source: str
    table: str

    @property
    def nodes(self) -> int:
        return max(1, self.gpus // self.gpus_per_node)

    @property
    def parallelism(self) -> str:
        return f"{self.data_parallel} x{self.gpus}"


_FIELDS = {
    "name": str,
    "hardware": str,
    "gpus": int,
    "gpus_per_node": int,
    "data_parallel": str,
    "seq_len": int,
    "micro_batch": int,
    "grad_accum": int,
    "recompute": str,
    "precision": str,
    "tokens_per_s_per_gpu": float,
    "framework": str,
    "source": str,
    "table": str,
}


def _case(raw: Any, index: int, path: Path) -> Case:
    where = f"{path.name}: case {index + 1}"
    if not isinstance(raw, dict):
        raise CaseError(f"{where}: expected a table")
    values: dict[str, Any] = {}
    for key, kind in _FIELDS.items():
        value = raw.get(key)
        ok = isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
        if value is None or isinstance(value, bool) or not ok:
            raise CaseError(f"{where}: {key}: expected a {kind.__name__}, got {value!r}")
        values[key] = value
    model = raw.get("model")
    if isinstance(model, str):
        shape = load_model(model)
    else:
        shape = model_from_mapping(model, f"{where}: model", name=values["name"])
    return Case(
        name=values["name"],
        shape=shape,
        hardware=values["hardware"],
        gpus=values["gpus"],
        gpus_per_node=values["gpus_per_node"],
        data_parallel=values["data_parallel"],
        seq_len=values["seq_len"],
        micro_batch=values["micro_batch"],
        grad_accum=values["grad_accum"],
        recompute=values["recompute"],
        precision=values["precision"],
        published_tokens_per_s_per_gpu=float(values["tokens_per_s_per_gpu"]),
        framework=values["framework"],
        source=values["source"],
        table=values["table"],
    )


def load_cases(path: Path = CASES_FILE) -> list[Case]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return [_case(raw, i, path) for i, raw in enumerate(data.get("case", []))]


def with_efficiency(
    profile: HardwareProfile, efficiency: ComputeEfficiency, source: str
) -> HardwareProfile:
    """``profile`` with other training efficiencies (to fit or to test them)."""

    def fraction(value: float) -> Quantity:
        return Quantity(value, "fraction", source, Basis.ASSUMED)

    interference = (
        fraction(efficiency.interference) if efficiency.interference > 0 else None
    )  # a profile states a fraction > 0 or nothing
    training = TrainingSpec(
        fraction(efficiency.matmul),
        fraction(efficiency.attention),
        fraction(efficiency.memory),
        interference,
    )
    return replace(profile, training=training)


def simulate_case(
    case: Case,
    efficiency: ComputeEfficiency | None = None,
    profile: HardwareProfile | None = None,
) -> float:
    """Simulated tokens/s/GPU: a step's tokens over its time (AdamW: no block differs
    from step to step, so the step is the sum of its parts, as the event model has it).

    ``profile`` is the case's hardware profile when the caller has it loaded
    (a fit simulates every case hundreds of times)."""
    if profile is None:
        profile = load_profile(case.hardware)
    if efficiency is not None:
        profile = with_efficiency(profile, efficiency, "candidate efficiencies")
    deploy = Deployment(
        optimizer="adamw",
        tokens_per_rank=case.seq_len * case.micro_batch * case.grad_accum,
        nodes=case.nodes,
        gpus_per_node=min(case.gpus, case.gpus_per_node),
        seq_len=case.seq_len,
        grad_accum=case.grad_accum,
        recompute=case.recompute,
        precision=case.precision,
        data_parallel=case.data_parallel,
    )
    step = project(case.shape, profile, deploy, Efficiency()).model.step
    step_ns = (
        step.forward_ns
        + step.backward_ns
        + step.allreduce_ns
        + step.optimizer_other_ns
        + step.loop_other_ns
    )
    return deploy.tokens_per_rank / (step_ns / 1e9)
