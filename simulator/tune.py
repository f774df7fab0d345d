"""``simulate --tune``: the runtime's settings that reach the target loss soonest within a memory budget.

The knobs are those of the runtime: where optimizer state rests
(``placement``), how stale a preconditioner may be (``staleness``), the block
size, the refresh workers, where refreshes compute (``root_device``) and, with
several ranks, the update mode. Each candidate is a ``WhatIf`` simulated by
``run_whatif`` with the device budget set to the user's, so tiered placements
plan within it; a candidate whose peak device memory exceeds the budget is
infeasible (``WhatIfResult.fits``).

The objective is the projected time to the target loss per unit of AdamW's
progress: the simulated mean step time times the steps-to-target ratio
measured for that optimizer at that staleness (``simulator.convergence``).
Only staleness values with a measured ratio are searched, since a bound
without one would be ranked as if staleness cost no steps. An optimizer with
no measured ratio at all is ranked by mean step time at the staleness given.
The block size's effect on convergence is not measured and not modelled.

The search is deterministic. A space of at most ``GRID_LIMIT`` candidates is
searched whole; a larger one by coordinate descent from the given
configuration (each axis in turn, the best value kept, until a pass improves
nothing), which may stop at a local optimum: ``TuneResult.exhaustive`` says
which. Staleness, roots and workers form one axis (``TuneSpace.axes``). Every simulated candidate is kept, so the best few and their
trade-offs can be shown.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from runtime.policies.staleness import parse_staleness
from simulator.convergence import StepsRatio
from simulator.whatif import BudgetError, WhatIf, WhatIfResult, run_whatif

GRID_LIMIT = 64
"""Spaces up to this many candidates are searched whole."""
MAX_PASSES = 3
MAX_TAU = 8
"""Bounds searched by default: a larger τ has cost too many steps wherever it was measured."""


@dataclass(frozen=True)
class TuneSpace:
    """The values each knob may take; an axis with one value is not searched."""

    placement: tuple[str, ...] = ("device", "host", "lifecycle", "pressure")
    staleness: tuple[str, ...] = ("sync",)
    block_size: tuple[int | None, ...] = (512, 1024, 2048)
    workers: tuple[int, ...] = (1, 4)
    root_device: tuple[str, ...] = ("device", "host")
    update_mode: tuple[str, ...] = ("sharded",)

    def axes(self) -> list[Axis]:
        """The axes the search moves along. Staleness, roots and workers are one axis:
        an asynchronous refresh pays off only with the right workers in the right place,
        so they are chosen together (synchronous settings ignore the workers)."""
        refresh = [
            (stale, root, workers)
            for stale in self.staleness
            for root in self.root_device
            for workers in (
                self.workers if parse_staleness(stale).asynchronous else self.workers[:1]
            )
        ]
        return [
            Axis(("placement",), [(v,) for v in self.placement]),
            Axis(("staleness", "root_device", "workers"), refresh),
            Axis(("block_size",), [(v,) for v in self.block_size]),
            Axis(("update_mode",), [(v,) for v in self.update_mode]),
        ]

    def size(self) -> int:
        return math.prod(len(axis.values) for axis in self.axes())


@dataclass(frozen=True)
class Axis:
    """Fields of ``WhatIf`` set together, and the value tuples they take."""

    names: tuple[str, ...]
    values: Sequence[tuple[Any, ...]]

    def apply(self, w: WhatIf, value: tuple[Any, ...]) -> WhatIf:
        fields: dict[str, Any] = dict(zip(self.names, value, strict=True))
        return replace(w, **fields)

    def holds(self, w: WhatIf) -> bool:
        return tuple(getattr(w, n) for n in self.names) in self.values


def default_space(base: WhatIf, ratios: Sequence[StepsRatio]) -> TuneSpace:
    """Every knob's usual values; staleness only where its steps ratio was measured."""
    measured = sorted(
        {
            r.staleness
            for r in ratios
            if r.optimizer == base.optimizer and _staleness_order(r.staleness)[1] <= MAX_TAU
        },
        key=_staleness_order,
    )
    ranks = base.nodes * base.gpus_per_node
    return TuneSpace(
        staleness=tuple(measured) or (base.staleness,),
        update_mode=("sharded", "replicated") if ranks > 1 else (base.update_mode,),
    )


def _staleness_order(text: str) -> tuple[int, int]:
    kind, _, tau = text.partition(":")
    return (0 if kind == "sync" else 1, int(tau) if tau.isdigit() else 0)


@dataclass(frozen=True)
class Candidate:
    whatif: WhatIf
    result: WhatIfResult | None  # None: refused before simulating (a budget below one block)
    objective_ms: float  # projected time to target per AdamW step; inf when infeasible
    steps_ratio: float | None  # measured steps to target over AdamW's; None: ranked by step time
    refused: str = ""

    @property
    def feasible(self) -> bool:
        return self.result is not None and self.result.fits


@dataclass(frozen=True)
class TuneResult:
    base: WhatIf
    space: TuneSpace
    candidates: tuple[Candidate, ...]  # every simulated one, in the order simulated
    exhaustive: bool
    by_step_time: bool  # no measured ratio: ranked by mean step time

    def ranked(self) -> list[Candidate]:
        """Feasible candidates, best first (ties broken by the order of the axes' values)."""
        order = {id(c): i for i, c in enumerate(self.candidates)}
        feasible = [c for c in self.candidates if c.feasible]
        return sorted(feasible, key=lambda c: (c.objective_ms, order[id(c)]))

    @property
    def best(self) -> Candidate | None:
        ranked = self.ranked()
        return ranked[0] if ranked else None


def evaluate(w: WhatIf, ratios: Sequence[StepsRatio], by_step_time: bool) -> Candidate:
    exact = [r for r in ratios if r.optimizer == w.optimizer and r.staleness == w.staleness]
    ratio = None if by_step_time else (exact[0].ratio if exact else None)
    try:
        result = run_whatif(w)
    except BudgetError as exc:
        return Candidate(w, None, math.inf, ratio, refused=str(exc))
    if not result.fits or (ratio is None and not by_step_time):
        return Candidate(w, result, math.inf, ratio)
    return Candidate(w, result, result.mean_ms * (ratio if ratio is not None else 1.0), ratio)


def tune(
    base: WhatIf,
    memory_budget_bytes: int,
    ratios: Sequence[StepsRatio],
    space: TuneSpace | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TuneResult:
    """Search ``space`` (default: ``default_space``) around ``base`` under the memory budget.

    ``progress(done, planned)`` is called after each simulation (``planned``
    is an estimate under coordinate descent).
    """
    by_step_time = not any(r.optimizer == base.optimizer for r in ratios)
    space = space or default_space(base, ratios)
    start = replace(base, device_budget=memory_budget_bytes, label="")
    seen: dict[tuple[object, ...], Candidate] = {}
    axes = space.axes()
    names = [name for axis in axes for name in axis.names]

    def key(w: WhatIf) -> tuple[object, ...]:
        return tuple(getattr(w, n) for n in names)

    def run(w: WhatIf, planned: int) -> Candidate:
        k = key(w)
        if k not in seen:
            seen[k] = evaluate(w, ratios, by_step_time)
            if progress is not None:
                progress(len(seen), planned)
        return seen[k]

    exhaustive = space.size() <= GRID_LIMIT
    if exhaustive:
        for combination in itertools.product(*(axis.values for axis in axes)):
            w = start
            for axis, value in zip(axes, combination, strict=True):
                w = axis.apply(w, value)
            run(w, space.size())
    else:
        planned = sum(len(axis.values) for axis in axes) * 2
        current = start
        for axis in axes:
            if not axis.holds(current):
                current = axis.apply(current, axis.values[0])
        best = run(current, planned)
        for _ in range(MAX_PASSES):
            improved = False
            for axis in axes:
                for value in axis.values:
                    candidate = run(axis.apply(best.whatif, value), planned)
                    if candidate.objective_ms < best.objective_ms:
                        best, improved = candidate, True
            if not improved:
                break
    return TuneResult(start, space, tuple(seen.values()), exhaustive, by_step_time)
