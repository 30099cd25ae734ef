"""`report --baseline`: paired per-seed differences with their 95% interval and the paired t-test,
in every format; the paper's tables gain them from two seeds on; the quickstart's pivot at 80
columns keeps each cell on one line."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from scipy import stats

from mpvgbench.config import TrainConfig
from mpvgbench.store import Store

from .conftest import fabricate_run, invoke, micro_config

# final top-1 per seed; mpvg - default = (10, 12, 12), pvg - default = (1, 1, 1)
VALUES = {"default": [50.0, 52.0, 54.0], "gap": [49.0, 55.0, 52.0], "lape": [58.0, 60.0, 61.0],
          "pvg": [51.0, 53.0, 55.0], "mpvg": [60.0, 64.0, 66.0]}


@pytest.fixture
def stored(tmp_path: Path) -> Path:
    with Store(tmp_path / "results.db") as store:
        for method, tops in VALUES.items():
            for seed, top1 in enumerate(tops):
                fabricate_run(store, tmp_path / "runs", micro_config(seed, method), top1=top1, spec_name="q")
    return tmp_path / "results.db"


def test_baseline_in_every_format(stored: Path) -> None:
    diffs = [10.0, 12.0, 12.0]
    low, high = stats.t.interval(0.95, 2, loc=34 / 3, scale=stats.sem(diffs))
    p_value = stats.ttest_rel(VALUES["mpvg"], VALUES["default"]).pvalue
    res = invoke("report", "--baseline", "default", "--format", "json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["baseline"] == "default"
    rows = {row["Method"]: row for row in doc["rows"]}
    mpvg = rows["mpvg"]["Δ vs default [95% CI]"]
    assert mpvg["diff"] == pytest.approx(34 / 3) and mpvg["test"] == "paired t-test"
    assert (mpvg["ci_low"], mpvg["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert mpvg["p"] == pytest.approx(p_value) and mpvg["excludes_zero"] is True
    assert [(r["seed"], r["diff"]) for r in mpvg["per_seed"]] == [(0, 10.0), (1, 12.0), (2, 12.0)]
    assert rows["default"]["Δ vs default [95% CI]"] == "baseline"
    pvg = rows["pvg"]["Δ vs default [95% CI]"]  # identical differences: zero width, no t statistic
    assert pvg["ci_low"] == pvg["ci_high"] == pytest.approx(1.0) and pvg["p"] is None

    res = invoke("report", "--baseline", "default", "--format", "markdown")
    line = next(x for x in res.output.splitlines() if "| mpvg |" in x)
    assert f"+11.33 [{low:+.2f}, {high:+.2f}]* | {p_value:.3f} |" in line
    gap = next(x for x in res.output.splitlines() if "| gap |" in x)
    assert "]*" not in gap  # the interval holds 0: no mark
    assert "paired t-test (scipy.stats.ttest_rel)" in res.output

    res = invoke("report", "--baseline", "default", "--format", "csv")
    per_seed = [r for r in csv.DictReader(io.StringIO(res.output)) if r["Method"] == "mpvg"]
    assert [(r["seed"], r["Δ vs default seed value"], r["Δ vs default seed baseline"]) for r in per_seed] == [
        ("0", "60.0", "50.0"), ("1", "64.0", "52.0"), ("2", "66.0", "54.0")]
    assert [float(r["Δ vs default diff"]) for r in per_seed] == [pytest.approx(34 / 3)] * 3


def test_baseline_errors(stored: Path) -> None:
    res = invoke("report", "--baseline", "lape_gap")
    assert res.exit_code == 2 and "no finished run of that method" in res.output
    res = invoke("report", "--baseline", "nonsense")
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1


def test_paper_table_gains_the_difference_from_two_seeds(tmp_path: Path) -> None:
    with Store(tmp_path / "results.db") as store:
        for method, tops in (("default", [72.0, 72.4]), ("mpvg", [73.4, 73.6])):
            for seed, top1 in enumerate(tops):
                config = TrainConfig(model="deit_tiny", method=method, dataset="imagenet", img_size=224,
                                     num_classes=1000, seed=seed)
                fabricate_run(store, tmp_path / "runs", config, top1=top1)
    res = invoke("report", "--table", "1", "--format", "json")
    doc = json.loads(res.output)
    row = next(r for r in doc["rows"] if r["Model"] == "DeiT-Ti" and r["Method"] == "MPVG")
    paired = row["vs default [95% CI]"]
    assert paired["diff"] == pytest.approx(1.3) and paired["n"] == 2
    # d = (1.4, 1.2): sd 0.1414, se 0.1, half width t_{0.975,1} * 0.1 = 1.2706
    assert paired["ci_low"] == pytest.approx(1.3 - 12.706204736174698 * 0.1)
    assert paired["excludes_zero"] is True and row["Δ"] == pytest.approx(73.5 - 73.51)
    assert next(r for r in doc["rows"] if r["Method"] == "Default" and r["Model"] == "DeiT-Ti")[
        "vs default [95% CI]"] == "baseline"
    # one seed per cell: the table stays as the paper prints it, unless --baseline asks
    one = invoke("report", "--table", "2", "--format", "json")
    assert not any("vs default" in c["name"] for c in json.loads(one.output)["columns"])


def test_quickstart_pivot_one_line_per_cell_at_80_columns(stored: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 22 item 7: five methods x three seeds used to wrap each cell onto three lines."""
    monkeypatch.setenv("COLUMNS", "80")
    for args in ([], ["--baseline", "default"]):
        res = invoke("report", *args)
        assert res.exit_code == 0, res.output
        lines = res.output.splitlines()
        assert max(map(len, lines)) <= 80 and "…" not in res.output, res.output
        if not args:
            (row,) = [x for x in lines if "52.00 ± 2.00" in x]  # default: one line holds every method
            assert all(text in row for text in ("52.00 ± 2.00", "52.00 ± 3.00", "59.67 ± 1.53", "63.33 ± 3.06"))
            assert "(n=3)" in res.output  # once per column, in its header
        else:
            (row,) = [x for x in lines if x.strip("│┃ ").startswith("mpvg")]
            assert "+11.33 [" in row and "]*" in row
