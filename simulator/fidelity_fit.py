"""The profile's training efficiencies, re-derived from the published cases and checked
on cases the fit did not see.

A profile's ``[training]`` section holds four numbers: the fractions of the
matmul, attention and memory roofs, and the collectives' interference. They
are the least-squares solution of the log errors of simulated against
published tokens/s/GPU over ``simulator/fidelity/cases.toml``, so anyone can
redo them when cases are added (``bench_fidelity.py --fit``). Log errors
weigh a case 20 % too fast like one 20 % too slow, whatever its throughput.

Four numbers fitted to forty cases could still memorize them. The held-out
check refits without every row of one model and predicts those rows: its
errors are what a new model on the same hardware should expect.

The solver is a projected Levenberg-Marquardt on a central-difference
Jacobian: four unknowns, smooth residuals, box bounds. Deterministic; no
dependency beyond numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from simulator.fidelity_cases import Case, simulate_case
from simulator.llm_step import ComputeEfficiency
from simulator.profiles import HardwareProfile, load_profile

__all__ = ["Fit", "HeldOut", "fit_efficiency", "held_out", "log_errors", "model_of"]

LOWER = np.array([0.05, 0.05, 0.05, 0.0])
UPPER = np.array([1.0, 1.0, 1.0, 1.0])
START = np.array([0.6, 0.3, 0.5, 0.5])


def _efficiency(x: np.ndarray) -> ComputeEfficiency:
    return ComputeEfficiency(float(x[0]), float(x[1]), float(x[2]), float(x[3]))


def _vector(efficiency: ComputeEfficiency) -> np.ndarray:
    e = efficiency
    return np.array([e.matmul, e.attention, e.memory, e.interference])


def log_errors(
    cases: Sequence[Case],
    efficiency: ComputeEfficiency,
    profiles: dict[str, HardwareProfile] | None = None,
) -> np.ndarray:
    """log(simulated / published) of every case at ``efficiency``."""
    loaded = profiles if profiles is not None else {}
    out = np.empty(len(cases))
    for i, case in enumerate(cases):
        if case.hardware not in loaded:
            loaded[case.hardware] = load_profile(case.hardware)
        simulated = simulate_case(case, efficiency, loaded[case.hardware])
        out[i] = np.log(simulated / case.published_tokens_per_s_per_gpu)
    return out


@dataclass(frozen=True)
class Fit:
    """The least-squares efficiencies and each case's error under them."""

    efficiency: ComputeEfficiency
    errors: tuple[float, ...]  # simulated / published - 1, case by case
    at_bound: tuple[str, ...]  # the numbers the bounds stopped (the data wanted more)


def _jacobian(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    columns = []
    for k in range(x.size):
        h = 1e-4
        lo, hi = x.copy(), x.copy()
        lo[k] = max(LOWER[k], x[k] - h)
        hi[k] = min(UPPER[k], x[k] + h)
        columns.append((f(hi) - f(lo)) / (hi[k] - lo[k]))
    return np.stack(columns, axis=1)


def _least_squares(f: Callable[[np.ndarray], np.ndarray], x0: np.ndarray) -> np.ndarray:
    x = np.clip(x0, LOWER, UPPER)
    r = f(x)
    cost = float(r @ r)
    damping = 1e-3
    for _ in range(200):
        jac = _jacobian(f, x)
        gradient = jac.T @ r
        normal = jac.T @ jac
        improved = False
        while damping < 1e12:
            step = np.linalg.solve(normal + damping * np.diag(np.diag(normal) + 1e-12), -gradient)
            candidate = np.clip(x + step, LOWER, UPPER)
            r_new = f(candidate)
            cost_new = float(r_new @ r_new)
            if cost_new < cost:
                improved = cost - cost_new > 1e-12 * max(cost, 1e-30)
                x, r, cost = candidate, r_new, cost_new
                damping = max(damping / 10, 1e-9)
                break
            damping *= 10
        if not improved:
            break
    return x


_NAMES = ("matmul", "attention", "memory", "interference")


def fit_efficiency(cases: Sequence[Case], start: ComputeEfficiency | None = None) -> Fit:
    """The four efficiencies that minimise the squared log errors over ``cases``."""
    if not cases:
        raise ValueError("no cases to fit")
    profiles: dict[str, HardwareProfile] = {}

    def residuals(x: np.ndarray) -> np.ndarray:
        return log_errors(cases, _efficiency(x), profiles)

    x = _least_squares(residuals, START if start is None else _vector(start))
    bound = tuple(
        name
        for name, value, lo, hi in zip(_NAMES, x, LOWER, UPPER, strict=True)
        if np.isclose(value, lo, rtol=0, atol=1e-6) or np.isclose(value, hi, rtol=0, atol=1e-6)
    )
    errors = tuple(float(e) for e in np.expm1(residuals(x)))
    return Fit(_efficiency(x), errors, bound)


@dataclass(frozen=True)
class HeldOut:
    """One model's cases predicted by a fit that never saw them."""

    model: str
    cases: tuple[Case, ...]
    efficiency: ComputeEfficiency  # fitted on every other model's cases
    errors: tuple[float, ...]


def model_of(case: Case) -> str:
    """The model a case trains: its name up to the first space ("mpt-13b 2k x8")."""
    return case.name.split()[0]


def held_out(cases: Sequence[Case], start: ComputeEfficiency | None = None) -> list[HeldOut]:
    """Leave-one-model-out: for each model, fit on the others and predict its cases."""
    models = sorted({model_of(c) for c in cases})
    if len(models) < 2:
        raise ValueError("held-out needs cases of at least two models")
    out = []
    for model in models:
        seen = [c for c in cases if model_of(c) != model]
        unseen = tuple(c for c in cases if model_of(c) == model)
        fitted = fit_efficiency(seen, start).efficiency
        errors = tuple(float(e) for e in np.expm1(log_errors(unseen, fitted)))
        out.append(HeldOut(model, unseen, fitted, errors))
    return out
