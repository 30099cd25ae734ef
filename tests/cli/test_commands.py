"""Every command through click's CliRunner, with assertions on what it did (database, run
directories, output), not just on its exit code.

Real training: ``test_run_status_logs_report_force`` (two jobs) and ``test_smoke`` (one job).
The other tests fabricate run directories as a worker leaves them and ingest them, so that the
report's numbers are known exactly.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest

from mpvgbench.executors.base import RunContext
from mpvgbench.methods import KNOBS, PRESETS
from mpvgbench.models import list_models
from mpvgbench.paper import get_table
from mpvgbench.rundir import read_jsonl
from mpvgbench.store import Store

from .conftest import (
    TIMING, cli_env, fabricate_run, invoke, jobs_of, micro_config, read_progress, result_of,
    start_cli, wait_for, wait_gone, children, write_spec,
)


# -------------------------------------------------------------------------------------- run


@pytest.mark.slow
def test_run_status_logs_report_force(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "tiny.yaml", methods=["default", "mpvg"], workers=2)
    jobs = jobs_of(spec)
    keys = sorted(job.key for job in jobs)

    res = invoke("run", spec)
    assert res.exit_code == 0, res.output
    assert "tiny: 2 jobs, 0 finished, 0 failed, 2 to run" in res.output
    for job in jobs:
        assert f"[finished] {job.key} vit_micro {job.method_label} digits seed=0 top1=" in res.output
    assert "done: 2 finished" in res.output
    # run directories are named by key, nothing else is created under runs/
    assert sorted(os.listdir(tmp_path / "runs")) == keys
    store = Store(tmp_path / "results.db")
    rows = {row.key: row for row in store.runs()}
    assert {k: (r.status, r.attempts, r.executor) for k, r in rows.items()} == {
        k: ("finished", 1, "local") for k in keys}
    results = {r.key: r for r in store.results_frame()}
    for key in keys:
        run_dir = tmp_path / "runs" / key
        result = result_of(run_dir)
        assert results[key].final_top1 == pytest.approx(result["final_top1"])
        assert results[key].epochs == result["epochs"] == 2
        assert [m.epoch for m in store.metrics(key)] == [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2]
        assert rows[key].device == "cpu" and rows[key].host
    mtimes = {k: (tmp_path / "runs" / k / "result.json").stat().st_mtime_ns for k in keys}

    # the same command again: everything is finished, nothing is started
    res = invoke("run", spec)
    assert res.exit_code == 0, res.output
    assert "tiny: 2 jobs, 2 finished, 0 failed, 0 to run" in res.output
    assert "[running]" not in res.output
    assert {r.key: r.attempts for r in store.runs()} == dict.fromkeys(keys, 1)
    assert {k: (tmp_path / "runs" / k / "result.json").stat().st_mtime_ns for k in keys} == mtimes

    # status: finished runs only with --all
    res = invoke("status")
    assert res.exit_code == 0, res.output
    assert "2 finished" in res.output and not any(k[:8] in res.output for k in keys)
    res = invoke("status", spec, "--all")
    assert res.exit_code == 0, res.output
    assert all(k[:8] in res.output for k in keys) and res.output.count("finished") >= 3

    # logs: the worker's own stdout, by a unique key prefix
    key = keys[0]
    res = invoke("logs", key[:6])
    assert res.exit_code == 0, res.output
    assert f"==> {tmp_path / 'runs' / key / 'stdout.log'} <==" in res.output
    assert f"mpvgbench.worker: finished {key} top1=" in res.output
    res = invoke("logs", key, "--stream", "stdout", "--tail", "1")
    assert res.exit_code == 0 and "stderr.log" not in res.output
    assert res.output.strip().splitlines()[-1].startswith(f"mpvgbench.worker: finished {key}")

    # report: the stored numbers, exactly
    res = invoke("report", "--format", "csv")
    assert res.exit_code == 0, res.output
    (row,) = list(csv.DictReader(io.StringIO(res.output)))
    assert (row["Dataset"], row["Model"]) == ("digits", "vit_micro")
    for job in jobs:
        assert float(row[f"{job.method_label} mean"]) == pytest.approx(results[job.key].final_top1)
        assert row[f"{job.method_label} n"] == "1"

    # --force retrains from scratch (not a re-read of the final checkpoint): same numbers
    # (CPU training is deterministic), new epoch timings, a second attempt
    only_default = write_spec(tmp_path / "default.yaml", name="tiny_default", methods=["default"])
    (forced,) = jobs_of(only_default)
    before = read_jsonl(tmp_path / "runs" / forced.key / "metrics.jsonl")
    res = invoke("run", only_default, "--force")
    assert res.exit_code == 0, res.output
    assert "tiny_default: 1 jobs, 0 finished, 0 failed, 1 to run" in res.output
    after = read_jsonl(tmp_path / "runs" / forced.key / "metrics.jsonl")
    assert [r["epoch_time_s"] for r in after] != [r["epoch_time_s"] for r in before]
    for a, b in zip(after, before):
        assert {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}
    assert {r.key: r.attempts for r in store.runs()} == {k: 2 if k == forced.key else 1 for k in keys}
    store.close()


def test_dry_run_prints_the_matrix_and_writes_nothing(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.yaml", methods=["default", {"base": "mpvg", "last_ln_pe": 2}],
                      seeds=[0, 1])
    jobs = jobs_of(spec)
    res = invoke("run", spec, "--dry-run")
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert lines[0].split() == ["key", "model", "method", "dataset", "seed", "state", "GFLOP", "GPU-h"]
    assert [line.split()[:6] for line in lines[1:5]] == [
        [j.key, "vit_micro", j.method_label, "digits", str(j.seed), "new"] for j in jobs]
    assert all(len(line) <= 80 for line in lines), res.output
    assert "mpvg[last_ln_pe=2]" in res.output
    assert lines[5] == "4 jobs: 4 new"
    assert lines[6].startswith("estimated cost of the 4 not done: <0.01 GPU-hours"), res.output
    assert "(assumed)" in lines[7]
    assert sorted(os.listdir(tmp_path)) == ["spec.yaml"]  # no database, no runs/

    # with a database: finished runs show as done
    with Store(tmp_path / "results.db") as store:
        fabricate_run(store, tmp_path / "runs", jobs[0].config, top1=60.0)
    res = invoke("run", spec, "--dry-run")
    assert res.exit_code == 0, res.output
    assert "4 jobs: 1 done, 3 new\nestimated cost of the 3 not done" in res.output
    assert f"{jobs[0].key} vit_micro" in res.output


@pytest.mark.slow
def test_smoke_runs_the_matrix_on_generated_stand_ins(tmp_path: Path) -> None:
    # cifar100 with no data root: a real run refuses it up front, a smoke run generates its
    # stand-in (CIFAR-100's pickles) under .smoke/data and reads it with the real reader
    spec = write_spec(tmp_path / "spec.yaml", datasets=["cifar100"])
    res = invoke("run", spec)
    assert res.exit_code == 2 and "data.roots.cifar100 is not set" in res.output, res.output
    assert not (tmp_path / "results.db").exists()

    res = invoke("run", spec, "--smoke")
    assert res.exit_code == 0, res.output
    (job,) = jobs_of(spec, smoke=True)
    assert job.config.dataset == "cifar100_synthetic" and job.config.recipe.max_steps_per_epoch == 2
    assert (tmp_path / ".smoke" / "data" / "cifar100_synthetic-v1" / "cifar-100-python" / "train").is_file()
    # its own database and runs dir, never the real ones; no weights kept after success
    assert not (tmp_path / "results.db").exists() and not (tmp_path / "runs").exists()
    run_dir = tmp_path / ".smoke" / "runs" / job.key
    result = result_of(run_dir)
    assert result["epochs"] == 2 and result["final_top1"] is not None
    assert not (run_dir / "checkpoint.pt").exists()
    assert "mpvgbench report --db" in res.output
    with Store(tmp_path / ".smoke" / "results.db") as store:
        (row,) = store.runs()
        assert (row.key, row.dataset, row.status) == (job.key, "cifar100_synthetic", "finished")


# ----------------------------------------------------------------------------------- status


def test_status_lists_unfinished_runs_with_their_errors(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.yaml", seeds=[0, 1, 2])
    j0, j1, j2 = jobs_of(spec)
    with Store(tmp_path / "results.db") as store:
        store.register_jobs([j0, j1, j2], "tiny")
        fabricate_run(store, tmp_path / "runs", j0.config, top1=70.0)
        fabricate_run(store, tmp_path / "runs", j1.config, error="ValueError: boom at build",
                      spec_name="tiny")
    res = invoke("status", spec)
    assert res.exit_code == 0, res.output
    assert "1 pending, 1 finished, 1 failed" in res.output
    assert j1.key[:8] in res.output and "ValueError: boom at build" in res.output
    assert j2.key[:8] in res.output and "pending" in res.output
    assert j0.key[:8] not in res.output
    res = invoke("status", "--all")
    assert res.exit_code == 0 and j0.key[:8] in res.output


def test_status_says_when_a_local_runs_coordinator_is_gone(tmp_path: Path) -> None:
    import socket

    spec = write_spec(tmp_path / "spec.yaml", seeds=[0, 1])
    j0, j1 = jobs_of(spec)
    with Store(tmp_path / "results.db") as store:
        store.register_jobs([j0, j1], "tiny")
        dead = f"{socket.gethostname()}:999999999:dead"  # no such pid on this host
        live = f"{socket.gethostname()}:{os.getpid()}:live"
        assert store.claim(j0.key, dead, stale_after_s=60, executor="local")
        assert store.claim(j1.key, live, stale_after_s=60, executor="local")
    res = invoke("status", spec)
    assert res.exit_code == 0, res.output
    lines = {key: next(line for line in res.output.splitlines() if line.startswith(key[:8]))
             for key in (j0.key, j1.key)}
    assert "coordinator gone" in lines[j0.key] and "coordinator gone" not in lines[j1.key]


# ----------------------------------------------------------------------------------- report


@pytest.fixture
def pivot_db(tmp_path: Path) -> dict[str, list[float]]:
    """vit_micro on digits: default 50/52, mpvg 60/64 (final top-1 of seeds 0 and 1)."""
    values = {"default": [50.0, 52.0], "mpvg": [60.0, 64.0]}
    with Store(tmp_path / "results.db") as store:
        for method, tops in values.items():
            for seed, top1 in enumerate(tops):
                fabricate_run(store, tmp_path / "runs", micro_config(seed, method), top1=top1,
                              spec_name="pivot")
    return values


def test_report_every_format(tmp_path: Path, pivot_db: dict[str, list[float]]) -> None:
    res = invoke("report")  # rich table
    assert res.exit_code == 0, res.output
    assert "vit_micro" in res.output and "51.00 ± 1.41 (n=2)" in res.output
    assert "62.00 ± 2.83 (n=2)" in res.output

    res = invoke("report", "--format", "markdown")
    assert res.exit_code == 0, res.output
    assert "| Dataset | Model | default | mpvg |" in res.output
    assert "| digits | vit_micro | 51.00 ± 1.41 (n=2) | 62.00 ± 2.83 (n=2) |" in res.output

    res = invoke("report", "--format", "latex")
    assert res.exit_code == 0, res.output
    assert r"\begin{tabular}{llrr}" in res.output and r"\toprule" in res.output
    assert r"digits & vit\_micro & 51.00 $\pm$ 1.41 (n=2) & 62.00 $\pm$ 2.83 (n=2) \\" in res.output

    res = invoke("report", "--format", "csv")
    assert res.exit_code == 0, res.output
    (row,) = list(csv.DictReader(io.StringIO(res.output)))
    assert float(row["default mean"]) == 51.0 and float(row["mpvg mean"]) == 62.0
    assert float(row["mpvg std"]) == pytest.approx(2 ** 1.5) and row["default n"] == "2"

    res = invoke("report", "--format", "json", "--metric", "best")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["metric"] == "best"
    assert doc["rows"][0]["default"]["values"] == [51.0, 53.0]  # best_top1 = final + 1

    out = tmp_path / "out" / "report.md"
    out.parent.mkdir()
    res = invoke("report", "--format", "markdown", "--spec", write_spec(tmp_path / "pivot.yaml", name="pivot"),
                 "-o", out)
    assert res.exit_code == 0, res.output
    assert f"wrote {out}" in res.output and "(spec pivot)" in out.read_text()


@pytest.mark.parametrize("number", [1, 2, 3, 4, 5, 6, "fig5"])
def test_report_paper_table(tmp_path: Path, number: int | str) -> None:
    """A stored run of the table's first row shows up as measured, next to the paper, with Δ."""
    from mpvgbench.config import TrainConfig

    table = get_table(number)
    row = table.rows[0]
    measured = {m.name: 40.0 + i for i, m in enumerate(table.metrics)}
    config = TrainConfig(model=row.model, method=row.pe_method, dataset=row.dataset, img_size=224,
                         num_classes=1000, seed=0)
    # a dense run's result.json names its primary metric and holds final_/best_ of each metric
    extra = {} if "top1" in measured else {
        "primary_metric": table.metrics[0].name,
        **{f"{which}_{name}": value for name, value in measured.items() for which in ("final", "best")}}
    with Store(tmp_path / "results.db") as store:
        fabricate_run(store, tmp_path / "runs", config, top1=measured.get("top1", 77.0), **extra)
    res = invoke("report", "--table", number, "--format", "json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["title"] == table.title and len(doc["rows"]) == len(table.rows)
    first = list(doc["rows"][0].values())
    labels = first[: len(table.label_columns)]
    assert tuple(labels) == row.labels
    for metric in table.metrics:
        cells = {c["name"]: doc["rows"][0][c["name"]] for c in doc["columns"]}
        m_col = next(n for n in cells if n.endswith("measured") and metric.header in n)
        p_col = next(n for n in cells if n == f"{metric.header} paper")
        assert cells[m_col]["mean"] == measured[metric.name] and cells[m_col]["n"] == 1
        assert cells[p_col] == row.values[metric.name]
        d_col = "Δ" if len(table.metrics) == 1 else f"Δ {metric.header}"
        assert cells[d_col] == pytest.approx(measured[metric.name] - row.values[metric.name])
    # every other row has no run: measured n=0, no Δ
    assert all(v["n"] == 0 for r in doc["rows"][1:] for v in r.values() if isinstance(v, dict))
    res = invoke("report", "--table", number, "--format", "markdown")
    assert res.exit_code == 0 and table.title in res.output


# ------------------------------------------------------------------------ models and methods


def test_models_and_methods_list_the_registry() -> None:
    res = invoke("models")
    assert res.exit_code == 0, res.output
    for name in list_models():
        assert name in res.output
    assert "vit_micro" in res.output and "micro" in res.output
    res = invoke("methods")
    assert res.exit_code == 0, res.output
    for name in PRESETS:
        assert name in res.output
    for knob in KNOBS:
        assert knob in res.output


def test_models_params_adds_the_dense_models_within_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting is faked (tests/models/test_registry.py runs it for real); the rows and the width
    are real."""
    import mpvgbench.downstream.detection as detection
    import mpvgbench.models as models

    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(models, "count_params", lambda name, method: 1)
    counted: list[str] = []

    def counts(method: str) -> dict[str, int]:
        counted.append(method)
        return {"backbone": 7_971_440, "mask_rcnn": 28_073_312, "upernet": 36_067_228}

    monkeypatch.setattr(detection, "downstream_param_counts", counts)
    res = invoke("models", "--params")
    assert res.exit_code == 0, res.output
    assert counted == ["default", "lape", "pvg", "mpvg"]
    lines = res.output.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    rows = {tuple(line.split()[:2]): line for line in lines if line.startswith("adapter_ti")}
    assert set(rows) == {("adapter_ti", "mask_rcnn"), ("adapter_ti", "upernet")}
    assert rows[("adapter_ti", "mask_rcnn")].split()[-1] == "28,073,312"
    assert rows[("adapter_ti", "upernet")].split()[2:4] == ["512", "36,067,228"]


# ------------------------------------------------------------------------------------ cancel


def test_cancel_pending_runs_by_spec_and_by_key(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.yaml", seeds=[0, 1, 2])
    jobs = jobs_of(spec)
    with Store(tmp_path / "results.db") as store:
        store.register_jobs(jobs, "tiny")
    res = invoke("cancel", jobs[0].key[:8])
    assert res.exit_code == 0 and "cancelled 1 run(s)" in res.output, res.output
    res = invoke("cancel", spec)
    assert res.exit_code == 0 and "cancelled 2 run(s)" in res.output, res.output
    with Store(tmp_path / "results.db") as store:
        assert {r.key: r.status for r in store.runs()} == {j.key: "cancelled" for j in jobs}
    # a cancelled run is not run again unless asked
    res = invoke("run", spec)
    assert res.exit_code == 1, res.output  # not everything is finished: the exit status says so
    assert "0 failed, 3 cancelled (rerun with --retry-failed), 0 to run" in res.output  # one word for cancelled runs
    assert not (tmp_path / "runs").exists()
    res = invoke("cancel", spec)
    assert res.exit_code == 0 and "cancelled 0 run(s)" in res.output


@pytest.mark.slow
def test_cancel_stops_a_running_local_job(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.yaml", recipe={"epochs": 500, "max_steps_per_epoch": 2,
                                                      "eval_max_batches": 1})
    (job,) = jobs_of(spec)
    proc = start_cli("run", spec, cwd=tmp_path, env=cli_env(MPVGBENCH_PROGRESS_INTERVAL_S="0"))
    try:
        wait_for(lambda: read_progress(tmp_path / "runs" / job.key).get("epoch", 0) >= 2, 180,
                 "the job to train", proc)
        workers = children(proc.pid)
        assert workers
        res = invoke("cancel", job.key)
        assert res.exit_code == 0 and "cancelled 1 run(s)" in res.output, res.output
        out, _ = proc.communicate(timeout=120)  # noticed at the next heartbeat (10 s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, out  # exit 0 only if every job of the matrix finished
    assert f"{job.key}: cancelled while running; its worker was stopped" in out
    assert wait_gone(workers, 10)
    assert not (tmp_path / "runs" / job.key / "result.json").exists()
    with Store(tmp_path / "results.db") as store:
        assert store.statuses([job.key]) == {job.key: "cancelled"}


# ----------------------------------------------------------------------------------- analyze


def test_analyze_help() -> None:
    res = invoke("analyze", "--help")
    assert res.exit_code == 0, res.output
    assert "KEY|SPEC..." in res.output and "--images" in res.output and "Fig. 4" in res.output


def test_every_command_has_help() -> None:
    res = invoke("--help")
    assert res.exit_code == 0
    for command in ("run", "status", "report", "models", "methods", "logs", "cancel", "analyze"):
        assert command in res.output
        sub = invoke(command, "--help")
        assert sub.exit_code == 0 and "Usage: " in sub.output, (command, sub.output)


def test_run_dir_is_the_key_never_a_spec_value(tmp_path: Path) -> None:
    ctx = RunContext(runs_root=tmp_path / "runs")
    key = micro_config().key()
    assert ctx.run_dir(key) == tmp_path / "runs" / key
    for bad in ("../../etc", "/etc/passwd", "tiny", key.upper(), key + "/.."):
        with pytest.raises(AssertionError):
            ctx.run_dir(bad)
