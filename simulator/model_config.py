"""A model for the simulator: a preset name, or a Hugging Face-style config file.

A user describes their own decoder by the fields every Hugging Face
``config.json`` of a LLaMA-style model carries, in JSON or the same keys in
TOML::

    hidden_size = 4096
    intermediate_size = 14336
    num_hidden_layers = 32
    num_attention_heads = 32
    num_key_value_heads = 8        # optional: grouped-query attention (default: heads)
    vocab_size = 128256
    tie_word_embeddings = false    # optional (default false)
    max_position_embeddings = 8192 # optional: the default sequence length (default 4096)
    model_type = "llama"           # optional: llama-style (SwiGLU) unless gpt2 / mpt / gpt

Other keys of a real ``config.json`` (``rope_theta``, ``torch_dtype``, ...)
are ignored: they change neither the FLOPs nor the bytes. ``model_type`` of
``gpt2``, ``gpt`` or ``mpt`` selects the GPT family (a 4 x GELU MLP, tied
head); anything else is read as LLaMA-style, which Mistral, Qwen2 and most
recent decoders are, as far as FLOPs and bytes go.

Any problem raises ``ModelConfigError``: one line naming the file and the field.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from simulator.shapes import SHAPES, Family, ModelShape, ShapeError

__all__ = ["PRESETS", "ModelConfigError", "list_models", "load_model", "model_from_mapping"]


class ModelConfigError(ValueError):
    """A model that cannot be used: ``<file>: <field>: expected ..., got ...`` (one line)."""


_META = "https://huggingface.co/meta-llama"

PRESETS: dict[str, ModelShape] = {
    s.name: s
    for s in (
        ModelShape(
            name="llama3-8b",
            family=Family.LLAMA,
            n_layer=32,
            hidden=4096,
            intermediate=14336,
            n_head=32,
            n_kv_head=8,
            vocab=128256,
            context=8192,
            source=f"{_META}/Meta-Llama-3-8B/blob/main/config.json: 8.03B parameters",
        ),
        ModelShape(
            name="llama3-70b",
            family=Family.LLAMA,
            n_layer=80,
            hidden=8192,
            intermediate=28672,
            n_head=64,
            n_kv_head=8,
            vocab=128256,
            context=8192,
            source=f"{_META}/Meta-Llama-3-70B/blob/main/config.json: 70.6B parameters",
        ),
        ModelShape(
            name="llama2-7b",
            family=Family.LLAMA,
            n_layer=32,
            hidden=4096,
            intermediate=11008,
            n_head=32,
            vocab=32000,
            context=4096,
            source=f"{_META}/Llama-2-7b-hf/blob/main/config.json: 6.74B parameters",
        ),
    )
}
"""Public models by name, next to ``simulator.shapes.SHAPES`` (the paper's ``1b`` and ``7b``)."""

_GPT_TYPES = ("gpt", "gpt2", "mpt")
_LIMITS = {
    "hidden_size": 2**20,
    "intermediate_size": 2**22,
    "num_hidden_layers": 10_000,
    "num_attention_heads": 2**14,
    "num_key_value_heads": 2**14,
    "vocab_size": 10**8,
    "max_position_embeddings": 2**24,
}
"""Upper bounds far past any real model: beyond them a value is a typo, not a model."""


def list_models() -> list[str]:
    """Every preset name: the fixed shapes first, then the public models."""
    return [*SHAPES, *PRESETS]


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Reader:
    def __init__(self, source: str, data: dict[str, Any]) -> None:
        self.source, self.data = source, data

    def fail(self, key: str, message: str) -> ModelConfigError:
        line = f"{self.source}: {key}: {message}" if key else f"{self.source}: {message}"
        return ModelConfigError(" ".join(line.split()))

    def integer(self, key: str, default: int | None = None) -> int:
        raw = self.data.get(key)
        if raw is None and default is not None:
            return default
        limit = _LIMITS[key]
        if raw is None:
            raise self.fail(key, f"missing; expected a positive integer (at most {limit})")
        if isinstance(raw, bool) or not isinstance(raw, int) or not 0 < raw <= limit:
            raise self.fail(key, f"expected a positive integer at most {limit}, got {_show(raw)}")
        return raw

    def shape(self, name: str) -> ModelShape:
        hidden = self.integer("hidden_size")
        heads = self.integer("num_attention_heads")
        if hidden % heads:
            raise self.fail(
                "num_attention_heads", f"must divide hidden_size ({hidden}), got {heads}"
            )
        kv = self.integer("num_key_value_heads", default=heads)
        if heads % kv:
            raise self.fail(
                "num_key_value_heads", f"must divide num_attention_heads ({heads}), got {kv}"
            )
        model_type = self.data.get("model_type", "llama")
        if not isinstance(model_type, str):
            raise self.fail("model_type", f"expected a string, got {_show(model_type)}")
        family = Family.GPT if model_type.lower() in _GPT_TYPES else Family.LLAMA
        intermediate = self.integer(
            "intermediate_size", default=4 * hidden if family is Family.GPT else None
        )
        if family is Family.GPT and intermediate != 4 * hidden:
            raise self.fail(
                "intermediate_size",
                f"a {model_type} MLP is 4 x hidden_size ({4 * hidden}), got {intermediate}",
            )
        tied = self.data.get("tie_word_embeddings", family is Family.GPT)
        if not isinstance(tied, bool):
            raise self.fail("tie_word_embeddings", f"expected true or false, got {_show(tied)}")
        if family is Family.GPT and not tied:
            raise self.fail("tie_word_embeddings", f"a {model_type} head is tied, got false")
        try:
            return ModelShape(
                name=name,
                family=family,
                n_layer=self.integer("num_hidden_layers"),
                hidden=hidden,
                intermediate=intermediate,
                n_head=heads,
                n_kv_head=kv,
                vocab=self.integer("vocab_size"),
                context=self.integer("max_position_embeddings", default=4096),
                source=self.source,
                tied_embeddings=tied and family is Family.LLAMA,
            )
        except ShapeError as exc:  # pragma: no cover - every field is checked above
            raise self.fail("", str(exc)) from None


def model_from_mapping(data: Any, source: str, name: str = "") -> ModelShape:
    """A shape from parsed config data; ``source`` names it in error messages."""
    if not isinstance(data, dict):
        raise ModelConfigError(f"{source}: expected a table of config fields, got {_show(data)}")
    return _Reader(source, data).shape(name or Path(source).stem)


def load_model(spec: str | Path) -> ModelShape:
    """A preset by name (``llama3-8b``, ``7b``, ...) or a ``.json`` / ``.toml`` config file."""
    text = str(spec)
    if not isinstance(spec, Path) and text in SHAPES:
        return SHAPES[text]
    if not isinstance(spec, Path) and text in PRESETS:
        return PRESETS[text]
    path = Path(spec)
    if path.suffix.lower() not in (".json", ".toml"):
        raise ModelConfigError(
            f"unknown model {text!r}: expected a .json or .toml config file or one of"
            f" {', '.join(list_models())}"
        )
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelConfigError(f"{text}: cannot read the file: {exc.strerror or exc}") from None
    try:
        body = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelConfigError(f"{text}: not UTF-8 text") from None
    is_json = path.suffix.lower() == ".json"
    try:
        data = json.loads(body) if is_json else tomllib.loads(body)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, RecursionError) as exc:
        kind = "JSON" if is_json else "TOML"
        raise ModelConfigError(f"{text}: not valid {kind}: {exc}") from None
    return model_from_mapping(data, text, name=path.stem)
