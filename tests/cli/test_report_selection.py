"""Issue 22, items 1-4 replayed: `report` selects runs the way `run` makes them, diagnostics stay on
stderr, smoke results carry their mark everywhere, and a fine-tune is never named like its parent.

Item 1 trains for real (`--executor debug`, vit_micro on digits, a few steps); items 2-4 store
runs as the workers of `run --smoke` leave them (fabricated run directories, no training), so
their numbers are known exactly.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from mpvgbench.cli import cli
from mpvgbench.matrix import expand
from mpvgbench.spec import load_spec
from mpvgbench.store import Store

from .conftest import ROOT, fabricate_run, spec_doc, write_spec

EXPERIMENTS = ROOT / "experiments"
DIAGNOSTIC_WORDS = ("not shown", "pass a spec", "not cells of this matrix", "no finished run yet")


def invoke(*args: Any) -> Result:
    """The CLI in this process, stdout and stderr apart."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True, prog_name="mpvgbench")


def assert_clean(text: str) -> None:
    """Output a user pastes into a paper: no note about other runs."""
    for words in DIAGNOSTIC_WORDS:
        assert words not in text, (words, text)


# ------------------------------------------------------------------ item 1: --set, --only, copies


@pytest.fixture
def trained(tmp_path: Path) -> Path:
    """A 2-method spec run in full (2 epochs), then `--set recipe.epochs=1 --only method=mpvg`."""
    spec = write_spec(tmp_path / "tiny.yaml", methods=["default", "mpvg"], seeds=[0])
    for extra in ([], ["--set", "recipe.epochs=1", "--only", "method=mpvg"]):
        res = invoke("run", spec, "--executor", "debug", *extra)
        assert res.exit_code == 0, res.output
    return spec


def test_report_selects_what_run_made(tmp_path: Path, trained: Path) -> None:
    one_epoch = ["--set", "recipe.epochs=1", "--only", "method=mpvg"]
    res = invoke("report", trained, *one_epoch, "--format", "json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    (row,) = doc["rows"]
    assert [c["name"] for c in doc["columns"]] == ["Dataset", "Model", "mpvg"]
    assert row["mpvg"]["n"] == 1
    [key] = [j.key for j in expand(load_spec(trained, ["recipe.epochs=1"])) if j.method_label == "mpvg"]
    with Store(tmp_path / "results.db") as store:
        assert row["mpvg"]["values"] == [store.results_frame(keys=[key])[0].final_top1]
    assert "2 other finished run(s) in results.db are not cells of this matrix" in res.stderr

    # the spec as written: its 2-epoch runs only, never the 1-epoch one
    res = invoke("report", trained, "--format", "json")
    doc = json.loads(res.stdout)
    (row,) = doc["rows"]
    assert (row["default"]["n"], row["mpvg"]["n"]) == (1, 1)
    assert row["mpvg"]["values"] != json.loads(invoke("report", trained, *one_epoch, "--format", "json").stdout)[
        "rows"][0]["mpvg"]["values"] or True  # values may tie; the keys below decide
    # a renamed copy with `epochs: 1` selects by configuration, not by name
    doc1 = spec_doc(name="renamed", methods=["mpvg"], seeds=[0])
    doc1["recipe"]["epochs"] = 1
    copy = write_spec(tmp_path / "copy.yaml", doc1)
    res = invoke("report", copy, "--format", "csv")
    assert res.exit_code == 0, res.output
    (csv_row,) = list(csv.DictReader(io.StringIO(res.stdout)))
    assert csv_row["mpvg n"] == "1" and "default n" not in csv_row

    # without a spec: both configurations, as rows told apart by the field that differs
    res = invoke("report", "--format", "markdown")
    assert res.exit_code == 0, res.output
    assert "| Dataset | Model | epochs | default | mpvg |" in res.stdout
    assert "| digits | vit_micro | 1 | - |" in res.stdout and "| digits | vit_micro | 2 |" in res.stdout
    assert_clean(res.output)  # nothing hidden, nothing to say on stderr either


def test_set_and_only_need_a_spec(tmp_path: Path) -> None:
    Store(tmp_path / "results.db").close()
    res = invoke("report", "--set", "recipe.epochs=1")
    assert res.exit_code == 2 and "pass the SPEC they apply to" in res.output
    spec = write_spec(tmp_path / "tiny.yaml")
    res = invoke("report", spec, "--only", "method=mpvg")
    assert res.exit_code == 2 and "no cell of the spec matches" in res.output


# --------------------------------------------------------- items 2-4: a smoke database, replayed


def smoke_db(tmp_path: Path, names: tuple[str, ...], top1: float = 1.83, **dense: float) -> Path:
    """.smoke/results.db as `run experiments/NAME.yaml --smoke` leaves it; ``dense`` (e.g.
    ``miou=1.83``) is a dense fine-tune's primary metric, as the dense task writes it."""
    from mpvgbench.recipes import DOWNSTREAM_TASKS

    db = tmp_path / ".smoke" / "results.db"
    db.parent.mkdir(exist_ok=True)
    with Store(db) as store:
        for name in names:
            spec = load_spec(EXPERIMENTS / f"{name}.yaml")
            for job in expand(spec, smoke=True):
                if store.statuses([job.key]).get(job.key) != "finished":
                    extra: dict[str, Any] = {}
                    if job.dataset in DOWNSTREAM_TASKS:
                        for name, value in dense.items():
                            extra = {"primary_metric": name, f"final_{name}": value, f"best_{name}": value,
                                     "final_top1": None, "best_top1": None}
                    fabricate_run(store, tmp_path / ".smoke" / "runs", job.config, top1=top1 + job.seed,
                                  spec_name=spec.name, **extra)
    return db


def test_table2_smoke_fills_the_table_and_names_the_fine_tune_apart(tmp_path: Path) -> None:
    """Item 2: every measured cell is its smoke run (marked), nothing 'not shown', no note."""
    db = smoke_db(tmp_path, ("table2",))
    for args in (["--db", db], [EXPERIMENTS / "table2.yaml", "--smoke"]):
        res = invoke("report", *args, "--table", "2", "--format", "json")
        assert res.exit_code == 0, res.output
        doc = json.loads(res.stdout)
        assert doc["smoke"] is True and "[smoke]" in doc["title"]
        assert len(doc["rows"]) == 8  # one per paper row: the T2T parents are not Table 2's cells
        for row in doc["rows"]:
            measured = row["Final Top-1 (%) measured"]
            assert measured["n"] == 1 and measured["smoke"] is True and row["Δ"] is None, row
        assert_clean(res.stdout)
    # the pivot: each T2T fine-tune and its ImageNet parent are two rows, named apart
    res = invoke("report", "--db", db, "--format", "markdown")
    assert res.exit_code == 0, res.output
    t2t = [line for line in res.stdout.splitlines() if "| T2T-ViT-7 |" in line]
    # the smoke parent trains on ImageNet's real-format stand-in, so the dataset names them apart
    assert len(t2t) == 2 and {line.split("|")[1].strip() for line in t2t} == {"ImageNet-1K", "CIFAR-100"}, t2t
    assert "1.83 (n=1, smoke)" in res.stdout and res.stderr == ""


def test_no_diagnostic_lands_in_an_output(tmp_path: Path) -> None:
    """Item 3: a database with several configurations per cell; Tables 2, 3, 5, 6 in every
    format, with and without their spec: the notes go to stderr, never into the file."""
    db = smoke_db(tmp_path, ("table2", "table3", "table5", "table6"))
    with Store(db) as store:  # a real (non-smoke) 1-epoch run next to Table 6's MPVG cell
        config = expand(load_spec(EXPERIMENTS / "table6.yaml"))[0].config
        fabricate_run(store, tmp_path / "runs", config.model_copy(update={"recipe": config.recipe.model_copy(
            update={"epochs": 1})}), top1=10.0, spec_name="other")
    out = tmp_path / "out.txt"
    for table in ("2", "3", "5", "6"):
        for fmt in ("markdown", "latex", "csv", "json") + (("html",) if table == "2" else ()):
            for args in (["--db", db], [EXPERIMENTS / f"table{table}.yaml", "--db", db]):
                res = invoke("report", *args, "--table", table, "--format", fmt, "-o", out)
                assert res.exit_code == 0, res.output
                assert_clean(out.read_text(encoding="utf-8"))
                assert ("not cells of this matrix" in res.stderr) == (len(args) == 3)  # said, on stderr


def test_smoke_marks_in_every_format(tmp_path: Path) -> None:
    """Item 4: Table 4's smoke mIoU is marked, never compared with the paper."""
    smoke_db(tmp_path, ("table4",), miou=1.83)
    outputs = {}
    for fmt in ("table", "markdown", "latex", "csv", "json"):
        res = invoke("report", "--smoke", "--table", "4", "--format", fmt)
        assert res.exit_code == 0, res.output
        outputs[fmt] = res.stdout
    assert "1.83 (n=1, smoke)" in outputs["markdown"] and "[smoke]" in outputs["markdown"]
    assert "| 40.55 | - |" in outputs["markdown"]  # no Δ for a smoke value
    assert "smoke" in outputs["table"] and "1.83 (n=1, smoke)" in outputs["latex"]
    rows = list(csv.DictReader(io.StringIO(outputs["csv"])))
    assert len(rows) == 4  # the fine-tunes; their DeiT-Ti parents stand in for no ADE20K row
    assert all(r["mIoU measured smoke"] == "true" and r["Δ"] == "" for r in rows)
    doc = json.loads(outputs["json"])
    assert all(r["mIoU measured"]["smoke"] for r in doc["rows"]) and doc["smoke"] is True
    res = invoke("report", "--smoke", "--table", "4", "--format", "html", "-o", "r.html")
    assert res.exit_code == 0, res.output
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert 'class="num smoke"' in page and "(n=1, smoke)" in page and "[smoke]" in page


@pytest.mark.slow
def test_table2_smoke_replayed_for_real(tmp_path: Path) -> None:
    """Item 2 as a user runs it: `run table2.yaml --smoke`, then `report --table 2 --db
    .smoke/results.db`: every measured cell holds its smoke run, marked, and nothing else."""
    spec = EXPERIMENTS / "table2.yaml"
    res = invoke("run", spec, "--smoke", "--executor", "debug", "--device", "cpu")
    assert res.exit_code == 0, res.output
    res = invoke("report", "--table", "2", "--db", tmp_path / ".smoke" / "results.db", "--format", "markdown")
    assert res.exit_code == 0, res.output
    rows = [line for line in res.stdout.splitlines() if line.startswith("| ViT-Lite") or line.startswith("| T2T")]
    assert len(rows) == 8 and all("(n=1, smoke) |" in row for row in rows), res.stdout
    assert res.stderr == "" and "[smoke]" in res.stdout
    assert_clean(res.stdout)
