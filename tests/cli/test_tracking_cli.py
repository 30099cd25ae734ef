"""`mpvgbench run` with a `tracking:` section; every run's stdout.log holds the per-epoch lines
(through the local executor and the worker); off a terminal the live view prints a progress
line per running job at most every PROGRESS_LINE_INTERVAL_S."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from mpvgbench.cli import live
from mpvgbench.cli.live import LiveView

from .conftest import invoke, jobs_of, write_spec

EPOCH_LINE = re.compile(r"^epoch (\d)/2  iteration \d+  loss \d+\.\d{4}  top1 \d+\.\d\d  lr \S+  \d+\.\d img/s$",
                        re.MULTILINE)


def test_run_logs_epochs_to_stdout_log_and_tensorboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard")
    monkeypatch.setattr(live, "PROGRESS_LINE_INTERVAL_S", 0.0)  # a progress line at every poll
    spec = write_spec(tmp_path / "spec.yaml", tracking={"tensorboard": True})
    (job,) = jobs_of(spec)
    assert job.key == jobs_of(write_spec(tmp_path / "plain.yaml"))[0].key  # tracking: same run

    res = invoke("run", spec)
    assert res.exit_code == 0, res.output
    run_dir = tmp_path / "runs" / job.key
    log = (run_dir / "stdout.log").read_text()
    assert [int(epoch) for epoch in EPOCH_LINE.findall(log)] == [1, 2]
    assert json.loads((run_dir / "job.json").read_text())["tracking"]["tensorboard"] is True
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    # not a terminal: the job's state changes, and progress lines while it ran
    assert f"[finished] {job.key} " in res.output
    assert re.search(rf"^\[running\] {job.key} .* epoch \d/2", res.output, re.MULTILINE), res.output


def test_a_missing_tracking_library_stops_run_before_anything_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    spec = write_spec(tmp_path / "spec.yaml", tracking={"mlflow": {"uri": "http://127.0.0.1:1"}})
    res = invoke("run", spec)
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert "mlflow" in res.output and "pip install 'mpvgbench[tracking]'" in res.output
    assert not (tmp_path / "results.db").exists() and not (tmp_path / "runs").exists()


def test_a_bad_tracking_section_is_a_spec_error(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.yaml", tracking={"wandb": {"project": "p", "mode": "sometimes"}})
    res = invoke("run", spec, "--dry-run")
    assert res.exit_code == 2 and "tracking.wandb.mode" in res.output, res.output


def _view_with_progress(tmp_path: Path) -> tuple[LiveView, io.StringIO, str]:
    (job,) = jobs_of(write_spec(tmp_path / "spec.yaml"))
    run_dir = tmp_path / job.key
    run_dir.mkdir()
    (run_dir / "progress.json").write_text(json.dumps({"epoch": 2, "epochs": 4, "step": 5, "steps_per_epoch": 10,
                                                       "loss": 1.23456}))
    (run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "top1": 41.2}) + "\n")
    out = io.StringIO()
    view = LiveView([job], console=Console(file=out, width=200))
    view.handle("started", job, {"run_dir": str(run_dir)})
    view.handle("progress", job, {"run_dir": str(run_dir)})
    return view, out, job.key


def test_off_a_terminal_a_running_job_gets_a_progress_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "PROGRESS_LINE_INTERVAL_S", 0.0)
    _, out, key = _view_with_progress(tmp_path)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"[running] {key} ")
    assert lines[1].startswith(f"[running] {key} vit_micro default digits seed=0 epoch 2/4 loss 1.2346 top1 41.20 ETA ")


def test_progress_lines_wait_for_the_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "PROGRESS_LINE_INTERVAL_S", 1e9)
    view, out, key = _view_with_progress(tmp_path)
    assert out.getvalue().splitlines() == [f"[running] {key} vit_micro default digits seed=0"]  # the start only
    assert view.lines[key].loss == "1.2346"  # the numbers are kept for the next line
