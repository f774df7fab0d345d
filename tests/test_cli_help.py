"""Every command is found from ``asteria-bench --help`` and shows an example in its own help."""

from __future__ import annotations

import re

import pytest
from cli_runner import run_cli


def help_of(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert run_cli([*args, "--help"]) == 0
    return capsys.readouterr().out


def commands(text: str) -> list[str]:
    block = text.split("Commands:", 1)[1].split("\n\n", 1)[0]
    return [m.group(1) for m in re.finditer(r"^  ([a-z][a-z-]*)\s", block, re.MULTILINE)]


def test_every_command_is_listed_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    root = help_of([], capsys)
    names = commands(root)
    expected = {"run", "replay", "simulate", "profile", "import-kineto", "compare", "report"}
    assert expected | {"hardware"} <= set(names)
    examples = root.split("Examples", 1)[1]
    for name in expected | {"hardware"}:
        assert f"asteria-bench {name}" in examples, name
    for name in names:
        text = help_of([name], capsys)
        if "Commands:" in text:  # a group: each of its commands has the example
            for sub in commands(text):
                assert "Example: asteria-bench" in help_of([name, sub], capsys), (name, sub)
        else:
            assert "Example: asteria-bench" in text, name
