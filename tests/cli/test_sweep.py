"""Issue 22 item 4: a recipe sweep (`sweep: {recipe.lr: [...]}`) runs as a matrix axis and every
listing shows the swept field: `run --dry-run`, `status SPEC`, `report SPEC` (each value its own
row, the field named). Trains for real: vit_micro on digits, 1 epoch of 3 steps, `--executor debug`.
"""

from __future__ import annotations

from pathlib import Path

from .conftest import invoke, write_spec

LRS = ("0.0005", "0.002")


def _sweep_spec(tmp_path: Path) -> Path:
    return write_spec(tmp_path / "sweep.yaml", methods=["default"], seeds=[0],
                      sweep={"recipe.lr": [5e-4, 2e-3]})


def test_sweep_runs_and_reports_each_value_as_its_own_row(tmp_path: Path) -> None:
    spec = _sweep_spec(tmp_path)
    res = invoke("run", spec, "--dry-run", "--set", "recipe.epochs=1")
    assert res.exit_code == 0, res.output
    header, *rows = res.output.splitlines()
    assert header.split() == ["key", "model", "method", "dataset", "seed", "recipe.lr", "state", "GFLOP", "GPU-h"]
    assert sorted(r.split()[5] for r in rows[:2]) == sorted(LRS) and "2 jobs: 2 new" in res.output

    res = invoke("run", spec, "--executor", "debug", "--set", "recipe.epochs=1")
    assert res.exit_code == 0, res.output

    res = invoke("status", spec, "--all", "--set", "recipe.epochs=1")
    assert res.exit_code == 0, res.output
    assert "2 finished" in res.output and "recipe.lr" in res.output
    assert all(lr in res.output for lr in LRS), res.output

    res = invoke("report", spec, "--set", "recipe.epochs=1", "--format", "markdown")
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("|")]
    assert "lr" in [c.strip() for c in lines[0].strip("|").split("|")], lines[0]
    body = lines[2:]
    assert len(body) == 2, lines  # one row per swept value
    assert sorted(lr for lr in LRS if any(lr in row for row in body)) == sorted(LRS), body


def test_only_selects_along_the_sweep_axis(tmp_path: Path) -> None:
    spec = _sweep_spec(tmp_path)
    res = invoke("run", spec, "--dry-run", "--only", "recipe.lr=2e-3")
    assert res.exit_code == 0, res.output
    assert "1 jobs: 1 new" in res.output and "0.002" in res.output and "0.0005" not in res.output


def test_bad_sweep_is_one_line_exit_2(tmp_path: Path) -> None:
    for sweep, words in (({"recipe.lrr": [1e-3]}, "sweep.recipe.lrr: unknown recipe field 'lrr'"),
                         ({"recipe.lr": []}, "sweep.recipe.lr: empty sweep"),
                         ({"recipe.lr": [1e-3, -1]}, "sweep.recipe.lr[1]: Input should be greater than 0"),
                         ({"img_size": [32]}, "sweep.img_size: 'img_size': a swept field is recipe.FIELD")):
        spec = write_spec(tmp_path / "bad.yaml", sweep=sweep)
        res = invoke("run", spec, "--dry-run")
        assert res.exit_code == 2, res.output
        assert words in res.output and len(res.output.strip().splitlines()) == 1, res.output
    res = invoke("run", _sweep_spec(tmp_path), "--dry-run", "--only", "recipe.lr=fast")
    assert res.exit_code == 2 and "--only" in res.output and "valid number" in res.output, res.output


def test_set_adds_a_sweep_axis_to_any_spec(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "plain.yaml", methods=["default", "mpvg"], seeds=[0])
    for override in ("sweep.recipe.lr=[5e-4, 2e-3]", "sweep={recipe.lr: [5e-4, 2e-3]}"):
        res = invoke("run", spec, "--dry-run", "--set", override)
        assert res.exit_code == 0, res.output
        assert "4 jobs: 4 new" in res.output and all(lr in res.output for lr in LRS), res.output
