"""`mpvgbench`: the command line, the only place that wires spec, matrix, executor, store and report.

Each command lives in a submodule that adds itself to the click group on import.
"""

from __future__ import annotations

from mpvgbench.cli import analyze, compare, ops, recipes, report, run, status  # noqa: F401 - registers the commands
from mpvgbench.cli.common import UserError, cli

__all__ = ["UserError", "cli", "main"]


def main() -> None:
    cli(prog_name="mpvgbench")
