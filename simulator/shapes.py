"""Model shapes by name, as data: every weight the optimizers see, without torch.

Two families:

- ``gpt``: this project's byte-level GPT (``asteria_bench/workload/model.py``):
  fused QKV projection, 4x GELU MLP, LayerNorms and biases, learned position
  embeddings, LM head tied to the token embedding (so it is one parameter,
  listed once as ``embedding``).
- ``llama``: LLaMA-style decoders: separate q/k/v/o (grouped-query attention
  when ``n_kv_head < n_head``), SwiGLU MLP (gate, up, down), RMSNorm gains, no
  biases, untied LM head.

Matrices are listed as ``(rows, cols) = (out_features, in_features)``, the
orientation of ``torch.nn.Linear.weight`` and of (a, b) in ALGORITHMS.md §0;
embeddings are ``(vocab, hidden)``. ``count`` is how many such matrices the
model holds (one per layer, or one).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = [
    "SHAPES",
    "Family",
    "MatrixSpec",
    "ModelShape",
    "ShapeError",
    "VectorSpec",
    "get_shape",
    "gpt_shape",
    "list_shapes",
]


class ShapeError(ValueError):
    """An unknown shape name or an inconsistent shape (one line)."""


class Family(str, Enum):
    GPT = "gpt"
    LLAMA = "llama"


@dataclass(frozen=True)
class MatrixSpec:
    """``count`` 2-D weights of ``rows × cols`` each (ALGORITHMS.md's a × b)."""

    name: str
    rows: int
    cols: int
    count: int

    @property
    def numel(self) -> int:
        """Elements of one such matrix."""
        return self.rows * self.cols


@dataclass(frozen=True)
class VectorSpec:
    """``count`` 1-D parameters (biases, norm gains) of ``size`` each; AdamW handles them."""

    name: str
    size: int
    count: int


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer's shape; ``source`` says where the numbers come from."""

    name: str
    family: Family
    n_layer: int
    hidden: int
    intermediate: int
    n_head: int
    vocab: int
    context: int
    n_kv_head: int | None = None  # None = n_head (no grouped-query attention)
    source: str = ""
    tied_embeddings: bool = False  # llama: the LM head is the token embedding (one parameter)

    def __post_init__(self) -> None:
        for attr in ("n_layer", "hidden", "intermediate", "n_head", "vocab", "context"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ShapeError(
                    f"shape {self.name!r}: {attr} must be a positive integer, got {value!r}"
                )
        if self.hidden % self.n_head:
            raise ShapeError(
                f"shape {self.name!r}: hidden ({self.hidden}) must be a multiple of n_head ({self.n_head})"
            )
        kv = self.kv_heads
        if isinstance(kv, bool) or not isinstance(kv, int) or kv <= 0 or self.n_head % kv:
            raise ShapeError(
                f"shape {self.name!r}: n_kv_head must be a positive divisor of n_head ({self.n_head}), got {kv!r}"
            )
        if self.family is Family.GPT and self.intermediate != 4 * self.hidden:
            raise ShapeError(
                f"shape {self.name!r}: a gpt MLP is 4 x hidden ({4 * self.hidden}), got {self.intermediate}"
            )

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_head

    def matrices(self) -> list[MatrixSpec]:
        """Every 2-D weight, per-layer ones with ``count = n_layer``."""
        h, i, n = self.hidden, self.intermediate, self.n_layer
        if self.family is Family.GPT:
            return [
                MatrixSpec("embedding", self.vocab, h, 1),  # tied: also the LM head
                MatrixSpec("position", self.context, h, 1),
                MatrixSpec("qkv", 3 * h, h, n),
                MatrixSpec("o", h, h, n),
                MatrixSpec("up", i, h, n),
                MatrixSpec("down", h, i, n),
            ]
        kv = self.kv_heads * self.head_dim
        return [
            MatrixSpec("embedding", self.vocab, h, 1),
            MatrixSpec("q", h, h, n),
            MatrixSpec("k", kv, h, n),
            MatrixSpec("v", kv, h, n),
            MatrixSpec("o", h, h, n),
            MatrixSpec("gate", i, h, n),
            MatrixSpec("up", i, h, n),
            MatrixSpec("down", h, i, n),
            *([] if self.tied_embeddings else [MatrixSpec("lm_head", self.vocab, h, 1)]),
        ]

    def vectors(self) -> list[VectorSpec]:
        """Every 1-D parameter (left to AdamW by all three optimizers, ALGORITHMS.md §1.1)."""
        h, i, n = self.hidden, self.intermediate, self.n_layer
        if self.family is Family.GPT:
            return [
                VectorSpec("ln_1", h, 2 * n),  # weight and bias
                VectorSpec("ln_2", h, 2 * n),
                VectorSpec("qkv.bias", 3 * h, n),
                VectorSpec("o.bias", h, n),
                VectorSpec("up.bias", i, n),
                VectorSpec("down.bias", h, n),
                VectorSpec("ln_f", h, 2),
            ]
        return [
            VectorSpec("attention_norm", h, n),
            VectorSpec("mlp_norm", h, n),
            VectorSpec("final_norm", h, 1),
        ]

    def matrix_parameters(self) -> int:
        return sum(m.numel * m.count for m in self.matrices())

    def parameters(self) -> int:
        """All trainable parameters (a tied embedding counted once)."""
        return self.matrix_parameters() + sum(v.size * v.count for v in self.vectors())


def gpt_shape(
    n_layer: int, n_embd: int, n_head: int, context: int, vocab: int = 256, name: str = "gpt"
) -> ModelShape:
    """The shape of this project's GPT for a run's model settings."""
    return ModelShape(
        name=name,
        family=Family.GPT,
        n_layer=n_layer,
        hidden=n_embd,
        intermediate=4 * n_embd,
        n_head=n_head,
        vocab=vocab,
        context=context,
        source="asteria_bench/workload/model.py",
    )


_GALORE = "https://github.com/jiaweizzhao/GaLore/tree/main/configs"

SHAPES: dict[str, ModelShape] = {
    s.name: s
    for s in (
        gpt_shape(4, 128, 4, 64, name="gpt-default"),  # asteria_bench/config.py ModelSection
        gpt_shape(6, 256, 8, 256, name="gpt-small"),
        ModelShape(
            name="125m",
            family=Family.LLAMA,
            n_layer=12,
            hidden=768,
            intermediate=2048,
            n_head=12,
            vocab=32000,
            context=1024,
            source=f"GaLore/ReLoRA llama_130m.json ({_GALORE}): GPT-3 125M depth and width with "
            "a SwiGLU MLP; 134M parameters with the untied 32k head",
        ),
        ModelShape(
            name="350m",
            family=Family.LLAMA,
            n_layer=24,
            hidden=1024,
            intermediate=2736,
            n_head=16,
            vocab=32000,
            context=1024,
            source=f"GaLore/ReLoRA llama_350m.json ({_GALORE}); 368M parameters",
        ),
        ModelShape(
            name="1b",
            family=Family.LLAMA,
            n_layer=16,
            hidden=2048,
            intermediate=5632,
            n_head=32,
            vocab=32000,
            context=2048,
            source="TinyLlama-1.1B's width (2048 hidden, 5632 intermediate, 32 heads, vocab 32000) "
            "with 16 layers and full multi-head attention instead of 22 layers with 4 KV heads; "
            "0.95B parameters [choice]",
        ),
        ModelShape(
            name="7b",
            family=Family.LLAMA,
            n_layer=32,
            hidden=4096,
            intermediate=11008,
            n_head=32,
            vocab=32000,
            context=4096,
            source="LLaMA-7B / Llama-2-7B (arXiv 2302.13971, 2307.09288): 6.74B parameters",
        ),
        ModelShape(
            name="13b",
            family=Family.LLAMA,
            n_layer=40,
            hidden=5120,
            intermediate=13824,
            n_head=40,
            vocab=32000,
            context=4096,
            source="LLaMA-13B / Llama-2-13B (arXiv 2302.13971, 2307.09288): 13.0B parameters",
        ),
    )
}


def list_shapes() -> list[str]:
    return list(SHAPES)


def get_shape(name: str) -> ModelShape:
    """The named shape; an unknown name raises ``ShapeError`` listing the known ones."""
    try:
        return SHAPES[name]
    except KeyError:
        raise ShapeError(
            f"unknown model shape {name!r}; known shapes: {', '.join(SHAPES)}"
        ) from None
