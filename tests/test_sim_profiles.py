"""Hardware profiles: the packaged files, validation messages, and the TOML round trip."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.profiles import (
    PROFILES_DIR,
    Basis,
    HardwareProfile,
    LinkKind,
    ProfileError,
    Quantity,
    dump_profile,
    list_profiles,
    load_profile,
    loads_profile,
)

PACKAGED = ["gb10", "gh200", "h100-pcie", "h100-sxm", "h200"]
GH200_TEXT = (PROFILES_DIR / "gh200.toml").read_text(encoding="utf-8")


def test_the_packaged_profiles_are_listed() -> None:
    assert list_profiles() == PACKAGED


@pytest.mark.parametrize("name", PACKAGED)
def test_every_packaged_profile_loads_and_every_number_has_a_source(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name
    quantities = profile.quantities()
    assert len(quantities) >= 18
    for path, q in quantities.items():
        assert q.source.strip(), path
        assert q.basis in (Basis.STATED, Basis.ASSUMED), path
        assert q.value > 0 and math.isfinite(q.value), path
    # Every assumption explains itself: a URL plus a note, or a rationale in the source.
    for path, q in profile.assumptions().items():
        assert q.note or not q.source.startswith("http"), path


@pytest.mark.parametrize("name", PACKAGED)
def test_dump_then_load_is_the_same_profile(name: str, tmp_path: Path) -> None:
    profile = load_profile(name)
    text = dump_profile(profile)
    assert loads_profile(text) == profile
    assert dump_profile(loads_profile(text)) == text
    path = tmp_path / f"{name}-copy.toml"
    path.write_text(text, encoding="utf-8")
    assert load_profile(path) == profile
    assert load_profile(str(path)) == profile


def test_numbers_follow_hardware_md() -> None:
    gh200, gb10 = load_profile("gh200"), load_profile("gb10")
    sxm, pcie, h200 = load_profile("h100-sxm"), load_profile("h100-pcie"), load_profile("h200")

    assert gh200.link.kind is LinkKind.NVLINK_C2C
    assert gh200.link.h2d_bandwidth.value == 450e9
    assert gh200.link.h2d_bandwidth.basis is Basis.STATED
    assert gh200.gpu.bf16_dense_flops.value == 989e12
    assert gh200.network.gpus_per_node.value == 4
    assert gh200.network.inter_node is not None
    assert gh200.network.inter_node.bandwidth.value == 200e9 / 8  # 200 Gb/s per superchip
    assert gh200.host.cpu_cores.value == 72

    assert gb10.link.kind is LinkKind.UNIFIED and gb10.shares_memory
    assert gb10.gpu.memory_bandwidth.value == gb10.host.memory_bandwidth.value == 273e9
    assert gb10.network.gpus_per_node.value == 1 and gb10.network.intra_node is None

    assert sxm.gpu.memory_bandwidth.value == 3.35e12 and h200.gpu.memory_bandwidth.value == 4.8e12
    assert pcie.gpu.bf16_dense_flops.value == 756e12 and pcie.gpu.memory_bandwidth.value == 2.0e12
    assert pcie.gpu.bf16_dense_flops.basis is Basis.STATED
    for p in (sxm, pcie, h200):
        assert p.link.kind is LinkKind.PCIE and not p.shares_memory


@pytest.mark.parametrize(
    ("name", "path"),
    [
        # HARDWARE.md marks these [I]; the profiles must say so in their data.
        ("gb10", "gpu.bf16_dense_flops"),
        ("gb10", "nvme.read_bandwidth"),
        ("gb10", "nvme.write_bandwidth"),
        ("gh200", "host.cpu_fp64_flops"),
        ("h100-sxm", "link.h2d_bandwidth"),  # ≈ 64 GB/s per direction [I]
        ("h200", "link.d2h_bandwidth"),
        ("h100-sxm", "nvme.read_bandwidth"),
    ],
)
def test_estimates_are_marked_as_assumptions(name: str, path: str) -> None:
    assert path in load_profile(name).assumptions()


# ---------------------------------------------------------------------------------------
# Validation


def edit(text: str, table: str, key: str, line: str | None) -> str:
    """Replace (or, with None, delete) ``key = ...`` inside ``[table]``."""
    lines = text.split("\n")
    start = lines.index(f"[{table}]")
    for i in range(start + 1, len(lines)):
        if lines[i].startswith("["):
            break
        if re.match(rf"{re.escape(key)}\s*=", lines[i]):
            if line is None:
                del lines[i]
            else:
                lines[i] = line
            return "\n".join(lines)
    raise AssertionError(f"{key} not in [{table}]")


def problem(text: str, source: str = "gh200.toml") -> str:
    with pytest.raises(ProfileError) as info:
        loads_profile(text, source)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{source}: ")
    return message


@pytest.mark.parametrize(
    ("table", "key", "line", "expected"),
    [
        (
            "link.h2d_bandwidth",
            "value",
            "value = -1",
            "gh200.toml: link.h2d_bandwidth: expected a positive number of B/s, got -1",
        ),
        (
            "link.h2d_bandwidth",
            "value",
            "value = 0.0",
            "gh200.toml: link.h2d_bandwidth: expected a positive number of B/s, got 0.0",
        ),
        (
            "gpu.memory_bytes",
            "value",
            'value = "96 GB"',
            "gh200.toml: gpu.memory_bytes: expected a positive number of B, got '96 GB'",
        ),
        (
            "gpu.memory_bytes",
            "value",
            "value = nan",
            "gh200.toml: gpu.memory_bytes: expected a positive number of B, got nan",
        ),
        (
            "gpu.memory_bytes",
            "value",
            "value = true",
            "gh200.toml: gpu.memory_bytes: expected a positive number of B, got true",
        ),
        (
            "gpu.memory_bytes",
            "value",
            None,
            "gh200.toml: gpu.memory_bytes: expected a positive number of B, got nothing",
        ),
        (
            "host.cpu_cores",
            "value",
            "value = 7.5",
            "gh200.toml: host.cpu_cores: expected a positive integer count, got 7.5",
        ),
        (
            "link",
            "kind",
            'kind = "pci"',
            "gh200.toml: link.kind: expected one of pcie, nvlink-c2c, unified, got 'pci'",
        ),
        (
            "link",
            "kind",
            None,
            "gh200.toml: link.kind: expected one of pcie, nvlink-c2c, unified, got nothing",
        ),
        (
            "gpu.memory_bandwidth",
            "unit",
            'unit = "GB/s"',
            "gh200.toml: gpu.memory_bandwidth.unit: expected 'B/s', got 'GB/s'",
        ),
        (
            "gpu.memory_bandwidth",
            "basis",
            'basis = "guess"',
            "gh200.toml: gpu.memory_bandwidth.basis: expected one of stated, assumed, measured, got 'guess'",
        ),
        (
            "gpu.memory_bandwidth",
            "source",
            'source = "  "',
            "gh200.toml: gpu.memory_bandwidth.source: expected a non-empty string (a URL or a rationale), got '  '",
        ),
        (
            "gpu",
            "model",
            "model = 3",
            "gh200.toml: gpu.model: expected a non-empty string, got 3",
        ),
    ],
)
def test_a_bad_field_is_named_with_what_was_expected(
    table: str, key: str, line: str | None, expected: str
) -> None:
    assert problem(edit(GH200_TEXT, table, key, line)) == expected


def test_a_missing_quantity_is_named() -> None:
    text = GH200_TEXT.replace("[link.d2h_bandwidth]", "[link.unused_table]")
    assert problem(text) == (
        "gh200.toml: link.unused_table: unknown key; "
        "expected one of kind, h2d_bandwidth, d2h_bandwidth, latency"
    )
    text = re.sub(r"\[link\.d2h_bandwidth\]\n(.+\n)+?\n", "", GH200_TEXT)
    assert problem(text) == (
        "gh200.toml: link.d2h_bandwidth: missing; "
        "expected a positive number of B/s with its unit, basis and source"
    )


def test_unknown_keys_are_named() -> None:
    text = edit(GH200_TEXT, "gpu", "model", 'model = "x"\nbf16_flops = 1')
    assert problem(text).startswith(
        "gh200.toml: gpu.bf16_flops: unknown key; expected one of model,"
    )
    text = edit(GH200_TEXT, "link.latency", "value", "value = 2e-6\nvalu = 3")
    assert problem(text) == (
        "gh200.toml: link.latency.valu: unknown key; expected one of value, unit, basis, source, note"
    )
    text = "colour = 'blue'\n" + GH200_TEXT
    assert problem(text).startswith(
        "gh200.toml: colour: unknown key; expected one of format_version,"
    )


def test_structural_problems_are_named() -> None:
    assert problem(GH200_TEXT.replace("format_version = 1", "format_version = 2")) == (
        "gh200.toml: format_version: expected 1, got 2"
    )
    assert problem(GH200_TEXT.replace("[link.latency]\n", "[link.latency]\n=")).startswith(
        "gh200.toml: not valid TOML: "
    )
    text = edit(GH200_TEXT, "network.gpus_per_node", "value", "value = 1")
    assert (
        problem(text) == "gh200.toml: network.intra_node: expected no table when gpus_per_node is 1"
    )
    gb10 = (PROFILES_DIR / "gb10.toml").read_text(encoding="utf-8")
    text = edit(gb10, "network.gpus_per_node", "value", "value = 2")
    assert problem(text, "gb10.toml") == (
        "gb10.toml: network.intra_node: missing; expected a table when gpus_per_node is 2"
    )
    text = GH200_TEXT.replace("[nvme]\n", "nvme = 3\n[nvme_gone]\n")
    assert problem(text).startswith("gh200.toml: ")


def test_names_and_paths_resolve(tmp_path: Path) -> None:
    with pytest.raises(
        ProfileError, match=r"unknown hardware profile 'h300'; known profiles: gb10, gh200"
    ):
        load_profile("h300")
    with pytest.raises(ProfileError, match="cannot read the file"):
        load_profile(tmp_path / "absent.toml")
    bad = tmp_path / "mine.toml"
    bad.write_text(GH200_TEXT.replace("value = 450e9", "value = -450e9", 1), encoding="utf-8")
    with pytest.raises(ProfileError) as info:
        load_profile(bad)
    assert str(info.value) == (
        f"{bad}: link.h2d_bandwidth: expected a positive number of B/s, got -450000000000.0"
    )


# ---------------------------------------------------------------------------------------
# Properties

CORRUPTING_CHARS = st.sampled_from([*"=[]{}\"'.,-+_#\n \tex0123456789", "\\", "é", "inf"])


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    op=st.sampled_from(["delete", "insert", "replace"]),
)
def test_random_corruption_loads_or_raises_profile_error(data: st.DataObject, op: str) -> None:
    text = GH200_TEXT
    start = data.draw(st.integers(0, len(text) - 1), label="start")
    if op == "delete":
        end = data.draw(st.integers(start + 1, min(len(text), start + 40)), label="end")
        corrupted = text[:start] + text[end:]
    else:
        insert = data.draw(st.lists(CORRUPTING_CHARS, min_size=1, max_size=6).map("".join))
        skip = 1 if op == "replace" else 0
        corrupted = text[:start] + insert + text[start + skip :]
    try:
        profile = loads_profile(corrupted, "gh200.toml")
    except ProfileError as exc:
        message = str(exc)
        assert message.startswith("gh200.toml: ") and "\n" not in message
    else:
        assert isinstance(profile, HardwareProfile)


def toml_float(x: float) -> str:
    return repr(x) if math.isfinite(x) else {"nan": "nan", "inf": "inf", "-inf": "-inf"}[repr(x)]


TOML_SCALARS = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.floats().map(toml_float),
    st.sampled_from(["true", "false", '"fast"', "[]", "{}", "1979-05-27"]),
)
QUANTITY_TABLES = sorted(load_profile("gh200").quantities())


@settings(max_examples=150, deadline=None)
@given(table=st.sampled_from(QUANTITY_TABLES), raw=TOML_SCALARS)
def test_a_value_loads_exactly_when_it_is_valid(table: str, raw: str) -> None:
    text = edit(GH200_TEXT, table, "value", f"value = {raw}")
    is_count = table in ("host.cpu_cores", "network.gpus_per_node")
    try:
        number = int(raw) if is_count else float(raw)
    except ValueError:
        number = None
    valid = number is not None and math.isfinite(number) and number > 0
    if valid and table == "network.gpus_per_node":
        valid = number != 1  # gh200 has an intra-node network
    if valid and table.startswith("training."):
        valid = number <= 1  # an efficiency: a fraction of its roof
    if valid:
        assert loads_profile(text).quantities()[table].value == number
    else:
        problem(text)


@settings(max_examples=60, deadline=None)
@given(
    source=st.text(min_size=0, max_size=30),
    note=st.text(max_size=30),
    value=st.floats(min_value=1e-300, max_value=1e300, allow_nan=False, allow_infinity=False),
    model=st.text(min_size=1, max_size=20).filter(lambda s: s.strip() != ""),
)
def test_round_trip_keeps_any_text_and_any_positive_number(
    source: str, note: str, value: float, model: str
) -> None:
    base = load_profile("gh200")
    latency = Quantity(value=value, unit="s", source="x" + source, basis=Basis.MEASURED, note=note)
    profile = dataclasses.replace(
        base,
        gpu=dataclasses.replace(base.gpu, model=model),
        link=dataclasses.replace(base.link, latency=latency),
    )
    assert loads_profile(dump_profile(profile)) == profile
