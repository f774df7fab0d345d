"""The readers of files a user hands us, fuzzed: a one-line error of their own kind, or a result.

Config files (TOML, YAML, JSON) must end in a valid ``RunConfig`` or a
``UserError``; hardware profiles in a profile or a ``ProfileError``; a
trace's chunk files in a trace or a ``TraceError``. Any other exception would
reach the user as a traceback. Hypothesis draws structured and byte-level
inputs; together these are a few thousand cases.
"""

from __future__ import annotations

import json
import math
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asteria_bench.config import RunConfig, apply_mapping, load_config_file, validate
from asteria_bench.errors import UserError
from simulator.profiles import PROFILES_DIR, ProfileError, loads_profile
from tests.samples import METADATA
from traces.io import CHUNKS_DIRNAME, TRACE_DIRNAME, TraceError, read_trace
from traces.recorder import Recorder
from traces.schema import Category
from traces.stream import TraceStream

FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

SECTIONS = ["model", "data", "train", "optim", "runtime", "trian"]
KEYS = [
    "steps", "lr", "n_layer", "n_embd", "n_head", "context", "batch_size", "seed", "device",
    "name", "beta1", "beta2", "eps", "staleness", "placement", "workers", "stagger",
    "update_mode", "dist_timeout", "grad_clip", "block_size", "path", "bogus",
]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["soap", "adamw", "cpu", "cuda", "sync", "bounded:4", "device", "sharded"]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3), max_leaves=4)
MAPPINGS = st.dictionaries(
    st.sampled_from(SECTIONS),
    st.one_of(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=5), VALUES),
    max_size=4,
)


def read_config(path: Path) -> RunConfig:
    config = apply_mapping(RunConfig(), load_config_file(path), f"--config: {path}")
    validate(config)
    return config


def one_line(exc: Exception) -> None:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text


@FUZZ
@given(mapping=MAPPINGS)
def test_json_configs_give_a_config_or_one_line(tmp_path: Path, mapping: dict) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(mapping, allow_nan=True))
    try:
        config = read_config(path)
    except UserError as exc:
        one_line(exc)
        return
    for section in ("train", "optim", "runtime"):  # what validate let through is usable
        for value in vars(getattr(config, section)).values():
            assert not (isinstance(value, float) and not math.isfinite(value))


@FUZZ
@given(mapping=MAPPINGS)
def test_yaml_configs_give_a_config_or_one_line(tmp_path: Path, mapping: dict) -> None:
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(mapping))
    try:
        read_config(path)
    except UserError as exc:
        one_line(exc)


@FUZZ
@given(
    raw=st.one_of(
        st.binary(max_size=200),
        st.text(alphabet=string.printable, max_size=200).map(str.encode),
    ),
    suffix=st.sampled_from([".toml", ".yaml", ".json"]),
)
def test_config_bytes_give_a_config_or_one_line(tmp_path: Path, raw: bytes, suffix: str) -> None:
    path = tmp_path / f"c{suffix}"
    path.write_bytes(raw)
    try:
        read_config(path)
    except UserError as exc:
        one_line(exc)


GH200 = (PROFILES_DIR / "gh200.toml").read_text()


@FUZZ
@given(data=st.data())
def test_mutated_profiles_give_a_profile_or_one_line(data: st.DataObject) -> None:
    text = GH200
    for _ in range(data.draw(st.integers(1, 4))):
        start = data.draw(st.integers(0, len(text)))
        end = data.draw(st.integers(start, min(len(text), start + 40)))
        filler = data.draw(st.text(alphabet=string.printable, max_size=12))
        text = text[:start] + filler + text[end:]
    try:
        loads_profile(text, source="fuzz.toml")
    except ProfileError as exc:
        one_line(exc)


@pytest.fixture(scope="module")
def streamed_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("streamed")
    recorder = Recorder()
    stream = TraceStream(folder)
    stream.begin(METADATA)
    for step in range(1, 4):
        recorder.add_span("step", Category.STEP, step * 10, step * 10 + 5, step=step)
        recorder.counter("loss", 1.0 / step, step=step)
        stream.flush(recorder)
    return folder


@FUZZ
@given(data=st.data())
def test_damaged_chunks_give_a_trace_or_one_line(
    streamed_trace: Path, tmp_path: Path, data: st.DataObject
) -> None:
    import shutil

    folder = tmp_path / "copy"
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(streamed_trace, folder)
    chunks = sorted((folder / TRACE_DIRNAME / CHUNKS_DIRNAME).iterdir())
    victim = data.draw(st.sampled_from(chunks))
    raw = bytearray(victim.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        index = data.draw(st.integers(0, len(raw) - 1))
        raw[index] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    victim.write_bytes(bytes(raw))
    try:
        trace = read_trace(folder)
    except TraceError as exc:
        one_line(exc)
        assert victim.name in str(exc) or "metadata" in str(exc)
        return
    assert len(trace.spans) <= 3 and len(trace.counters) <= 3
