"""Efficiencies measured on a run: the fraction of its roofline each op class reached.

A projection (``simulator.projection.project``) times every op as its
roofline on the target divided by an efficiency. Out of the box those
efficiencies are assumptions; ``calibrate`` measures them on a recorded run
whose machine has a profile (``asteria-bench profile`` writes one): for each op
class, the roofline time of the run's own ops on that profile over their
measured time. Projecting the run's model on the same profile with them gives
back its measured op times (tested); projecting elsewhere assumes each op
class reaches the same fraction of its roofline on the target, which is the
assumption every calibrated projection states.

Op classes measured: ``gemm`` (forward + backward against the LLM step's
roofline, ``simulator.llm_step``: matmuls, attention, memory-bound ops), ``optimizer`` (the blocks'
hot paths), the refresh on whichever of ``refresh_host`` / ``refresh_device``
computed the run's refreshes, and ``copy`` when the run moved tiered state.
Collectives need a multi-rank run and keep their assumed value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.plan.costmodel import (
    CostConfig,
    Optimizer,
    block_hot_path_bytes,
    block_hot_path_flops,
    block_refresh_flops,
    roofline_time_s,
)
from simulator.llm_step import ComputeEfficiency, TrainingSetup, micro_batch_time
from simulator.profiles import HardwareProfile
from simulator.projection import Efficiency
from simulator.shapes import ModelShape, gpt_shape
from simulator.workload import WorkloadError, workload_from_trace
from traces.io import Trace
from traces.schema import Category

NS = 1e9


@dataclass(frozen=True)
class OpFit:
    """One op class: its roofline time on the profile against its measured time (summed)."""

    op: str
    roofline_ns: float
    measured_ns: float
    count: int  # how many op instances were summed

    @property
    def fraction(self) -> float:
        """Roofline over measured; above 1 means the profile's peak understates the machine."""
        return self.roofline_ns / self.measured_ns if self.measured_ns > 0 else float("nan")

    @property
    def usable(self) -> bool:
        return bool(np.isfinite(self.fraction)) and self.fraction > 0

    @property
    def efficiency(self) -> float:
        """The fraction as ``Efficiency`` takes it, capped at 1 (check ``usable`` first)."""
        return float(min(1.0, self.fraction))


@dataclass(frozen=True)
class Calibration:
    run_id: str
    profile: str
    fits: tuple[OpFit, ...]
    efficiency: Efficiency

    def describe(self) -> str:
        parts = [f"{f.op} {f.efficiency:.3g}" for f in self.fits]
        return f"calibrated on {self.run_id} with profile {self.profile}: " + ", ".join(parts)


@dataclass(frozen=True)
class RunShape:
    """What a recorded run trained: its model, tokens per step and optimizer setup."""

    shape: ModelShape
    tokens_per_step: int
    optimizer: str
    block_size: int | None
    refresh_on_host: bool  # refreshes ran on host workers (else on the training device)
    workers: int


def run_shape(trace: Trace) -> RunShape:
    """The recorded run's model and setup, from its metadata (the run's own config)."""
    meta = trace.metadata
    config: dict[str, Any] = meta.config if isinstance(meta.config, dict) else {}
    model = config.get("model") or {}
    train = config.get("train") or {}
    runtime = config.get("runtime") or {}
    missing = [
        f"config.{section}.{name}"
        for section, names, values in (
            ("model", ("n_layer", "n_embd", "n_head", "context"), model),
            ("train", ("batch_size",), train),
        )
        for name in names
        if not isinstance(values.get(name), int)
    ]
    if missing:
        raise WorkloadError(
            f"run {meta.run_id}: the trace metadata lacks {', '.join(missing)} (needed to calibrate)"
        )
    vocab = int(meta.model.get("vocab_size", 256)) if isinstance(meta.model, dict) else 256
    shape = gpt_shape(
        model["n_layer"], model["n_embd"], model["n_head"], model["context"], vocab=vocab
    )
    staleness = str(meta.policies.get("staleness", "sync"))
    asynchronous = staleness not in ("sync", "none")
    block_size = meta.hyperparameters.get("block_size")
    return RunShape(
        shape=shape,
        tokens_per_step=train["batch_size"] * model["context"],
        optimizer=meta.optimizer,
        block_size=int(block_size) if block_size else None,
        refresh_on_host=asynchronous and runtime.get("root_device", "host") == "host",
        workers=int(meta.policies.get("workers", runtime.get("workers", 1)) or 1),
    )


def calibrate(
    trace: Trace, profile: HardwareProfile, base: Efficiency | None = None
) -> Calibration:
    """Efficiencies of ``trace``'s ops on ``profile`` (the machine the run was measured on)."""
    base = base or Efficiency()
    run = run_shape(trace)
    workload = workload_from_trace(trace)
    gpu, host = profile.gpu, profile.host
    fits: list[OpFit] = []

    compute_ns = workload.step.forward_ns + workload.step.backward_ns
    setup = TrainingSetup(
        seq_len=run.shape.context,
        micro_batch=max(1, run.tokens_per_step // run.shape.context),
    )
    ideal = micro_batch_time(run.shape, setup, profile, ComputeEfficiency.ideal())
    gemm = OpFit("gemm", ideal.total_s * NS, float(compute_ns), 1)
    fits.append(gemm)

    if run.optimizer != "adamw" and workload.blocks:
        config = CostConfig(Optimizer(run.optimizer), block_size=run.block_size)
        hot_roofline = refresh_flops = 0.0
        hot_measured = refresh_measured = 0.0
        refreshed = 0
        for block in workload.blocks:
            a, b = block.shape
            hot_roofline += roofline_time_s(
                block_hot_path_flops(a, b, config),
                block_hot_path_bytes(a, b, config).total_bytes,
                gpu.fp32_flops.value,
                gpu.memory_bandwidth.value,
            )
            hot_measured += block.hot_ns
            if block.refresh_ns > 0:
                refresh_flops += block_refresh_flops(a, b, config)
                refresh_measured += block.refresh_ns
                refreshed += 1
        hot = OpFit("optimizer", hot_roofline * NS, hot_measured, len(workload.blocks))
        fits.append(hot)
        if refreshed:
            if run.refresh_on_host:  # each of W workers gets 1/W of the host's rate
                rate, op = host.cpu_fp32_flops.value / run.workers, "refresh_host"
            else:
                rate, op = gpu.fp32_flops.value, "refresh_device"
            refresh = OpFit(op, refresh_flops / rate * NS, refresh_measured, refreshed)
            fits.append(refresh)

    copy = _copy_fit(trace, profile)
    if copy is not None:
        fits.append(copy)
    fits = [f for f in fits if f.usable]  # an op the run never timed keeps its assumption
    updates = {f.op: f.efficiency for f in fits}
    return Calibration(
        run_id=trace.metadata.run_id,
        profile=profile.name,
        fits=tuple(fits),
        efficiency=dataclasses.replace(base, **updates),
    )


def _copy_fit(trace: Trace, profile: HardwareProfile) -> OpFit | None:
    """Bytes of the run's device<->host transfers at the profile's link rate, against their time."""
    spans = trace.spans
    moved = spans[
        (spans["category"].astype(str) == Category.TRANSFER.value)
        & spans["tier_from"].notna()
        & spans["tier_to"].notna()
        & (spans["bytes"] > 0)
    ]
    pairs = moved["tier_from"].astype(str) + ">" + moved["tier_to"].astype(str)
    moved = moved[pairs.isin(("host>device", "device>host"))]
    if moved.empty:
        return None
    durations = (moved["end_ns"] - moved["start_ns"]).to_numpy(dtype=np.float64)
    to_device = (moved["tier_to"].astype(str) == "device").to_numpy()
    link = profile.link
    rates = np.where(to_device, link.h2d_bandwidth.value, link.d2h_bandwidth.value)
    roofline = float(np.sum(moved["bytes"].to_numpy(dtype=np.float64) / rates)) * NS
    return OpFit("copy", roofline, float(durations.sum()), len(moved))
