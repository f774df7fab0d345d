"""Wall-clock convergence: measured steps-to-target times simulated step time.

A projection multiplies two things measured separately: how many steps an
optimizer needs to reach AdamW's final validation loss relative to AdamW
(from loss curves of the default GPT, ``benchmarks/bench_convergence.py`` and
``bench_staleness.py``), and the simulated mean step time on the target
hardware relative to AdamW's. Its uncertainty is stated with it:

- the steps ratio is read off curves evaluated every ``eval_every`` steps,
  so it carries about ±eval_every / AdamW's steps of interpolation error;
- it comes from one seed of a 0.8M-parameter model; that the ratio carries
  over to a 1B or 7B model is an assumption, not a measurement.

The packaged file ``simulator/convergence/default-gpt.json`` holds the ratios
this project measured; ``--convergence FILE`` takes a ``summary.json`` of
either benchmark instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DEFAULT_FILE = Path(__file__).resolve().parent / "convergence" / "default-gpt.json"


class ConvergenceError(ValueError):
    """A convergence file that cannot be read (one line, naming the file)."""


@dataclass(frozen=True)
class StepsRatio:
    """Steps to AdamW's final loss, relative to AdamW, for one optimizer and staleness."""

    optimizer: str
    staleness: str
    ratio: float
    plus_minus: float
    source: str


def load_ratios(path: Path = DEFAULT_FILE) -> list[StepsRatio]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConvergenceError(f"{path}: cannot read ({exc.strerror})") from None
    except ValueError as exc:
        raise ConvergenceError(f"{path}: invalid JSON ({exc})") from None
    try:
        settings = data["settings"]
        eval_every = float(settings["eval_every"])
        rows = data["best"]
        adamw_steps = next(float(r["steps_to_target"]) for r in rows if r["optimizer"] == "adamw")
        out = []
        for row in rows:
            if row.get("steps_ratio") is None:
                continue
            out.append(
                StepsRatio(
                    optimizer=str(row["optimizer"]),
                    staleness=str(row.get("staleness", "sync")),
                    ratio=float(row["steps_ratio"]),
                    plus_minus=eval_every / adamw_steps,
                    source=str(data.get("source", path.name)),
                )
            )
    except (KeyError, TypeError, ValueError, StopIteration) as exc:
        raise ConvergenceError(
            f"{path}: expected a bench_convergence summary.json with settings.eval_every and best[] rows"
            f" ({type(exc).__name__}: {exc})"
        ) from None
    return out


def steps_ratio_for(ratios: list[StepsRatio], optimizer: str, staleness: str) -> StepsRatio | None:
    """The measured ratio for this optimizer at this staleness, else its synchronous one."""
    exact = [r for r in ratios if r.optimizer == optimizer and r.staleness == staleness]
    if exact:
        return exact[0]
    sync = [r for r in ratios if r.optimizer == optimizer and r.staleness == "sync"]
    return sync[0] if sync else None


def time_to_target_ratio(
    mean_step_ms: float, adamw_mean_step_ms: float, ratio: StepsRatio
) -> tuple[float, float]:
    """(projected time to AdamW's final loss relative to AdamW, ± from the steps ratio)."""
    speed = mean_step_ms / adamw_mean_step_ms
    return ratio.ratio * speed, ratio.plus_minus * speed
