"""No function in mpvgbench/ is longer than 80 lines (the team's rule: a function a reader
holds in their head). Read with ``ast``: a function's length is its ``def`` line to its last
line, docstring included (a click command's option decorators are declarations, not code)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mpvgbench"
MAX_LINES = 80

# Functions allowed over the limit (none; an entry that is no longer too long fails the test).
ALLOWED: tuple[str, ...] = ()


def function_lengths() -> dict[str, int]:
    lengths = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = node.lineno
                name = f"{path.relative_to(PACKAGE.parent).as_posix()}::{node.name}"
                lengths[name] = max(lengths.get(name, 0), node.end_lineno - start + 1)  # type: ignore[operator]
    return lengths


def test_no_function_is_over_80_lines() -> None:
    too_long = {name: n for name, n in function_lengths().items() if n > MAX_LINES and name not in ALLOWED}
    assert not too_long, too_long


def test_the_allow_list_holds_only_functions_still_too_long() -> None:
    lengths = function_lengths()
    stale = [name for name in ALLOWED if lengths.get(name, 0) <= MAX_LINES]
    assert not stale, f"no longer over {MAX_LINES} lines, remove from ALLOWED: {stale}"
