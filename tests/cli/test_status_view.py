"""`mpvgbench status` shows the scheduler's view, attempts with requeues, and epoch n/N."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpvgbench.store import Store
from tests.cli.conftest import invoke, jobs_of, write_spec


def _fake_squeue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, out: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "squeue").write_text(f"#!/bin/sh\nprintf '{out}'\n")
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")


def test_status_shows_requeued_attempts_and_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = write_spec(tmp_path / "spec.yaml", seeds=[0, 1], recipe={"epochs": 10})
    requeued, local = jobs_of(spec)
    runs = tmp_path / "runs"
    with Store(tmp_path / "results.db") as store:
        store.register_jobs([requeued, local], "tiny")
        for job, executor in ((requeued, "slurm"), (local, "local")):
            assert store.claim(job.key, "me", stale_after_s=1e9, executor=executor, run_dir=str(runs / job.key))
            (runs / job.key).mkdir(parents=True)
        store.set_external_id(requeued.key, "77_1", executor="slurm")
    (runs / requeued.key / "progress.json").write_text(json.dumps({"epoch": 4, "epochs": 10, "step": 0}))
    (runs / local.key / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    _fake_squeue(tmp_path, monkeypatch, "77_1|PENDING|BeginTime|1\\n")
    res = invoke("status", spec)
    assert res.exit_code == 0, res.output
    line = next(line for line in res.output.splitlines() if line.startswith(requeued.key[:8]))
    assert "requeued (BeginTime)" in line and " 2 " in line and "4/10" in line, line
    line = next(line for line in res.output.splitlines() if line.startswith(local.key[:8]))
    assert "2/10" in line, line  # no progress.json: the epochs done
    assert "epoch" in res.output
