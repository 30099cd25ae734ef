"""`mpvgbench`: the command line, the only place that wires spec, matrix, executor, store and report.

Each command lives in a submodule that adds itself to the click group on import.
"""

from __future__ import annotations

import sys

from mpvgbench.cli import analyze, compare, db, methods, ops, recipes, report, run, status  # noqa: F401 - registers the commands
from mpvgbench.cli.common import UserError, cli, end_quietly_on_closed_pipe

__all__ = ["UserError", "cli", "main"]


def main() -> None:
    try:
        cli(prog_name="mpvgbench")
    except BrokenPipeError:  # outside a command (--help | head -1)
        end_quietly_on_closed_pipe()
    finally:
        try:  # output still buffered when the reader left: flushed here, not in a traceback at exit
            sys.stdout.flush()
        except BrokenPipeError:
            end_quietly_on_closed_pipe()
