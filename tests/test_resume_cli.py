"""``run --resume`` refuses what it cannot continue: one line naming the option, exit 2, nothing touched."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cli_runner import run_cli

TINY = [
    "--steps", "4", "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--context", "16",
    "--batch-size", "2", "--eval-every", "100", "--eval-batches", "1", "--torch-threads", "1", "-q",
]  # fmt: skip


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "done"
    assert run_cli(["run", *TINY, "--checkpoint-every", "2", "--out", str(out)]) == 0
    return out


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_a_finished_run_has_nothing_to_resume(
    finished: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(["run", "--resume", str(finished)]) == 2
    assert "is a finished run" in one_line(capsys)


def test_a_folder_that_is_not_an_unfinished_run_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert run_cli(["run", "--resume", str(tmp_path / "mine")]) == 2
    assert "not an unfinished run" in one_line(capsys)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def unfinished_copy(finished: Path, tmp_path: Path) -> Path:
    """A finished run turned back into an unfinished one (its marker restored)."""
    staging = tmp_path / "run.incomplete"
    shutil.copytree(finished, staging)
    (staging / "INCOMPLETE").write_text("killed\n")
    return staging


def test_options_beside_resume_are_refused_by_name(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    staging = unfinished_copy(finished, tmp_path)
    assert run_cli(["run", "--resume", str(staging), "--lr", "0.1"]) == 2
    assert "drop --lr" in one_line(capsys)
    assert run_cli(["run", "--resume", str(staging), "--out", str(tmp_path / "x")]) == 2
    assert "drop --out" in one_line(capsys)


def test_no_checkpoint_or_no_config_is_one_line_and_the_run_stays(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    staging = unfinished_copy(finished, tmp_path)
    shutil.rmtree(staging / "checkpoints")
    assert run_cli(["run", "--resume", str(staging)]) == 2
    assert "holds no checkpoint to resume from" in one_line(capsys)
    assert (staging / "config.json").is_file() and (staging / "INCOMPLETE").is_file()
    (staging / "config.json").unlink()
    assert run_cli(["run", "--resume", str(staging), "-q"]) == 2
    assert "config.json is missing" in one_line(capsys)


def test_a_finished_run_in_the_way_is_never_replaced(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    staging = unfinished_copy(finished, tmp_path)
    shutil.copytree(finished, tmp_path / "run")
    assert run_cli(["run", "--resume", str(staging)]) == 2
    assert "already exists" in one_line(capsys)


def test_a_resumed_finished_copy_continues_from_its_last_checkpoint(
    finished: Path, tmp_path: Path
) -> None:
    staging = unfinished_copy(finished, tmp_path)
    assert run_cli(["run", "--resume", str(staging)]) == 0
    assert (tmp_path / "run" / "summary.md").is_file() and not staging.exists()


def test_a_run_puts_the_signal_handlers_back(finished: Path, tmp_path: Path) -> None:
    """In-process callers (a notebook, these tests) keep their own SIGTERM / SIGINT handling."""
    import signal

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert run_cli(["run", *TINY, "--out", str(tmp_path / "again")]) == 0
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
