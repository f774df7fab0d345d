"""``asteria-bench profile`` measures this machine into a loadable profile."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_runner import run_cli

from simulator.profiles import Basis, load_profile


def test_profile_writes_a_measured_profile_that_simulates(tmp_path: Path) -> None:
    out = tmp_path / "local.toml"
    assert run_cli(["profile", "--out", str(out), "--quick", "--disk-dir", str(tmp_path)]) == 0
    profile = load_profile(out)
    quantities = profile.quantities()
    assert profile.host.cpu_fp32_flops.value > 1e6
    assert profile.nvme.read_bandwidth.basis is Basis.MEASURED
    assert profile.nvme.read_bandwidth.value > 0 and profile.nvme.write_bandwidth.value > 0
    measured = [q for q in quantities.values() if q.basis is Basis.MEASURED]
    assert len(measured) >= len(quantities) - 2  # only latencies may be assumed
    assert not list(tmp_path.glob(".asteria-probe-*")), "the disk probe file must be removed"
    assert (
        run_cli(
            [
                "simulate",
                "--hardware",
                str(out),
                "--model",
                "gpt-default",
                "--steps",
                "5",
                "--tokens-per-rank",
                "1024",
            ]
        )
        == 0
    )


def test_profile_refuses_a_folder_as_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(["profile", "--out", str(tmp_path), "--quick", "--no-disk"]) == 2
    assert "--out" in capsys.readouterr().err


def test_profile_out_is_replaced_only_with_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "local.toml"
    out.write_text("# my hand-tuned profile\n")
    assert run_cli(["profile", "--out", str(out), "--quick", "--no-disk"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "# my hand-tuned profile\n"
    assert run_cli(["profile", "--out", str(out), "--quick", "--no-disk", "--overwrite"]) == 0
    assert out.read_text() != "# my hand-tuned profile\n"
    missing = tmp_path / "no" / "such" / "p.toml"
    assert run_cli(["profile", "--out", str(missing), "--quick", "--no-disk"]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--name", " "], "--name: expected a non-empty profile name"),
        (["--disk-dir", "/proc"], "--disk-dir: cannot write a test file in /proc"),
    ],
)
def test_profile_bad_options_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    out = tmp_path / "p.toml"
    assert run_cli(["profile", "--out", str(out), "--quick", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err
    assert not out.exists()
