"""Staleness by level: a result that crosses nodes is installed at the inter-node bound.

Hierarchical publication moves a refresh result within a node over the fast
link and across nodes over the slow one, and each level has its own
staleness bound: τ_intra for results that stay inside their node, τ_inter
(≥ τ_intra) for results that cross. A block's install step is the bound of
the widest level its result crosses, fixed by the plan's owner assignment
before any work is done, so every rank still installs the same version of
every block at the same step. The longer bound is what lets the slow link
carry a result over several steps of training instead of one.

Standard library only, like every policy.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.policies.staleness import Bounded, StalenessPolicy, Sync


@dataclass(frozen=True)
class LevelStaleness:
    """``intra`` for blocks kept inside their node, ``inter_tau`` for blocks that cross nodes."""

    intra: StalenessPolicy
    inter_tau: int
    crossing: frozenset[str]

    def __post_init__(self) -> None:
        if not isinstance(self.intra, Sync | Bounded):
            raise ValueError(
                f"an inter-node staleness bound needs sync or bounded:TAU within nodes,"
                f" not {self.intra.name}"
            )
        floor = self.intra.tau if isinstance(self.intra, Bounded) else 0
        if self.inter_tau < floor:
            raise ValueError(
                f"the inter-node staleness bound ({self.inter_tau}) must be at least the"
                f" intra-node one ({floor})"
            )

    @property
    def name(self) -> str:
        """The intra-node policy's name: runs record the inter bound on its own."""
        return self.intra.name

    @property
    def asynchronous(self) -> bool:
        return self.intra.asynchronous

    def install_step(self, block: str, version: int, reference_tau: int) -> int:
        within = self.intra.install_step(block, version, reference_tau)
        if block not in self.crossing:
            return within
        return max(within, version + max(self.inter_tau, reference_tau))
