"""Every table a command prints fits 80 columns without cutting a value a user needs: no
ellipsis, short keys that stay unique, model names the paper's, paper values whole."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from mpvgbench.cli.live import LiveView
from mpvgbench.config import Recipe, TrainConfig
from mpvgbench.paper import MODEL_NAMES, TABLE_IDS, get_table
from mpvgbench.store import Store
from tests.cli.conftest import fabricate_run, invoke, jobs_of, write_spec


@pytest.fixture(autouse=True)
def _eighty_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")


def assert_fits(output: str) -> None:
    assert "…" not in output and "..." not in output.replace("... and", ""), output
    assert max(map(len, output.splitlines()), default=0) <= 80, output


def test_status_at_80_columns(tmp_path: Path) -> None:
    keys = []
    with Store(tmp_path / "results.db") as store:
        for model in ("deit_tiny", "deit_small", "deit_base"):
            config = TrainConfig(model=model, method="mpvg[last_ln_pe=5]", dataset="imagenet", img_size=224,
                                 num_classes=1000, recipe=Recipe(epochs=300))
            keys.append(fabricate_run(store, tmp_path / "runs", config, error="RuntimeError: " + "x" * 150,
                                      spec_name="s"))
    res = invoke("status", "--db", tmp_path / "results.db")
    assert res.exit_code == 0, res.output
    table = res.output.split("RuntimeError")[0].rsplit("\n", 1)[0]  # errors follow the table in full
    assert_fits(table)
    for key in keys:
        assert key[:8] in res.output
    for name in ("DeiT-Ti", "DeiT-S", "DeiT-B", "mpvg[last_ln_pe=5]", "300/300"):
        assert name in res.output, name
    assert "x" * 150 in res.output  # the error in full, below the table


@pytest.mark.parametrize("table", TABLE_IDS)
def test_report_tables_at_80_columns(tmp_path: Path, table: object) -> None:
    Store(tmp_path / "results.db").close()
    res = invoke("report", "--db", tmp_path / "results.db", "--table", table)
    assert res.exit_code == 0, res.output
    assert "…" not in res.output
    assert max(map(len, res.output.splitlines())) <= 80
    paper = get_table(table)
    for row in paper.rows:
        for metric in paper.metrics:  # each paper value as its column prints it (Table 3: 1 digit)
            value = row.values[metric.name]
            assert f"{value:.{metric.digits}f}" in res.output, (metric.name, value)


def test_live_view_at_80_columns() -> None:
    jobs = jobs_of(write_spec(Path("spec.yaml"), models=["deit_tiny", "t2t_vit_7", "vit_lite_7_4"],
                              methods=["default", "mpvg[last_ln_pe=5]"], datasets=["cifar100"]))
    view = LiveView(jobs, console=Console(file=io.StringIO(), width=80))
    view.handle("started", jobs[0], {"run_dir": "/nonexistent"})
    buf = io.StringIO()
    Console(file=buf, width=80).print(view.render())
    assert_fits(buf.getvalue())
    for job in jobs:
        assert job.key[:8] in buf.getvalue()
    for name in ("DeiT-Ti", "T2T-ViT-7", "ViT-Lite-7/4", "mpvg[last_ln_pe=5]"):
        assert name in buf.getvalue(), name


@pytest.mark.slow
def test_models_params_at_80_columns() -> None:
    res = invoke("models", "--params")
    assert res.exit_code == 0, res.output
    assert_fits(res.output)
    for count in ("5,717,416", "5,721,640", "86,567,656", "28,589,410", "4,310,222"):
        assert count in res.output, count
    assert set(MODEL_NAMES) <= set(res.output.split())


def test_live_view_shows_a_dense_job_by_evaluations_and_its_primary_metric(tmp_path: Path) -> None:
    from mpvgbench.matrix import expand
    from mpvgbench.spec import parse_spec

    spec = parse_spec({"name": "t4", "models": ["deit_tiny"], "methods": ["mpvg"], "datasets": ["ade20k"],
                       "init_from": {"dataset": "imagenet"}})
    parent, child = expand(spec)
    out = io.StringIO()
    view = LiveView([parent, child], console=Console(file=out, width=80))  # not a terminal: one line per event
    run_dir = tmp_path / child.key
    run_dir.mkdir()
    (run_dir / "progress.json").write_text(json.dumps({"epoch": 3, "epochs": 10, "step": 5, "steps_per_epoch": 16000}))
    (run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 3, "iteration": 48000, "miou": 37.123}) + "\n")
    view.handle("started", child, {"run_dir": str(run_dir)})
    view.handle("progress", child, {"run_dir": str(run_dir)})
    line = view.lines[child.key]
    assert line.epoch == "3/10" and line.top1 == "mIoU 37.12"  # ten evaluations, not recipe.epochs (1)
    buf = io.StringIO()
    Console(file=buf, width=80).print(view.render())
    assert_fits(buf.getvalue())
    assert "mIoU 37.12" in buf.getvalue()
    view.handle("finished", child, {"run_dir": str(run_dir)})
    assert f"[finished] {child.key} " in out.getvalue() and out.getvalue().rstrip().endswith("miou=37.12")
