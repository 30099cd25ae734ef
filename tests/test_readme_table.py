"""scripts/check_readme_table.py: the README's quickstart table against the quickstart's output."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_readme_table", ROOT / "scripts" / "check_readme_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses/annotations resolve through sys.modules
    spec.loader.exec_module(module)
    return module


checker = _load_checker()

README = """# x

## What the quickstart shows

Some text:

| Dataset | Model | default | mpvg |
|:---|:---|---:|---:|
| digits | vit_micro | 80.28 ± 7.26 (n=3) | 97.04 ± 1.31 (n=3) |

| another | table |
"""

PRODUCED = """**All finished runs: final top-1 (%), mean ± std (n seeds) (spec quickstart)**

| Dataset | Model | default | mpvg |
|:---|:---|---:|---:|
| digits | vit_micro | 80.28 ± 7.26 (n=3) | 97.04 ± 1.31 (n=3) |

- a note
"""


def test_tables_are_read_from_the_readme_section_and_the_report() -> None:
    expected = checker.readme_table(README)
    assert expected == checker.table_lines(PRODUCED)
    assert len(expected) == 3 and expected[0] == "| Dataset | Model | default | mpvg |"
    assert checker.differences(expected, checker.table_lines(PRODUCED)) == []


def test_a_changed_number_is_a_difference_unless_tolerated() -> None:
    expected = checker.readme_table(README)
    changed = checker.table_lines(PRODUCED.replace("97.04 ± 1.31", "97.05 ± 1.31"))
    (problem,) = checker.differences(expected, changed)
    assert problem.startswith("line 3: README") and "97.05" in problem
    assert checker.differences(expected, changed, tolerance=0.02) == []
    other_n = checker.table_lines(PRODUCED.replace("97.04 ± 1.31 (n=3)", "97.04 ± 1.31 (n=2)"))
    assert checker.differences(expected, other_n, tolerance=1.0) != []
    assert checker.differences(expected, expected[:2]) == ["3 table lines in the README, 2 produced"]


def test_main_with_a_given_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme, table = tmp_path / "README.md", tmp_path / "t.md"
    readme.write_text(README, encoding="utf-8")
    table.write_text(PRODUCED, encoding="utf-8")
    assert checker.main(["--readme", str(readme), "--table", str(table)]) == 0
    table.write_text(PRODUCED.replace("80.28", "81.85"), encoding="utf-8")
    assert checker.main(["--readme", str(readme), "--table", str(table)]) == 1
    assert "81.85 ± 7.26" in capsys.readouterr().out


def test_the_real_readme_has_a_quickstart_table() -> None:
    lines = checker.readme_table((ROOT / "README.md").read_text(encoding="utf-8"))
    assert lines[0].startswith("| Dataset | Model |") and len(lines) >= 3


@pytest.mark.slow
def test_readme_table_is_what_the_quickstart_produces() -> None:
    """15 real CPU runs (~2-4 min on 2 cores): the README's numbers are reproducible."""
    assert checker.main([]) == 0


@pytest.mark.slow
def test_run_quickstart_runs_a_spec_and_returns_its_table(tmp_path: Path) -> None:
    """The checker's plumbing on a one-job spec (a few training steps)."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text("name: tiny\nmodels: [vit_micro]\nmethods: [mpvg]\ndatasets: [digits]\nseeds: [0]\n"
                    "recipe: {epochs: 1, max_steps_per_epoch: 2, eval_max_batches: 1}\n"
                    "data: {num_workers: 0}\nexecutor: {name: local, workers: 1, device: cpu}\n")
    lines = checker.table_lines(checker.run_quickstart(spec))
    assert lines[0] == "| Dataset | Model | mpvg |" and lines[2].startswith("| digits | vit_micro | ")
    assert lines[2].endswith("(n=1) |")
