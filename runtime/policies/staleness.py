"""When an amortized refresh is installed (ALGORITHMS.md §6).

A refresh job's *version* v is the step whose post-update state it was computed
from; it is installed at the boundary of step ``install_step(v) > v`` (or at v
itself for Shampoo, whose reference computes its roots inside step v). The
staleness is τ = install − v. Installing at an exact step, rather than
"whenever ready", is what keeps a run deterministic whatever the worker speed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@runtime_checkable
class StalenessPolicy(Protocol):
    """Decides the install step of a refresh; pure and deterministic."""

    @property
    def name(self) -> str:
        """The policy as spelled on the command line (``sync``, ``bounded:4``)."""
        ...

    def install_step(self, block: str, version: int, reference_tau: int) -> int:
        """The step at whose boundary the result of ``version`` must be in use.

        ``reference_tau`` is the synchronous reference's staleness for the
        optimizer (0 for Shampoo, 1 for SOAP and KL-Shampoo).
        """
        ...


@dataclass(frozen=True)
class Sync:
    """The synchronous reference: τ = the optimizer's reference staleness."""

    name: str = "sync"

    def install_step(self, block: str, version: int, reference_tau: int) -> int:
        return version + reference_tau


def parse_staleness(text: str) -> StalenessPolicy:
    """Parse a command-line spelling of a staleness policy (``sync``)."""
    spelled = text.strip().lower()
    if spelled == "sync":
        return Sync()
    raise ValueError(f"unknown staleness policy {text!r}; expected 'sync'")
