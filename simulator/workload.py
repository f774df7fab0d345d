"""The workload model: what one training step is made of, read from a measured trace.

Every duration is a median over the run's steady steps (the first call, which
initialises the optimizer, is kept apart), so one slow outlier does not become
the model. Per block the model keeps the hot-path time (factor update plus
preconditioning), the amortized refresh job, and the snapshot and install
costs; per step the forward and backward passes and the rest of the optimizer
step (AdamW fallback, bookkeeping) and of the loop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from runtime.plan.spec import BlockConfig, OptimizerSpec, RefreshSchedule, spec_of
from simulator.placement_model import SlotBytes, block_slot_bytes
from traces.io import Trace
from traces.schema import Category

_TRAINING_ONLY = ("refresh", "install", "snapshot", "wait_refresh", "factor_update", "precondition")


class WorkloadError(ValueError):
    """The trace lacks what the model needs (one line, naming what is missing)."""


@dataclass(frozen=True)
class BlockCost:
    """One block's costs; ``slots`` are its state tensors, for placement (empty: untiered)."""

    id: str
    shape: tuple[int, int]
    hot_ns: int
    refresh_ns: int
    snapshot_ns: int
    install_ns: int
    slots: tuple[SlotBytes, ...] = ()


@dataclass(frozen=True)
class StepCost:
    """Per-step costs; the gradient all-reduce runs on the network links after backward."""

    forward_ns: int
    backward_ns: int
    optimizer_other_ns: int
    loop_other_ns: int
    first_step_ns: int
    allreduce_intra_node_ns: int = 0
    allreduce_inter_node_ns: int = 0

    @property
    def allreduce_ns(self) -> int:
        return self.allreduce_intra_node_ns + self.allreduce_inter_node_ns


@dataclass(frozen=True)
class WorkloadModel:
    """A run's costs; its schedule (reference τ, phases, due steps) is the optimizer's plan."""

    optimizer: str
    precondition_frequency: int
    start_preconditioning_step: int
    step: StepCost
    blocks: tuple[BlockCost, ...]

    def __post_init__(self) -> None:
        try:
            spec_of(self.optimizer)
        except ValueError as exc:
            raise WorkloadError(str(exc)) from None

    @property
    def spec(self) -> OptimizerSpec:
        return spec_of(self.optimizer)

    @property
    def reference_tau(self) -> int:
        return self.spec.reference_tau

    @property
    def skips_first_call(self) -> bool:
        return self.spec.skips_first_call

    def block_config(self, stagger: bool) -> BlockConfig:
        """The plan's schedule inputs: frequency, Shampoo's t0, staggering."""
        return BlockConfig(
            precondition_frequency=self.precondition_frequency,
            start_preconditioning_step=self.start_preconditioning_step,
            stagger=stagger,
        )

    def schedules(self, stagger: bool) -> list[RefreshSchedule]:
        """Each block's refresh schedule, in block order (its ordinal is its index)."""
        config = self.block_config(stagger)
        return [self.spec.schedule(k, config) for k in range(len(self.blocks))]

    @property
    def hot_ns(self) -> int:
        return sum(b.hot_ns for b in self.blocks)


def _median(values: pd.Series | np.ndarray, default: int = 0) -> int:
    arr = np.asarray(values, dtype=np.float64)
    return int(np.median(arr)) if arr.size else default


def workload_from_trace(trace: Trace) -> WorkloadModel:
    """Calibrate the model on a measured run."""
    meta = trace.metadata
    spans = trace.spans.copy()
    if spans.empty:
        raise WorkloadError(f"run {meta.run_id}: the trace holds no spans")
    spans["duration"] = spans["end_ns"] - spans["start_ns"]
    steps = spans[spans["name"] == "step"].set_index("step")["duration"]
    if len(steps) < 3:
        raise WorkloadError(
            f"run {meta.run_id}: need at least 3 steps in the trace, found {len(steps)}"
        )
    steady = steps.index[steps.index > 1]
    main = spans[spans["step"].isin(steady)]
    main_track = spans.loc[spans["name"] == "step", "track"].iloc[0]

    def per_step(name: str) -> pd.Series:
        sel = main[(main["name"] == name) & (main["track"] == main_track)]
        return sel.groupby("step")["duration"].sum().reindex(steady, fill_value=0)

    forward, backward = per_step("forward"), per_step("backward")
    optimizer = per_step("optimizer_step")
    inner = sum(per_step(name) for name in _TRAINING_ONLY)
    # The tiered store's copies are simulated on the links: take them out of the
    # phases they were measured in (prefetches in backward, the rest in the step).
    in_backward, in_optimizer = _transfers(main[main["track"] == main_track], steady)
    backward = (backward - in_backward).clip(lower=0)
    optimizer_other = (optimizer - inner - in_optimizer).clip(lower=0)
    loop_other = (steps.reindex(steady) - forward - backward - in_backward - optimizer).clip(
        lower=0
    )

    hp = meta.hyperparameters
    frequency = int(hp.get("precondition_frequency") or 1)
    t0 = int(hp.get("start_preconditioning_step") or frequency)
    shapes = meta.model.get("blocks", {}) if isinstance(meta.model, dict) else {}
    blocks = []
    block_spans = spans[spans["block"].isin(shapes)]
    batched = _BatchedShares(spans, steady, shapes)
    for block_id, shape in sorted(shapes.items(), key=lambda kv: _block_key(kv[0])):
        mine = block_spans[block_spans["block"] == block_id]
        hot = mine[mine["name"].isin(("factor_update", "precondition")) & mine["step"].isin(steady)]
        hot_per_step = hot.groupby("step")["duration"].sum()
        rows, cols = int(shape[0]), int(shape[1])
        blocks.append(
            BlockCost(
                id=block_id,
                shape=(rows, cols),
                hot_ns=_median(hot_per_step) + batched.hot_ns(rows, cols),
                refresh_ns=batched.job_ns(mine, "refresh", rows, cols),
                snapshot_ns=batched.job_ns(mine, "snapshot", rows, cols),
                install_ns=batched.job_ns(mine, "install", rows, cols),
                slots=_slots_of(meta.optimizer, rows, cols, hp),
            )
        )
    return WorkloadModel(
        optimizer=meta.optimizer,
        precondition_frequency=frequency,
        start_preconditioning_step=t0,
        step=StepCost(
            forward_ns=_median(forward),
            backward_ns=_median(backward),
            optimizer_other_ns=_median(optimizer_other),
            loop_other_ns=_median(loop_other),
            first_step_ns=int(steps.loc[1]) if 1 in steps.index else 0,
        ),
        blocks=tuple(blocks),
    )


GROUP_JOB = re.compile(r"^[mv]\d+:(\d+)x(\d+)x(\d+)$")
"""A batched run's group job, ``m<group>:<rows>x<cols>x<blocks>``."""


class _BatchedShares:
    """A batched run's group spans, shared out to its blocks.

    ``ExecutionConfig(batched=True)`` records one hot span per batch of groups
    (no block) and one refresh job per group (named for its shape and block
    count). The model is per block, so a step's batched hot time goes to the
    blocks in proportion to their matmul work, rows x cols x (rows + cols)
    (every hot matmul of SOAP, Shampoo and KL-Shampoo is a side times the
    block), and a group job's time to its blocks evenly.
    """

    def __init__(self, spans: pd.DataFrame, steady: pd.Index, shapes: dict) -> None:
        hot = spans[
            spans["block"].isna()
            & spans["name"].isin(("factor_update", "precondition"))
            & spans["step"].isin(steady)
        ]
        self._hot_per_step = _median(hot.groupby("step")["duration"].sum()) if len(hot) else 0
        self._work = sum(_matmul_work(int(r), int(c)) for r, c in shapes.values())
        self._jobs: dict[tuple[str, int, int], list[float]] = {}
        named = spans[spans["block"].notna() & ~spans["block"].isin(shapes)]
        for name, block, duration in zip(
            named["name"], named["block"], named["duration"], strict=True
        ):
            match = GROUP_JOB.match(str(block))
            if match:
                rows, cols, count = (int(x) for x in match.groups())
                self._jobs.setdefault((name, rows, cols), []).append(duration / max(count, 1))

    def hot_ns(self, rows: int, cols: int) -> int:
        if not self._hot_per_step or not self._work:
            return 0
        return int(self._hot_per_step * _matmul_work(rows, cols) / self._work)

    def job_ns(self, mine: pd.DataFrame, name: str, rows: int, cols: int) -> int:
        """The block's own ``name`` spans' median, else its share of its group's jobs."""
        own = mine.loc[mine["name"] == name, "duration"]
        if len(own):
            return _median(own)
        return _median(np.asarray(self._jobs.get((name, rows, cols), []), dtype=np.float64))


def _matmul_work(rows: int, cols: int) -> int:
    return rows * cols * (rows + cols)


def _transfers(spans: pd.DataFrame, steady: pd.Index) -> tuple[pd.Series, pd.Series]:
    """Per step, the training thread's transfer time inside backward, and outside it."""
    moved = spans[spans["category"] == Category.TRANSFER.value]
    zero = pd.Series(0, index=steady, dtype=np.int64)
    if moved.empty:
        return zero, zero
    windows = spans[spans["name"] == "backward"].set_index("step")[["start_ns", "end_ns"]]
    window = windows.reindex(moved["step"]).to_numpy()
    inside = (moved["start_ns"].to_numpy() >= window[:, 0]) & (
        moved["end_ns"].to_numpy() <= window[:, 1]
    )
    in_backward = moved[inside].groupby("step")["duration"].sum()
    elsewhere = moved[~inside].groupby("step")["duration"].sum()
    return (
        in_backward.reindex(steady, fill_value=0),
        elsewhere.reindex(steady, fill_value=0),
    )


def _slots_of(optimizer: str, rows: int, cols: int, hp: dict) -> tuple[SlotBytes, ...]:
    """A measured block's state tensors, from its shape and the run's hyperparameters."""
    if optimizer not in ("shampoo", "soap", "kl-shampoo"):
        return ()
    limit = hp.get("max_precond_dim", "reference") if optimizer != "shampoo" else "reference"
    if isinstance(limit, (int, float)) and not isinstance(limit, bool):
        limit = max(1, int(limit))
    grafting = optimizer != "shampoo" or hp.get("grafting", "none") == "adam"
    return block_slot_bytes(rows, cols, optimizer, max_precond_dim=limit, grafting=grafting)


def _block_key(block_id: str) -> tuple[int, ...]:
    """p3.r1.c0 -> (3, 1, 0): the runtime's block order."""
    return tuple(int(part[1:]) for part in block_id.split("."))
