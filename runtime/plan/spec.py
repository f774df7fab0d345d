"""What one optimizer's block holds and when its amortized work runs (ALGORITHMS.md §3–§6).

An ``OptimizerSpec`` is the plan of one optimizer, independent of torch:

- ``slots(rows, cols, config)``: the block's state tensors, in the order of the
  runtime's state dataclass (``runtime.optim.*State``), each with its
  ``SlotKind`` and shape; a side that is not rotated has no factor and no basis.
- ``reference_tau`` and ``skips_first_call``: the synchronous reference's
  staleness (0 for Shampoo, which computes its roots inside the step; 1 for
  SOAP and KL-Shampoo, which refresh at the end of it) and whether the first
  gradient only initialises the state.
- ``phases``: the order of a block's work within a step. Shampoo updates its
  statistics, computes the roots of a due step from them, installs and then
  preconditions; SOAP and KL-Shampoo install, precondition, update their
  statistics and then submit the refresh.
- ``schedule(ordinal, config)``: the steps at which a block's refresh is due
  (Shampoo's t0, then every f; staggering by the block's ordinal).

The runtime executes these phases on tensors and the simulator on simulated
time; a test checks the runtime's state classes against ``slots``. Standard
library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from runtime.plan.kinds import SlotKind

WORD_BYTES = 4
"""fp32 state: ALGORITHMS.md §8 counts memory in 4-byte words (§7.7: fp32 master copies)."""


class Phase(str, Enum):
    """One part of a block's work in a step."""

    STATISTICS = "statistics"  # factor statistics from the gradient (hot path)
    REFRESH = "refresh"  # submit the amortized refresh, when due
    INSTALL = "install"  # install the refresh results whose step this is
    PRECONDITION = "precondition"  # moments, direction and parameter update (hot path)


@dataclass(frozen=True)
class BlockConfig:
    """What a block's slots and schedule depend on besides its shape.

    ``max_precond_dim`` is the longest side that is rotated (None: every side;
    Shampoo always rotates both). ``start_preconditioning_step`` is Shampoo's
    t0 (None: equal to the frequency, the reference's default). ``grafting``
    is whether Shampoo keeps the Adam-graft second moment V.
    """

    precondition_frequency: int = 10
    start_preconditioning_step: int | None = None
    max_precond_dim: int | None = None
    grafting: bool = True
    stagger: bool = False

    def __post_init__(self) -> None:
        f = self.precondition_frequency
        if isinstance(f, bool) or not isinstance(f, int) or f < 1:
            raise ValueError(f"precondition_frequency: expected a positive integer, got {f!r}")
        t0 = self.start_preconditioning_step
        if t0 is not None and (isinstance(t0, bool) or not isinstance(t0, int) or t0 < 1):
            raise ValueError(
                f"start_preconditioning_step: expected a positive integer or None, got {t0!r}"
            )
        dmax = self.max_precond_dim
        if dmax is not None and (isinstance(dmax, bool) or not isinstance(dmax, int) or dmax < 0):
            raise ValueError(
                f"max_precond_dim: expected a non-negative integer or None, got {dmax!r}"
            )


@dataclass(frozen=True)
class SlotSpec:
    """One tensor of a block's state: its field name, kind and shape.

    ``element_bytes`` is None for state kept in the state dtype (fp32 master
    copies, 4 bytes), or the fixed width of a counter (Shampoo's int64
    ``root_failures``), which the cost model of §8 does not count.
    """

    name: str
    kind: SlotKind
    shape: tuple[int, ...]
    element_bytes: int | None = None

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def nbytes(self, state_element_bytes: int = WORD_BYTES) -> int:
        width = state_element_bytes if self.element_bytes is None else self.element_bytes
        return self.numel * width


@dataclass(frozen=True)
class RefreshSchedule:
    """Due at ``t == first``, then at every ``t > first`` with ``t % frequency == offset``.

    SOAP and KL-Shampoo have ``first = 0`` (no special first step: t starts at
    1); Shampoo's ``first`` is its t0. ``offset`` is 0 unless refreshes are
    staggered, when it is the block's ordinal modulo the frequency.
    """

    frequency: int
    offset: int = 0
    first: int = 0

    def due(self, t: int) -> bool:
        return t == self.first or (t > self.first and t % self.frequency == self.offset)


_STATISTICS_FIRST = (Phase.STATISTICS, Phase.REFRESH, Phase.INSTALL, Phase.PRECONDITION)
_UPDATE_FIRST = (Phase.INSTALL, Phase.PRECONDITION, Phase.STATISTICS, Phase.REFRESH)


@dataclass(frozen=True)
class OptimizerSpec:
    """The plan of one optimizer's blocks (see the module docstring)."""

    name: str
    reference_tau: int
    skips_first_call: bool
    phases: tuple[Phase, ...]
    reference_max_precond_dim: int | None = None
    """The reference's rotation limit (SOAP's D_max = 10000; None for the others)."""

    def rotated(self, dim: int, config: BlockConfig) -> bool:
        """Whether a side of length ``dim`` carries a factor and a basis."""
        limit = config.max_precond_dim
        return limit is None or dim <= limit

    def slots(self, rows: int, cols: int, config: BlockConfig) -> tuple[SlotSpec, ...]:
        raise NotImplementedError

    def has_refresh(self, rows: int, cols: int, config: BlockConfig) -> bool:
        """Whether the block has amortized work at all (some side rotated)."""
        return self.rotated(rows, config) or self.rotated(cols, config)

    def schedule(self, ordinal: int, config: BlockConfig) -> RefreshSchedule:
        """When the refresh of the block with this ordinal (among matrix blocks) is due."""
        f = config.precondition_frequency
        offset = ordinal % f if config.stagger else 0
        return RefreshSchedule(f, offset, 0)

    def refresh_due(self, t: int, ordinal: int, config: BlockConfig) -> bool:
        return self.schedule(ordinal, config).due(t)

    def state_words(self, rows: int, cols: int, config: BlockConfig) -> dict[SlotKind, int]:
        """fp32 words per kind (counters excluded): what the cost model of §8 counts."""
        out: dict[SlotKind, int] = {}
        for s in self.slots(rows, cols, config):
            if s.element_bytes is None:
                out[s.kind] = out.get(s.kind, 0) + s.numel
        return out


def _sides(
    spec: OptimizerSpec, rows: int, cols: int, config: BlockConfig, bases: tuple[str, str]
) -> tuple[list[SlotSpec], list[SlotSpec]]:
    """Factors and bases of the rotated sides, left first (the state classes' field order)."""
    factors, rotations = [], []
    for factor, basis, dim in (("L", bases[0], rows), ("R", bases[1], cols)):
        if spec.rotated(dim, config):
            factors.append(SlotSpec(factor, SlotKind.FACTOR, (dim, dim)))
            rotations.append(SlotSpec(basis, SlotKind.BASIS, (dim, dim)))
    return factors, rotations


@dataclass(frozen=True)
class _ShampooSpec(OptimizerSpec):
    """§3: both sides always preconditioned; roots, not bases; t0 then every f."""

    def rotated(self, dim: int, config: BlockConfig) -> bool:
        return True

    def slots(self, rows: int, cols: int, config: BlockConfig) -> tuple[SlotSpec, ...]:
        out = [
            SlotSpec("L", SlotKind.FACTOR, (rows, rows)),
            SlotSpec("R", SlotKind.FACTOR, (cols, cols)),
            SlotSpec("L_root", SlotKind.ROOT, (rows, rows)),
            SlotSpec("R_root", SlotKind.ROOT, (cols, cols)),
            SlotSpec("M", SlotKind.MOMENT, (rows, cols)),
        ]
        if config.grafting:
            out.append(SlotSpec("V", SlotKind.MOMENT, (rows, cols)))
        out.append(SlotSpec("root_failures", SlotKind.MOMENT, (), element_bytes=8))
        return tuple(out)

    def schedule(self, ordinal: int, config: BlockConfig) -> RefreshSchedule:
        f = config.precondition_frequency
        t0 = config.start_preconditioning_step or f
        return RefreshSchedule(f, ordinal % f if config.stagger else 0, t0)


@dataclass(frozen=True)
class _SOAPSpec(OptimizerSpec):
    """§4: factors and bases of the rotated sides, M and V in rotated coordinates."""

    def slots(self, rows: int, cols: int, config: BlockConfig) -> tuple[SlotSpec, ...]:
        factors, bases = _sides(self, rows, cols, config, ("QL", "QR"))
        moments = [SlotSpec(n, SlotKind.MOMENT, (rows, cols)) for n in ("M", "V")]
        return (*factors, *bases, *moments)


@dataclass(frozen=True)
class _KLShampooSpec(OptimizerSpec):
    """§5: factors S_L, S_R (fields L, R), bases, eigenvalue estimates d, and M."""

    def slots(self, rows: int, cols: int, config: BlockConfig) -> tuple[SlotSpec, ...]:
        factors, bases = _sides(self, rows, cols, config, ("QL", "QR"))
        moments = [
            SlotSpec("dL", SlotKind.MOMENT, (rows,)),
            SlotSpec("dR", SlotKind.MOMENT, (cols,)),
            SlotSpec("M", SlotKind.MOMENT, (rows, cols)),
        ]
        return (*factors, *bases, *moments)


@dataclass(frozen=True)
class _AdamWSpec(OptimizerSpec):
    """§1.1: the fallback of 1-D parameters and the AdamW baseline: two moments, no refresh."""

    def rotated(self, dim: int, config: BlockConfig) -> bool:
        return False

    def slots(self, rows: int, cols: int, config: BlockConfig) -> tuple[SlotSpec, ...]:
        return tuple(SlotSpec(n, SlotKind.MOMENT, (rows, cols)) for n in ("M", "V"))


SHAMPOO = _ShampooSpec("shampoo", reference_tau=0, skips_first_call=False, phases=_STATISTICS_FIRST)
SOAP = _SOAPSpec(
    "soap",
    reference_tau=1,
    skips_first_call=True,
    phases=_UPDATE_FIRST,
    reference_max_precond_dim=10000,
)
KL_SHAMPOO = _KLShampooSpec(
    "kl-shampoo", reference_tau=1, skips_first_call=True, phases=_UPDATE_FIRST
)
ADAMW = _AdamWSpec("adamw", reference_tau=0, skips_first_call=False, phases=(Phase.PRECONDITION,))

SPECS: dict[str, OptimizerSpec] = {s.name: s for s in (SHAMPOO, SOAP, KL_SHAMPOO, ADAMW)}


def spec_of(name: str) -> OptimizerSpec:
    """The spec of an optimizer by its command-line name; unknown names list the known ones."""
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(
            f"unknown optimizer {name!r}; expected one of {', '.join(SPECS)}"
        ) from None
