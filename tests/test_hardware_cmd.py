"""``asteria-bench hardware list | show`` and ``--version``."""

from __future__ import annotations

import json
import shutil
from importlib.metadata import version
from pathlib import Path

import pytest
from cli_runner import run_cli

from asteria_bench.hardware_cmd import si
from simulator.profiles import PROFILES_DIR, list_profiles, load_profile


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"asteria-bench {version('asteria-bench')}"


def test_list_names_every_profile_with_its_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["hardware", "list"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 100 and "…" not in out
    for name in list_profiles():
        assert f"\n{name} " in out
    assert run_cli(["hardware", "list", "--format", "json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert set(rows) == set(list_profiles())
    gh200 = load_profile("gh200")
    assert rows["gh200"]["bf16_flops"] == gh200.gpu.bf16_dense_flops.value
    assert rows["gh200"]["link"] == "nvlink-c2c"
    assumed, total = rows["gh200"]["assumed"].split("/")
    assert int(assumed) == len(gh200.assumptions()) and int(total) == len(gh200.quantities())


def test_show_prints_every_number_with_its_basis_and_source(
    capsys: pytest.CaptureFixture[str],
) -> None:
    profile = load_profile("h100-sxm")
    assert run_cli(["hardware", "show", "h100-sxm", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["field"] for r in rows] == list(profile.quantities())
    for row, q in zip(rows, profile.quantities().values(), strict=True):
        assert (row["value"], row["unit"], row["basis"], row["source"]) == (
            q.value,
            q.unit,
            q.basis.value,
            q.source,
        )
    assert run_cli(["hardware", "show", "h100-sxm"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 100 and "…" not in out
    assert "gpu.bf16_dense_flops" in out and "989 TFLOP/s" in out


def test_show_reads_a_profile_file_and_list_shows_a_local_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "profiles"
    shutil.copytree(PROFILES_DIR, folder)
    text = (folder / "h200.toml").read_text().replace('name = "h200"', 'name = "local"')
    (folder / "local.toml").write_text(text)
    (folder / "broken.toml").write_text("format_version = 1\nname = 3\n")
    monkeypatch.setattr("simulator.profiles.PROFILES_DIR", folder)
    monkeypatch.setattr("asteria_bench.hardware_cmd.PROFILES_DIR", folder)
    assert run_cli(["hardware", "list"]) == 0
    out = capsys.readouterr().out
    assert "\nlocal " in out
    assert "not loaded: broken.toml:" in out  # named with its error; the others still listed
    assert run_cli(["hardware", "show", str(folder / "local.toml")]) == 0
    assert "local: NVIDIA H200" in capsys.readouterr().out


def test_an_unknown_profile_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["hardware", "show", "h900"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("asteria-bench: error: NAME: unknown hardware")
    assert run_cli(["hardware", "show"]) == 2
    assert run_cli(["hardware", "list", "--format", "yaml"]) == 2
    assert "--format" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (989e12, "FLOP/s", "989 TFLOP/s"),
        (141e9, "B", "141 GB"),
        (4.8e12, "B/s", "4.8 TB/s"),
        (2e-6, "s", "2 µs"),
        (0.012, "s", "12 ms"),
        (72, "count", "72"),
        (512, "B", "512 B"),
    ],
)
def test_si_prefixes(value: float, unit: str, text: str) -> None:
    assert si(value, unit) == text
