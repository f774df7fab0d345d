"""The README's shell examples run as written, in order, in a fresh folder, at small sizes.

Which lines run (the rule the README follows):

- the lines of ```` ```bash ```` blocks, a trailing ``\\`` joining the next
  line, a ``#`` comment dropped; ```` ```text ```` blocks are synopses and
  are not run;
- a line is split at `` && ``; a part starting with ``asteria-bench`` runs
  (in-process), ``mkdir -p DIR`` makes DIR, and parts starting with ``pip``,
  ``python``, ``ruff``, ``mypy`` or ``torchrun`` are not run (installing,
  developing, several processes: ``tests/test_distributed.py`` runs those);
  any other command fails the test, so the README stays runnable;
- a line whose comment starts with ``not run:`` is skipped, the comment saying
  why (a file of the reader's own);
- every example runs with options appended that make it small (later options
  win): a tiny model and a few steps for ``run``, ``--steps 8`` for
  ``simulate`` (``--tune-steps 6`` with ``--tune``), ``--quick --no-disk``
  for ``profile``.

The folder holds a copy of ``tests/data`` (the public profiler trace an
example imports); everything else an example reads must be written by an
example above it, so run names that no earlier example creates fail here.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from cli_runner import run_cli

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
NOT_RUN = ("pip", "python", "ruff", "mypy", "torchrun")
TINY_RUN = ["--steps", "6", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--context", "16",
            "--batch-size", "4", "--eval-every", "3", "--eval-batches", "1",
            "--corpus-bytes", "20000", "--torch-threads", "1", "--quiet"]  # fmt: skip


def examples(text: str) -> list[tuple[int, str]]:
    """(line number, command) for every line of the README's bash blocks, continuations joined."""
    found: list[tuple[int, str]] = []
    in_bash = False
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), start=1):
        fence = line.strip()
        if fence.startswith("```"):
            in_bash = fence == "```bash" and not in_bash
            continue
        if not in_bash:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.strip()[:-1].strip() + " "
            continue
        found.append((start, pending + line.strip()))
        pending = ""
    return found


def split_comment(command: str) -> tuple[str, str]:
    """The command and its trailing comment (a ``#`` that starts a word)."""
    match = re.search(r"(^|\s)#", command)
    if match is None:
        return command.strip(), ""
    return command[: match.start()].strip(), command[match.end() :].strip()


def small(argv: list[str]) -> list[str]:
    """``argv`` (after ``asteria-bench``) with the options that keep it quick."""
    if not argv or "--help" in argv:
        return argv
    command = argv[0]
    if command == "run":
        return [*argv, *TINY_RUN]
    if command == "simulate" and "--scenario" not in argv:
        return [*argv, "--tune-steps", "6"] if "--tune" in argv else [*argv, "--steps", "8"]
    if command == "profile":
        return [*argv, "--quick", "--no-disk"]
    return argv


def test_the_rule_reads_blocks_continuations_and_comments() -> None:
    text = "\n".join(
        [
            "```bash",
            "asteria-bench run --out runs/a   # the first",
            "asteria-bench simulate --model 1b \\",
            "    --steps 100",
            "```",
            "```text",
            "asteria-bench run --optimizer soap|adamw",
            "```",
        ]
    )
    assert examples(text) == [
        (2, "asteria-bench run --out runs/a   # the first"),
        (3, "asteria-bench simulate --model 1b --steps 100"),
    ]
    assert split_comment("asteria-bench run   # not run: yours") == (
        "asteria-bench run",
        "not run: yours",
    )
    assert small(["simulate", "--steps", "100"])[-2:] == ["--steps", "8"]


@pytest.mark.slow
def test_the_readme_examples_run_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(ROOT / "tests" / "data", tmp_path / "tests" / "data")
    monkeypatch.chdir(tmp_path)
    ran = 0
    for number, line in examples(README.read_text(encoding="utf-8")):
        command, comment = split_comment(line)
        if not command or comment.startswith("not run:"):
            continue
        for part in command.split(" && "):
            argv = shlex.split(part)
            if argv[0] in NOT_RUN:
                continue
            if argv[:2] == ["mkdir", "-p"]:
                for folder in argv[2:]:
                    Path(folder).mkdir(parents=True, exist_ok=True)
                continue
            assert argv[0] == "asteria-bench", f"README line {number}: cannot run {part!r}"
            code = run_cli(small(argv[1:]))
            captured = capsys.readouterr()
            assert code == 0, f"README line {number}: {part}\n{captured.err[-2000:]}"
            ran += 1
    assert ran >= 15  # the README keeps its examples
