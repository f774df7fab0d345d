"""Models from a config: presets, Hugging Face-style JSON and TOML, and every bad field as one line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
from cli_runner import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.model_config import (
    PRESETS,
    ModelConfigError,
    list_models,
    load_model,
    model_from_mapping,
)
from simulator.shapes import SHAPES, Family, ModelShape
from tests.test_fuzz_cli import BAD as FUZZ_VALUES
from tests.test_fuzz_cli import check

LLAMA3_8B = {  # Meta-Llama-3-8B's config.json, as published (keys the simulator ignores kept)
    "architectures": ["LlamaForCausalLM"],
    "bos_token_id": 128000,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "max_position_embeddings": 8192,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vocab_size": 128256,
}


def test_presets_have_the_published_parameter_counts() -> None:
    # Counted from the published configs: embedding + head + per layer (q, k, v, o, gate,
    # up, down, two norms) + final norm.
    assert load_model("llama3-8b").parameters() == 8_030_261_248
    assert load_model("llama3-70b").parameters() == 70_553_706_496
    assert load_model("llama2-7b").parameters() == 6_738_415_616


def test_the_paper_models_stay_presets() -> None:
    for name in ("1b", "7b", "gpt-default"):
        assert load_model(name) is SHAPES[name]
    assert list_models() == [*SHAPES, *PRESETS]


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_a_config_file_gives_the_preset(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"llama3{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(LLAMA3_8B))
    else:
        keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        keys += ("num_key_value_heads", "vocab_size", "max_position_embeddings")
        lines = [f"{k} = {LLAMA3_8B[k]}" for k in keys] + ["tie_word_embeddings = false"]
        path.write_text("\n".join(lines) + "\n")
    shape = load_model(path)
    preset = PRESETS["llama3-8b"]
    assert shape.name == "llama3"
    assert shape.matrices() == preset.matrices() and shape.vectors() == preset.vectors()
    assert shape.parameters() == preset.parameters()


def test_tied_embeddings_drop_the_head() -> None:
    untied = model_from_mapping(LLAMA3_8B, "x")
    tied = model_from_mapping({**LLAMA3_8B, "tie_word_embeddings": True}, "x")
    assert untied.parameters() - tied.parameters() == 128256 * 4096
    assert "lm_head" not in {m.name for m in tied.matrices()}


def test_defaults_full_attention_and_gpt_family() -> None:
    minimal = {k: LLAMA3_8B[k] for k in ("hidden_size", "intermediate_size")}
    minimal |= {"num_hidden_layers": 2, "num_attention_heads": 32, "vocab_size": 1000}
    shape = model_from_mapping(minimal, "m")
    assert shape.kv_heads == 32 and shape.context == 4096 and not shape.tied_embeddings
    mpt = model_from_mapping(
        {"model_type": "mpt", "hidden_size": 256, "num_hidden_layers": 2}
        | {"num_attention_heads": 4, "vocab_size": 100},
        "m",
    )
    assert mpt.family is Family.GPT and mpt.intermediate == 1024


BAD = [
    ({"hidden_size": None}, "hidden_size: missing"),
    ({"hidden_size": "4096"}, "hidden_size: expected a positive integer"),
    ({"hidden_size": 4096.0}, "hidden_size: expected a positive integer"),
    ({"num_hidden_layers": -1}, "num_hidden_layers: expected a positive integer"),
    ({"num_hidden_layers": True}, "num_hidden_layers: expected a positive integer"),
    ({"vocab_size": 10**12}, "vocab_size: expected a positive integer at most"),
    ({"intermediate_size": None}, "intermediate_size: missing"),
    ({"num_attention_heads": 30}, "num_attention_heads: must divide hidden_size (4096), got 30"),
    ({"num_key_value_heads": 5}, "num_key_value_heads: must divide num_attention_heads (32)"),
    ({"tie_word_embeddings": "yes"}, "tie_word_embeddings: expected true or false"),
    ({"model_type": 3}, "model_type: expected a string"),
    ({"model_type": "mpt"}, "intermediate_size: a mpt MLP is 4 x hidden_size (16384)"),
]


@pytest.mark.parametrize(("change", "needle"), BAD)
def test_bad_fields_are_one_line_naming_the_field(change: dict, needle: str) -> None:
    data = {k: v for k, v in {**LLAMA3_8B, **change}.items() if v is not None}
    with pytest.raises(ModelConfigError) as info:
        model_from_mapping(data, "cfg.json")
    message = str(info.value)
    assert message.startswith("cfg.json: ") and needle in message and "\n" not in message


@pytest.mark.parametrize(
    ("name", "body", "needle"),
    [
        ("bad.json", b"{not json", "not valid JSON"),
        ("bad.toml", b"hidden_size = = 3", "not valid TOML"),
        ("bad.json", b"\xff\xfe", "not UTF-8"),
        ("list.json", b"[1, 2]", "expected a table of config fields"),
        ("model.yaml", b"hidden_size: 1", "expected a .json or .toml config file"),
    ],
)
def test_bad_files_are_one_line(tmp_path: Path, name: str, body: bytes, needle: str) -> None:
    path = tmp_path / name
    path.write_bytes(body)
    with pytest.raises(ModelConfigError, match=needle):
        load_model(path)
    with pytest.raises(ModelConfigError, match="cannot read"):
        load_model(tmp_path / "missing.json")


def test_cli_bad_model_config_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "model.json"
    path.write_text(json.dumps({**LLAMA3_8B, "num_attention_heads": 30}))
    assert run_cli(["simulate", "--model", str(path), "--steps", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "num_attention_heads" in err and "--model" in err


def test_cli_runs_a_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small = {**LLAMA3_8B, "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 2}
    small |= {"num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000}
    path = tmp_path / "small.json"
    path.write_text(json.dumps(small))
    args = ["simulate", "--model", str(path), "--hardware", "h100-sxm", "--seq-len", "512"]
    args += ["--micro-batch", "2", "--grad-accum", "2", "--optimizer", "adamw,soap"]
    assert run_cli([*args, "--steps", "12", "--format", "csv"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert set(frame["model"]) == {str(path)} and set(frame["optimizer"]) == {"adamw", "soap"}
    assert set(frame["tokens_per_rank"]) == {2 * 512 * 2}
    assert (frame["memory_gib_per_rank"] > 0).all() and frame["fits"].all()


KEYS = [
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "vocab_size", "tie_word_embeddings", "max_position_embeddings",
    "model_type", "rope_theta",
]  # fmt: skip
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.sampled_from([1, 2, 4, 8, 32, 64, 128, 256, 4096]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(["llama", "mpt", "gpt2"]),
    st.lists(st.integers(), max_size=2),
)
FUZZ = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=len(KEYS)))
def test_fuzzed_mappings_give_a_shape_or_one_line(data: dict) -> None:
    try:
        shape = model_from_mapping(data, "fuzz.json")
    except ModelConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("fuzz.json")
    else:
        assert isinstance(shape, ModelShape) and shape.parameters() > 0


@FUZZ
@given(body=st.binary(max_size=200), suffix=st.sampled_from([".json", ".toml"]))
def test_fuzzed_bytes_give_a_shape_or_one_line(tmp_path: Path, body: bytes, suffix: str) -> None:
    path = tmp_path / f"m{suffix}"
    path.write_bytes(body)
    try:
        load_model(path)
    except ModelConfigError as exc:
        assert "\n" not in str(exc)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--precision", "fp8", "--hardware", "h100-pcie"], "--precision: profile h100-pcie"),
        (["--precision", "fp4"], "--precision: expected bf16, fp8"),
        (["--recompute", "some"], "--recompute: expected none, selective, full"),
        (["--data-parallel", "zero4"], "--data-parallel: expected ddp"),
        (["--update-mode", "replicated", "--data-parallel", "zero3"], "--update-mode"),
        (["--tokens-per-rank", "1000"], "--tokens-per-rank: 1000 is not a whole number"),
        (["--seq-len", str(2**25)], "--seq-len: at most"),
        (["--micro-batch", "0"], "--micro-batch: expected positive integers"),
        (["--grad-accum", str(2**17)], "--grad-accum: at most"),
    ],
)
def test_cli_bad_training_options_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    assert run_cli(["simulate", "--model", "125m", "--steps", "5", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err


TRAINING_OPTIONS = [
    "--model", "--seq-len", "--micro-batch", "--grad-accum", "--recompute", "--precision",
    "--data-parallel", "--tokens-per-rank",
]  # fmt: skip


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(options=st.lists(st.tuples(st.sampled_from(TRAINING_OPTIONS), FUZZ_VALUES), max_size=3))
def test_simulate_with_bad_training_options_is_one_line(
    capsys: pytest.CaptureFixture[str], options: list[tuple[str, str]]
) -> None:
    args = ["simulate", "--model", "gpt-default", "--hardware", "h100-sxm", "--steps", "2"]
    for option, value in options:
        args += [option, value]
    check(run_cli(args), capsys.readouterr().err)
