"""When an amortized refresh is installed (ALGORITHMS.md §6).

A refresh job's *version* v is the step whose post-update state it was computed
from; it is installed at the boundary of step ``install_step(v)`` (for Shampoo,
whose reference computes its roots inside step v, that can be v itself). The
staleness is τ = install − v. Installing at an exact step, rather than
"whenever ready", is what keeps a run deterministic whatever the worker speed;
if a result is late the step waits for it and the wait is recorded.

Policies are pure: ``install_step`` depends only on its arguments and on what
the policy was told through ``observe`` (adaptive), and every adaptive choice
is kept in ``choices`` so that a run can be replayed with ``Replay``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class StalenessPolicy(Protocol):
    """Decides the install step of a refresh."""

    @property
    def name(self) -> str:
        """The policy as spelled on the command line (``sync``, ``bounded:4``)."""
        ...

    @property
    def asynchronous(self) -> bool:
        """Whether jobs may run on workers (else they run inline on submit)."""
        ...

    def install_step(self, block: str, version: int, reference_tau: int) -> int:
        """The step at whose boundary the result of ``version`` must be in use.

        ``reference_tau`` is the synchronous reference's staleness for the
        optimizer (0 for Shampoo, 1 for SOAP and KL-Shampoo); no policy
        installs earlier than that, since the result does not exist before.
        """
        ...


@dataclass(frozen=True)
class Sync:
    """The synchronous reference: τ = the optimizer's reference staleness, computed inline."""

    @property
    def name(self) -> str:
        return "sync"

    @property
    def asynchronous(self) -> bool:
        return False

    def install_step(self, block: str, version: int, reference_tau: int) -> int:
        return version + reference_tau


@dataclass(frozen=True)
class Bounded:
    """Install the result of version v at exactly v + τ, computed by workers.

    τ below the optimizer's reference staleness is raised to it.
    """

    tau: int

    def __post_init__(self) -> None:
        if self.tau < 0:
            raise ValueError(f"bounded staleness needs tau >= 0, got {self.tau}")

    @property
    def name(self) -> str:
        return f"bounded:{self.tau}"

    @property
    def asynchronous(self) -> bool:
        return True

    def install_step(self, block: str, version: int, reference_tau: int) -> int:
        return version + max(self.tau, reference_tau)


@dataclass
class Adaptive:
    """Per block, the smallest τ ≤ τ_max that the measured job time allows.

    The runtime (or simulator) reports each finished job's duration and the
    step duration through ``observe``; a block's τ is the number of steps its
    last job took, rounded up, plus one step of margin, clamped to
    [reference τ, τ_max], and never earlier than the block's previous install
    (versions are installed in order). Blocks never observed start at τ_max. Every choice is
    kept in ``choices`` ((block, version) -> install step) for replay.
    """

    tau_max: int
    choices: dict[tuple[str, int], int] = field(default_factory=dict)
    _job_ns: dict[str, int] = field(default_factory=dict)
    _last_install: dict[str, int] = field(default_factory=dict)
    _step_ns: float = 0.0

    def __post_init__(self) -> None:
        if self.tau_max < 1:
            raise ValueError(f"adaptive staleness needs tau_max >= 1, got {self.tau_max}")

    @property
    def name(self) -> str:
        return f"adaptive:{self.tau_max}"

    @property
    def asynchronous(self) -> bool:
        return True

    def observe(self, block: str, job_ns: int, step_ns: float) -> None:
        self._job_ns[block] = job_ns
        if step_ns > 0:
            self._step_ns = step_ns if self._step_ns == 0 else 0.8 * self._step_ns + 0.2 * step_ns

    def tau_for(self, block: str, reference_tau: int) -> int:
        job = self._job_ns.get(block)
        if job is None or self._step_ns <= 0:
            tau = self.tau_max
        else:
            tau = math.ceil(job / self._step_ns) + 1
        return min(self.tau_max, max(reference_tau, tau))

    def state_dict(self) -> dict[str, Any]:
        """Every choice made and what the next ones depend on, for an exact resume."""
        return {
            "tau_max": self.tau_max,
            "choices": [[b, v, i] for (b, v), i in sorted(self.choices.items())],
            "job_ns": dict(sorted(self._job_ns.items())),
            "last_install": dict(sorted(self._last_install.items())),
            "step_ns": self._step_ns,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["tau_max"]) != self.tau_max:
            raise ValueError(
                f"the checkpoint's adaptive staleness has tau_max {state['tau_max']},"
                f" this run {self.tau_max}"
            )
        self.choices = {(str(b), int(v)): int(i) for b, v, i in state["choices"]}
        self._job_ns = {str(k): int(v) for k, v in state["job_ns"].items()}
        self._last_install = {str(k): int(v) for k, v in state["last_install"].items()}
        self._step_ns = float(state["step_ns"])

    def install_step(self, block: str, version: int, reference_tau: int) -> int:
        key = (block, version)
        if key not in self.choices:
            # Never install a newer version before an older one of the same block.
            install = max(
                version + self.tau_for(block, reference_tau), self._last_install.get(block, 0)
            )
            self.choices[key] = install
            self._last_install[block] = install
        return self.choices[key]


@dataclass(frozen=True)
class Replay:
    """Install steps read from a recorded schedule (an adaptive run's ``choices``).

    A (block, version) that the schedule does not hold is an error: a replay
    that silently fell back to another rule would not reproduce the run.
    """

    schedule: dict[tuple[str, int], int]
    source: str = "schedule"

    @property
    def name(self) -> str:
        return f"replay:{self.source}"

    @property
    def asynchronous(self) -> bool:
        return True

    def install_step(self, block: str, version: int, reference_tau: int) -> int:
        try:
            return self.schedule[(block, version)]
        except KeyError:
            raise KeyError(
                f"replayed schedule {self.source} has no install step for block {block} version {version}"
            ) from None


def schedule_to_json(choices: dict[tuple[str, int], int]) -> str:
    """An adaptive run's choices as JSON: ``[[block, version, install_step], ...]``."""
    rows = sorted([block, version, install] for (block, version), install in choices.items())
    return json.dumps({"schedule": rows}, indent=0) + "\n"


def load_schedule(path: str) -> Replay:
    """Read a schedule written by ``schedule_to_json``; errors name the file."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        rows = data["schedule"]
        schedule = {(str(b), int(v)): int(i) for b, v, i in rows}
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the staleness schedule ({exc.strerror})") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f'{path}: not a staleness schedule (expected {{"schedule": [[block, version, step], ...]}}): {exc}'
        ) from None
    return Replay(schedule, source=path)


def parse_staleness(text: str) -> StalenessPolicy:
    """Parse ``sync``, ``bounded:TAU``, ``adaptive:TAU_MAX`` or ``replay:SCHEDULE.json``."""
    spelled = text.strip()
    if spelled.lower().startswith("replay:"):
        return load_schedule(spelled.partition(":")[2])
    spelled = spelled.lower()
    if spelled == "sync":
        return Sync()
    kind, _, arg = spelled.partition(":")
    if kind in ("bounded", "adaptive") and arg.isdigit():
        return Bounded(int(arg)) if kind == "bounded" else Adaptive(int(arg))
    raise ValueError(
        f"unknown staleness policy {text!r}; expected sync, bounded:TAU, adaptive:TAU_MAX"
        " or replay:SCHEDULE.json"
    )
