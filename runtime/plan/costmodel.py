"""The cost model of ALGORITHMS.md §8: state, FLOPs and bytes of each optimizer block.

It is part of the plan (``runtime.plan``) because the runtime's owner
assignment and the simulator's workload both price blocks with it. A block's
state is counted from its slots (``runtime.plan.spec``), so the sizes here are
those of the tensors the runtime allocates; the §8 closed forms are checked
against them in the tests.

Every function takes a block's shape (a, b) — rows × cols after blocking,
ALGORITHMS.md §0 and §1.2 — and a ``CostConfig`` (or just the optimizer's
name). All state is fp32: one word is 4 bytes (§7.7). Counts are estimates for
the simulator's workload model, not measurements; the formulas cite §8.

Which sides of a block are preconditioned ("rotated") decides most costs:

- AdamW: none.
- Shampoo: both (Distributed Shampoo blocks instead of skipping sides, §1.2).
- SOAP: a side longer than ``max_precond_dim`` (reference default 10000,
  §4.4) is not rotated: no factor, no basis, no FLOPs for that side (§1.1).
- KL-Shampoo: every side by default (the reference rotates all, §1.2); a
  finite ``max_precond_dim`` acts as for SOAP.

1-D parameters (biases, norm gains) go to AdamW under every optimizer (§1.1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Literal, Protocol

from runtime.plan.kinds import SlotKind
from runtime.plan.spec import WORD_BYTES, BlockConfig, spec_of

__all__ = [
    "ELEMENTWISE_FLOPS_PER_ELEMENT",
    "SOAP_MAX_PRECOND_DIM",
    "WORD_BYTES",
    "BlockSpec",
    "CostConfig",
    "Optimizer",
    "StateWords",
    "Traffic",
    "basis_refresh_flops",
    "block_hot_path_bytes",
    "block_hot_path_flops",
    "block_refresh_flops",
    "block_state",
    "block_state_bytes",
    "blocks_of",
    "eigh_flops",
    "factor_refresh_flops",
    "fwd_bwd_flops",
    "invroot_flops",
    "model_hot_path_bytes",
    "model_hot_path_flops",
    "model_refresh_flops",
    "model_state",
    "model_state_bytes",
    "preconditioned_dims",
    "roofline_time_s",
]

SOAP_MAX_PRECOND_DIM = spec_of("soap").reference_max_precond_dim
"""SOAP's D_max (§4.4): a longer side is not rotated."""

ELEMENTWISE_FLOPS_PER_ELEMENT = 12
"""**[choice]** Elementwise work per parameter and step, every optimizer: moment EMAs,
square root, divide, update, weight decay. §8 lists only the matmuls; this keeps
AdamW's (bandwidth-bound) roofline from having zero FLOPs."""


class Optimizer(str, Enum):
    ADAMW = "adamw"
    SHAMPOO = "shampoo"
    SOAP = "soap"
    KL_SHAMPOO = "kl-shampoo"


class MatrixLike(Protocol):
    """A model's 2-D weights of one kind: ``count`` matrices of ``rows × cols``."""

    @property
    def name(self) -> str: ...
    @property
    def rows(self) -> int: ...
    @property
    def cols(self) -> int: ...
    @property
    def count(self) -> int: ...


class VectorLike(Protocol):
    """A model's 1-D parameters of one kind: ``count`` vectors of ``size``."""

    @property
    def size(self) -> int: ...
    @property
    def count(self) -> int: ...


class ShapeLike(Protocol):
    """What the model-level functions need of a model (``simulator.shapes.ModelShape``)."""

    def matrices(self) -> Sequence[MatrixLike]: ...
    def vectors(self) -> Sequence[VectorLike]: ...


@dataclass(frozen=True)
class CostConfig:
    """What the cost of a block depends on besides its shape.

    ``block_size``: B of §1.2, ``None`` = unblocked. ``max_precond_dim``: sides
    longer than it are not rotated; ``"reference"`` picks each reference's
    default (10000 for SOAP, no limit otherwise). ``grafting``: Shampoo keeps
    Adam-graft V (§3.1); §8's Shampoo row assumes it.
    """

    optimizer: Optimizer
    block_size: int | None = None
    max_precond_dim: int | Literal["reference"] | None = "reference"
    grafting: bool = True

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "optimizer", Optimizer(self.optimizer))
        except ValueError:
            known = ", ".join(o.value for o in Optimizer)
            raise ValueError(
                f"optimizer: expected one of {known}, got {self.optimizer!r}"
            ) from None
        if self.block_size is not None and (
            isinstance(self.block_size, bool)
            or not isinstance(self.block_size, int)
            or self.block_size < 1
        ):
            raise ValueError(
                f"block_size: expected a positive integer or None, got {self.block_size!r}"
            )
        limit = self.max_precond_dim
        if limit != "reference" and limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise ValueError(
                    f"max_precond_dim: expected a non-negative integer, None or 'reference', got {limit!r}"
                )
            if self.optimizer not in (Optimizer.SOAP, Optimizer.KL_SHAMPOO):
                raise ValueError("max_precond_dim: applies only to soap and kl-shampoo")

    @property
    def rotation_limit(self) -> int | None:
        """The longest side that is rotated (``None``: no limit)."""
        if self.max_precond_dim == "reference":
            return spec_of(self.optimizer.value).reference_max_precond_dim
        return self.max_precond_dim

    def block_config(self) -> BlockConfig:
        """The plan's view of this configuration (slots and rotated sides)."""
        return BlockConfig(max_precond_dim=self.rotation_limit, grafting=self.grafting)


ConfigLike = CostConfig | Optimizer | str


def _config(config: ConfigLike) -> CostConfig:
    return config if isinstance(config, CostConfig) else CostConfig(Optimizer(config))


@dataclass(frozen=True)
class StateWords:
    """Persistent optimizer state of a block or a model, in 4-byte words.

    ``factors``: L, R (or S_L, S_R), written every step. ``bases``: inverse
    roots or eigenbases, read every step, written at a refresh. ``moments``:
    M, V, d — the elementwise state.
    """

    factors: int = 0
    bases: int = 0
    moments: int = 0

    @property
    def total(self) -> int:
        return self.factors + self.bases + self.moments

    @property
    def bytes(self) -> int:
        return WORD_BYTES * self.total

    def __add__(self, other: StateWords) -> StateWords:
        return StateWords(
            self.factors + other.factors, self.bases + other.bases, self.moments + other.moments
        )

    def scaled(self, count: int) -> StateWords:
        return StateWords(self.factors * count, self.bases * count, self.moments * count)


@dataclass(frozen=True)
class Traffic:
    """Bytes read from and written to device memory by one hot-path step."""

    read_bytes: int
    written_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.read_bytes + self.written_bytes

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(self.read_bytes + other.read_bytes, self.written_bytes + other.written_bytes)

    def scaled(self, count: int) -> Traffic:
        return Traffic(self.read_bytes * count, self.written_bytes * count)


def _check_block(a: int, b: int) -> None:
    for name, value in (("a", a), ("b", b)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"block side {name}: expected a positive integer, got {value!r}")


def preconditioned_dims(a: int, b: int, config: ConfigLike) -> list[int]:
    """The sides of an a × b block that carry a factor and a basis (see the module doc)."""
    _check_block(a, b)
    cfg = _config(config)
    spec, block = spec_of(cfg.optimizer.value), cfg.block_config()
    return [d for d in (a, b) if spec.rotated(d, block)]


# ---------------------------------------------------------------------------------------
# Per block


def block_state(a: int, b: int, config: ConfigLike) -> StateWords:
    """Persistent state of one a × b block (§8 first table; §3.1, §4.1, §5.2).

    AdamW 2ab; Shampoo 2(a² + b²) + 2ab (ab without grafting); SOAP 2(a² + b²) + 2ab;
    KL-Shampoo 2(a² + b²) + ab + (a + b). An unrotated side drops its d² terms.
    Counted from the block's slots (``OptimizerSpec.slots``); fixed-width
    counters (Shampoo's 8-byte ``root_failures``) are not state words.
    """
    _check_block(a, b)
    cfg = _config(config)
    words = spec_of(cfg.optimizer.value).state_words(a, b, cfg.block_config())
    return StateWords(
        factors=words.get(SlotKind.FACTOR, 0),
        bases=words.get(SlotKind.BASIS, 0) + words.get(SlotKind.ROOT, 0),
        moments=words.get(SlotKind.MOMENT, 0),
    )


def block_state_bytes(a: int, b: int, config: ConfigLike) -> int:
    return block_state(a, b, config).bytes


_MATMUL_COEFFICIENT = {
    Optimizer.ADAMW: 0,
    Optimizer.SHAMPOO: 4,  # statistics 2ab(a+b) + direction L̃·M̂·R̃ 2ab(a+b)
    Optimizer.SOAP: 6,  # statistics 2ab(a+b) + rotate in and out 4ab(a+b)
    Optimizer.KL_SHAMPOO: 8,  # rotations plus the whitened statistics ≈ 8ab(a+b)
}


def block_hot_path_flops(a: int, b: int, config: ConfigLike) -> float:
    """FLOPs of one step of one block on the critical path (§8 second table).

    Matmuls: c·ab·Σd over the rotated sides d, with c = 4 (Shampoo), 6 (SOAP),
    8 (KL-Shampoo); with both sides rotated this is c·ab(a + b). Plus
    ``ELEMENTWISE_FLOPS_PER_ELEMENT``·ab.
    """
    cfg = _config(config)
    dims = preconditioned_dims(a, b, cfg)
    return float(_MATMUL_COEFFICIENT[cfg.optimizer] * a * b * sum(dims)) + float(
        ELEMENTWISE_FLOPS_PER_ELEMENT * a * b
    )


def eigh_flops(d: int) -> float:
    """Symmetric eigendecomposition with vectors, ≈ 9d³ (§8 third table)."""
    return 9.0 * d**3


def invroot_flops(d: int) -> float:
    """Inverse root = eigh + Q·diag·Qᵀ, ≈ 11d³ (§8; §2.2)."""
    return 11.0 * d**3


def basis_refresh_flops(d: int) -> float:
    """Warm-started basis refresh = d×d matmul + QR, ≈ 2d³ + 2.7d³ (§8; §2.3)."""
    return 2.0 * d**3 + 2.7 * d**3


def factor_refresh_flops(d: int, optimizer: Optimizer | str) -> float:
    """Amortized work for one factor of size d: Shampoo an inverse root, SOAP and
    KL-Shampoo a basis refresh (§6), AdamW nothing."""
    opt = Optimizer(optimizer)
    if opt is Optimizer.SHAMPOO:
        return invroot_flops(d)
    if opt in (Optimizer.SOAP, Optimizer.KL_SHAMPOO):
        return basis_refresh_flops(d)
    return 0.0


def block_refresh_flops(a: int, b: int, config: ConfigLike) -> float:
    """One amortized refresh of every factor of a block; divide by f for a per-step rate."""
    cfg = _config(config)
    return sum(factor_refresh_flops(d, cfg.optimizer) for d in preconditioned_dims(a, b, cfg))


def block_hot_path_bytes(a: int, b: int, config: ConfigLike) -> Traffic:
    """Compulsory device-memory traffic of one hot-path step (ALGORITHMS.md §10).

    Each tensor touched once, fp32, no intermediates (a lower bound): read the
    gradient, the weight and all persistent state; write the weight, the moments
    and the factors. Bases and roots are only read on the hot path (§6).
    """
    state = block_state(a, b, config)
    ab = a * b
    read = 2 * ab + state.total
    written = ab + state.moments + state.factors
    return Traffic(WORD_BYTES * read, WORD_BYTES * written)


# ---------------------------------------------------------------------------------------
# Per model


@dataclass(frozen=True)
class BlockSpec:
    """Block (row, col) of a matrix kind; ``count`` identical copies (one per layer)."""

    matrix: str
    row: int
    col: int
    rows: int
    cols: int
    count: int


def _chunks(n: int, size: int | None) -> list[int]:
    if size is None or size >= n:
        return [n]
    return [min(size, n - start) for start in range(0, n, size)]


def blocks_of(shape: ShapeLike, block_size: int | None) -> list[BlockSpec]:
    """The blocks of every matrix of ``shape`` (§1.2: consecutive chunks of B, the last shorter)."""
    CostConfig(Optimizer.ADAMW, block_size=block_size)  # validates block_size
    blocks = []
    for m in shape.matrices():
        for i, rows in enumerate(_chunks(m.rows, block_size)):
            for j, cols in enumerate(_chunks(m.cols, block_size)):
                blocks.append(BlockSpec(m.name, i, j, rows, cols, m.count))
    return blocks


def _vector_elements(shape: ShapeLike) -> int:
    return sum(v.size * v.count for v in shape.vectors())


def model_state(shape: ShapeLike, config: ConfigLike) -> StateWords:
    """All persistent optimizer state of a model: blocks, plus AdamW (2 words) per 1-D element."""
    cfg = _config(config)
    total = StateWords(moments=2 * _vector_elements(shape))
    for blk in blocks_of(shape, cfg.block_size):
        total = total + block_state(blk.rows, blk.cols, cfg).scaled(blk.count)
    return total


def model_state_bytes(shape: ShapeLike, config: ConfigLike) -> int:
    return model_state(shape, config).bytes


def model_hot_path_flops(shape: ShapeLike, config: ConfigLike) -> float:
    """Optimizer FLOPs of one step over the whole model (1-D parameters: elementwise only)."""
    cfg = _config(config)
    flops = float(ELEMENTWISE_FLOPS_PER_ELEMENT * _vector_elements(shape))
    for blk in blocks_of(shape, cfg.block_size):
        flops += blk.count * block_hot_path_flops(blk.rows, blk.cols, cfg)
    return flops


def model_refresh_flops(shape: ShapeLike, config: ConfigLike) -> float:
    """One refresh of every factor of the model; divide by f for a per-step rate."""
    cfg = _config(config)
    return sum(
        blk.count * block_refresh_flops(blk.rows, blk.cols, cfg)
        for blk in blocks_of(shape, cfg.block_size)
    )


def model_hot_path_bytes(shape: ShapeLike, config: ConfigLike) -> Traffic:
    """Compulsory traffic of one optimizer step over the model (1-D: AdamW, 4 read / 3 written)."""
    cfg = _config(config)
    n = _vector_elements(shape)
    total = Traffic(WORD_BYTES * 4 * n, WORD_BYTES * 3 * n)
    for blk in blocks_of(shape, cfg.block_size):
        total = total + block_hot_path_bytes(blk.rows, blk.cols, cfg).scaled(blk.count)
    return total


def fwd_bwd_flops(parameters: int, tokens: int) -> float:
    """Forward + backward matmul work ≈ 6·parameters·tokens (§8, 6abT per layer)."""
    if parameters < 0 or tokens < 0:
        raise ValueError(f"parameters and tokens must be non-negative, got {parameters}, {tokens}")
    return 6.0 * parameters * tokens


def roofline_time_s(flops: float, bytes_moved: float, peak_flops: float, bandwidth: float) -> float:
    """The roofline bound: max(flops / peak FLOP/s, bytes / bandwidth in B/s), in seconds."""
    if not peak_flops > 0 or not bandwidth > 0:
        raise ValueError(
            f"peak_flops and bandwidth must be positive, got {peak_flops!r}, {bandwidth!r}"
        )
    if not flops >= 0 or not bytes_moved >= 0:
        raise ValueError(
            f"flops and bytes_moved must be non-negative, got {flops!r}, {bytes_moved!r}"
        )
    return max(flops / peak_flops, bytes_moved / bandwidth)
