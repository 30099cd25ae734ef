#!/usr/bin/env python3
"""Check that the README's quickstart table is what the quickstart produces.

    python scripts/check_readme_table.py                 # run the quickstart (CPU, a few minutes)
    python scripts/check_readme_table.py --table T.md    # compare with an existing report

The README's table is the first markdown table after the heading "What the quickstart shows";
the produced one is ``mpvgbench report --spec experiments/quickstart.yaml --format markdown``
of a fresh run into a temporary database and runs dir (removed afterwards), with
``OMP_NUM_THREADS=1`` like ``scripts/readme_figures.sh``: CPU runs are bit-repeatable for a fixed
thread count, so the rows must match exactly (``--tolerance`` allows a difference in the means,
for a machine whose CPU kernels round differently). Exit 0 when they match, 1 with both tables
when not; ``scripts/readme_figures.sh`` prints the table to paste.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SPEC = ROOT / "experiments" / "quickstart.yaml"
SECTION = "## What the quickstart shows"
CELL = re.compile(r"^(-?\d+(?:\.\d+)?)(?: ± (\d+(?:\.\d+)?))? \(n=(\d+)\)$")


def table_lines(markdown: str) -> list[str]:
    """The lines of the first markdown table in ``markdown`` (stripped)."""
    lines: list[str] = []
    for line in markdown.splitlines():
        if line.strip().startswith("|"):
            lines.append(line.strip())
        elif lines:
            break
    return lines


def readme_table(readme: str) -> list[str]:
    """The first table after the quickstart heading of the README."""
    at = readme.find(SECTION)
    if at < 0:
        raise SystemExit(f"README has no heading {SECTION!r}")
    lines = table_lines(readme[at:])
    if not lines:
        raise SystemExit(f"README has no table under {SECTION!r}")
    return lines


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def differences(expected: list[str], actual: list[str], tolerance: float = 0.0) -> list[str]:
    """Human-readable differences; empty when the tables match (means within ``tolerance``,
    everything else, std and n included, exactly unless ``tolerance`` > 0)."""
    if len(expected) != len(actual):
        return [f"{len(expected)} table lines in the README, {len(actual)} produced"]
    out = []
    for number, (want, got) in enumerate(zip(expected, actual), 1):
        if want == got:
            continue
        want_cells, got_cells = _cells(want), _cells(got)
        if tolerance > 0 and len(want_cells) == len(got_cells) and all(
                _close(a, b, tolerance) for a, b in zip(want_cells, got_cells)):
            continue
        out.append(f"line {number}: README {want!r} != produced {got!r}")
    return out


def _close(a: str, b: str, tolerance: float) -> bool:
    if a == b:
        return True
    ma, mb = CELL.match(a), CELL.match(b)
    if not (ma and mb) or ma.group(3) != mb.group(3):
        return False
    close = abs(float(ma.group(1)) - float(mb.group(1))) <= tolerance
    stds = [m.group(2) for m in (ma, mb)]
    return close and (None in stds) == (stds[0] is None) and (
        stds[0] is None or abs(float(stds[0]) - float(stds[1])) <= tolerance)


def run_quickstart(spec: Path = SPEC, python: str = sys.executable) -> str:
    """``spec`` (the quickstart) run into a temporary folder; returns its markdown report."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("MPVGBENCH_DB", None)
    with tempfile.TemporaryDirectory(prefix="mpvgbench-readme-") as work:
        db, runs = Path(work) / "results.db", Path(work) / "runs"
        for command in (["run", str(spec), "--runs-dir", str(runs)], ["report", "--spec", str(spec), "--format", "markdown"]):
            done = subprocess.run([python, "-m", "mpvgbench", *command, "--db", str(db)], env=env, cwd=work,
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"mpvgbench {command[0]} failed (exit {done.returncode}):\n"
                                 f"{(done.stdout + done.stderr)[-3000:]}")
        return done.stdout


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, help="markdown of `mpvgbench report --format markdown` "
                                                  "(default: run the quickstart now)")
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument("--tolerance", type=float, default=0.0, help="allowed difference of mean and std")
    args = parser.parse_args(argv)
    produced = args.table.read_text(encoding="utf-8") if args.table else run_quickstart()
    expected, actual = readme_table(args.readme.read_text(encoding="utf-8")), table_lines(produced)
    problems = differences(expected, actual, args.tolerance)
    if not problems:
        print(f"README quickstart table matches ({len(actual) - 2} row(s))")
        return 0
    print("README quickstart table differs from the quickstart's:", *problems, "", "produced:", *actual,
          "", "update it with the table that scripts/readme_figures.sh prints", sep="\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
