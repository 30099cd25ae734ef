"""The Slurm executor against a real cluster (`bash scripts/slurm.sh start`); skipped without one.

Each test has its own store, runs root and submitit folder (tmp_path): Slurm job ids restart at 1
whenever the cluster's state is wiped, so a shared folder could hand back an old job's files.
Jobs are tiny (vit_micro on sklearn's digits, CPU) because CI has 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]


def _cluster_problem() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no Slurm here (sinfo/sbatch not on PATH); start one with `bash scripts/slurm.sh start`"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%a %t"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 15 s"
    if proc.returncode != 0:
        return f"sinfo failed: {proc.stderr.strip()[:200]}"
    if not any(line.startswith("up") for line in proc.stdout.splitlines()):
        return f"no partition up: {proc.stdout.strip()[:200]}"
    return None


@pytest.fixture(scope="session")
def cluster() -> None:
    problem = _cluster_problem()
    if problem:
        pytest.skip(problem)


@dataclass
class Env:
    tmp: Path
    store: Any
    ctx: Any
    folder: Path

    def spec(self, **overrides: Any) -> Any:
        from mpvgbench.spec import parse_spec

        data: dict[str, Any] = {
            "name": "slurmtest", "models": ["vit_micro"], "methods": ["default"], "datasets": ["digits"],
            "seeds": [0], "recipe": {"epochs": 2}, "executor": {"name": "slurm", "device": "cpu"},
        }
        slurm = {"time": 10, "folder": str(self.folder), **overrides.pop("slurm", {})}
        data.update(overrides)
        data["slurm"] = slurm
        return parse_spec(data)

    def jobs(self, spec: Any) -> list[Any]:
        from mpvgbench.matrix import expand

        jobs = expand(spec)
        self.store.register_jobs(jobs, spec.name)
        return jobs

    def executor(self, spec: Any) -> Any:
        from mpvgbench.executors.slurm import SlurmExecutor

        return SlurmExecutor.from_spec(spec)

    def follow(self, spec: Any, jobs: list[Any], timeout_s: float = 240) -> dict[str, int]:
        counts = self.executor(spec).follow(self.store, [j.key for j in jobs], self.ctx, poll_s=1.0,
                                            timeout_s=timeout_s, echo=lambda line: None)
        assert not counts.get("running"), f"jobs still running after {timeout_s} s: {counts}"
        return counts

    def row(self, key: str) -> Any:
        (row,) = self.store.runs(keys=[key])
        return row


@pytest.fixture
def env(cluster: None, tmp_path: Path) -> Iterator[Env]:
    from mpvgbench.executors.base import RunContext
    from mpvgbench.store import Store

    store = Store(str(tmp_path / "results.db"))
    ctx = RunContext(runs_root=tmp_path / "runs", device="cpu")
    yield Env(tmp_path, store, ctx, tmp_path / "slurm-logs")
    ids = [r.external_id for r in store.runs() if r.external_id and r.status == "running"]
    if ids:  # never leave a test's jobs behind on the shared cluster
        subprocess.run(["scancel", *ids], capture_output=True, timeout=20, check=False)
    store.close()


def _squeue_state(job_id: str) -> str:
    proc = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], capture_output=True,
                          text=True, timeout=20, check=False)
    return proc.stdout.strip()


def _status_reconcile(store: Any, spec: Any) -> None:
    """The reconciliation `mpvgbench status SPEC` runs (its helper, or ours if it has none)."""
    try:
        from mpvgbench.cli.status import reconcile_runs
    except ImportError:
        from mpvgbench.executors.slurm import reconcile

        reconcile(store, store.runs(spec_name=spec.name, status="running"))
        return
    reconcile_runs(store, spec)


def _wait_for(predicate: Any, timeout_s: float, what: str, every_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(every_s)


# ------------------------------------------------------------------------------------- tests


def test_array_finishes_once_and_rerun_submits_nothing(env: Env) -> None:
    spec = env.spec(methods=["default", "mpvg"], seeds=[0, 1])
    jobs = env.jobs(spec)
    assert len(jobs) == 4
    t0 = time.monotonic()
    summary = env.executor(spec).launch(jobs, env.store, env.ctx)
    assert sorted(summary.launched) == sorted(j.key for j in jobs)
    array_ids = {ext.split("_")[0] for ext in summary.external_ids.values()}
    assert len(array_ids) == 1, f"expected one job array, got {summary.external_ids}"
    assert sorted(ext.split("_")[1] for ext in summary.external_ids.values()) == ["0", "1", "2", "3"]
    assert any("mpvgbench status" in m and "mpvgbench logs" in m for m in summary.messages)
    for job in jobs:
        assert env.row(job.key).external_id == summary.external_ids[job.key]
    counts = env.follow(spec, jobs)
    elapsed = time.monotonic() - t0
    assert counts == {"finished": 4}, counts
    print(f"\n4-task array: submit -> all results in the store: {elapsed:.1f} s")

    results = env.store.results_frame(spec_name=spec.name)
    assert sorted(r.key for r in results) == sorted(j.key for j in jobs)
    for job in jobs:
        assert len(env.store.metrics(job.key)) == 2
        logs = [p for p in env.executor(spec).logs(job.key, env.store)]
        assert logs and all(p.exists() for p in logs), logs
    # reconciling again changes nothing (each result ingested once)
    from mpvgbench.executors.slurm import reconcile

    assert reconcile(env.store, env.store.runs()) == []
    assert len(env.store.results_frame(spec_name=spec.name)) == 4

    # a second run of the same spec submits nothing
    again = env.executor(spec).launch(env.jobs(spec), env.store, env.ctx)
    assert again.launched == [] and sorted(again.finished) == sorted(j.key for j in jobs)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_time_limit_requeues_and_resumes(env: Env) -> None:
    """1-minute limit, 1.5+ minutes of work: submitit checkpoints on USR2, requeues, resumes.

    120 epochs take ~90 s on an idle 2-core machine (so at least one requeue); under CI's
    parallel load (inductor compiles beside it) 9 windows of ~45 s were not enough once, so
    the job may requeue up to 30 times (the test's own deadline bounds it)."""
    spec = env.spec(recipe={"epochs": 120, "batch_size": 32}, slurm={"time": 1, "max_requeues": 30})
    (job,) = env.jobs(spec)
    t0 = time.monotonic()
    summary = env.executor(spec).launch([job], env.store, env.ctx)
    job_id = summary.external_ids[job.key]
    run_dir = env.ctx.run_dir(job.key)
    from mpvgbench.executors.slurm import ACTIVE_STATES
    from mpvgbench.rundir import read_jsonl

    seen: dict[int, dict[str, Any]] = {}  # first version of every metrics row
    restarts, requeue_at = 0, None
    deadline = time.monotonic() + 1500
    while time.monotonic() < deadline:
        for row in read_jsonl(run_dir / "metrics.jsonl"):
            seen.setdefault(row["epoch"], row)
        out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=20).stdout
        n = int(out.split("Restarts=")[1].split()[0]) if "Restarts=" in out else restarts
        if n > restarts and requeue_at is None:
            requeue_at = time.monotonic() - t0
        restarts = max(restarts, n)
        # what `mpvgbench status` does: a requeued job is never reported failed
        _status_reconcile(env.store, spec)
        if not (run_dir / "result.json").exists():
            row = env.row(job.key)
            assert row.status == "running", f"requeued job reported {row.status}: {row.error}"
        if (run_dir / "result.json").exists() or _squeue_state(job_id) not in ACTIVE_STATES:
            break
        time.sleep(1)
    counts = env.follow(spec, [job], timeout_s=60)
    elapsed = time.monotonic() - t0
    row = env.row(job.key)
    assert counts == {"finished": 1}, (counts, row.error, row.traceback_tail)
    assert restarts >= 1, "the job finished without ever being requeued: make it longer"
    final = {r["epoch"]: r for r in read_jsonl(run_dir / "metrics.jsonl")}
    assert sorted(final) == list(range(1, 121))  # epochs count from 1, each once
    # rows written before a requeue are unchanged at the end: no epoch was trained twice
    assert all(final[e] == r for e, r in seen.items()), "an epoch was redone after the requeue"
    assert len(env.store.metrics(job.key)) == 120
    print(f"\nrequeued {restarts} time(s) (first after {requeue_at:.0f} s), finished after {elapsed:.0f} s")


@pytest.mark.slow  # > 20 s of waiting on the scheduler; .ci/run runs it
def test_failures_are_reported_with_their_error(env: Env) -> None:
    """A job that raises (missing dataset) and a job killed with scancel both end up failed."""
    broken = env.spec(name="broken", datasets=["imagefolder"], dataset_overrides={"imagefolder": {"num_classes": 3}},
                      data={"roots": {"imagefolder": str(env.tmp / "no-such-dir")}})
    broken_jobs = env.jobs(broken)
    ctx = env.ctx.__class__(runs_root=env.ctx.runs_root, device="cpu",
                            data_roots={"imagefolder": str(env.tmp / "no-such-dir")})
    env.executor(broken).launch(broken_jobs, env.store, ctx)
    long = env.spec(name="long", recipe={"epochs": 500})
    (long_job,) = env.jobs(long)
    summary = env.executor(long).launch([long_job], env.store, env.ctx)
    job_id = summary.external_ids[long_job.key]
    run_dir = env.ctx.run_dir(long_job.key)
    _wait_for(lambda: (run_dir / "progress.json").exists(), 120, "the long job to start training")
    subprocess.run(["scancel", job_id], check=True, timeout=20)
    env.follow(broken, broken_jobs + [long_job], timeout_s=120)

    (raised,) = broken_jobs
    row = env.row(raised.key)
    assert row.status == "failed"
    assert "no-such-dir" in (row.error or "") or "imagefolder" in (row.error or ""), row.error
    assert row.traceback_tail

    row = env.row(long_job.key)
    assert row.status == "failed" and row.failure_kind == "lost", row
    assert f"Slurm job {job_id} ended CANCELLED" in (row.error or ""), row.error
    assert row.traceback_tail and "log.err" in row.traceback_tail


def test_cancel_through_the_executor(env: Env) -> None:
    spec = env.spec(recipe={"epochs": 500}, seeds=[0, 1])
    jobs = env.jobs(spec)
    summary = env.executor(spec).launch(jobs, env.store, env.ctx)
    ids = env.executor(spec).cancel([j.key for j in jobs], env.store)
    assert sorted(ids) == sorted(summary.external_ids.values())
    assert {env.row(j.key).status for j in jobs} == {"cancelled"}
    _wait_for(lambda: all(_squeue_state(i) in ("CANCELLED", "") for i in ids), 30, "scancel to take effect")


def _fake_tool(bin_dir: Path, name: str, body: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.mark.slow  # > 20 s of waiting on the scheduler; .ci/run runs it
def test_status_without_sacct_and_with_a_hung_scheduler(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from mpvgbench.executors.slurm import reconcile

    bin_dir = env.tmp / "bin"
    _fake_tool(bin_dir, "sacct", "sleep 600")  # sacct that never answers: must never be needed
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    spec = env.spec()
    jobs = env.jobs(spec)
    env.executor(spec).launch(jobs, env.store, env.ctx)
    counts = env.follow(spec, jobs, timeout_s=120)
    assert counts == {"finished": 1}

    # a controller that hangs: reconcile gives up after its timeout and leaves runs alone
    spec2 = env.spec(name="hung", seeds=[5], recipe={"epochs": 500})
    jobs2 = env.jobs(spec2)
    summary = env.executor(spec2).launch(jobs2, env.store, env.ctx)
    _fake_tool(bin_dir, "squeue", "sleep 600")
    t0 = time.monotonic()
    messages = reconcile(env.store, env.store.runs(status="running"), timeout_s=2)
    assert time.monotonic() - t0 < 10
    assert any("unreachable" in m for m in messages), messages
    assert env.row(jobs2[0].key).status == "running"
    (bin_dir / "squeue").unlink()
    subprocess.run(["scancel", summary.external_ids[jobs2[0].key]], timeout=20, check=False)


@pytest.mark.slow  # > 20 s of waiting on the scheduler; .ci/run runs it
def test_two_tasks_train_with_ddp(env: Env, tmp_path: Path) -> None:
    """tasks_per_node=2 -> two processes joined over gloo; same metrics' shape as one task."""
    from mpvgbench.executors.base import RunContext
    from mpvgbench.rundir import read_json, read_jsonl
    from mpvgbench.store import Store

    one = env.spec()
    two = env.spec(slurm={"tasks_per_node": 2})
    (job1,) = env.jobs(one)
    env.executor(one).launch([job1], env.store, env.ctx)
    # the same job key in a second runs root and store, two tasks this time
    store2 = Store(str(tmp_path / "results2.db"))
    ctx2 = RunContext(runs_root=tmp_path / "runs2", device="cpu")
    env2 = Env(tmp_path, store2, ctx2, env.folder)
    (job2,) = env2.jobs(two)
    assert job2.key == job1.key
    summary = env2.executor(two).launch([job2], store2, ctx2)
    assert env2.follow(two, [job2]) == {"finished": 1}, env2.row(job2.key)
    assert env.follow(one, [job1]) == {"finished": 1}, env.row(job1.key)

    r1, r2 = (read_json(ctx.run_dir(job1.key) / "result.json") for ctx in (env.ctx, ctx2))
    assert r1 and r2
    assert r1["env"]["num_processes"] == 1 and r2["env"]["num_processes"] == 2
    m1, m2 = (read_jsonl(ctx.run_dir(job1.key) / "metrics.jsonl") for ctx in (env.ctx, ctx2))
    assert [sorted(r) for r in m1] == [sorted(r) for r in m2] and len(m1) == 2
    logs = env2.executor(two).logs(job2.key, store2)
    assert len(logs) == 4 and all(p.exists() for p in logs), logs  # out/err of task 0 and 1
    assert summary.external_ids[job2.key]
    store2.close()


# ------------------------------------------------------------------------------------ CLI


def _cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "mpvgbench", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False, env=env)


@pytest.mark.slow  # > 20 s of waiting on the scheduler; .ci/run runs it
def test_cli_run_status_logs_cancel(env: Env) -> None:
    spec_path = env.tmp / "spec.yaml"
    spec_path.write_text(json.dumps({
        "name": "clislurm", "models": ["vit_micro"], "methods": ["default", "pvg"], "datasets": ["digits"],
        "recipe": {"epochs": 2}, "executor": {"name": "local", "device": "cpu"},
        "results": {"db": str(env.tmp / "cli.db"), "runs_dir": str(env.tmp / "cli-runs")},
        "slurm": {"time": 10, "folder": str(env.folder)},
    }))
    proc = _cli("run", str(spec_path), "--executor", "slurm", "--wait", cwd=env.tmp, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "submitted 2 job(s)" in proc.stdout and "mpvgbench status" in proc.stdout, proc.stdout
    status = _cli("status", str(spec_path), "--all", cwd=env.tmp)
    assert status.returncode == 0 and "2 finished" in status.stdout, status.stdout + status.stderr
    from mpvgbench.store import Store

    store = Store(str(env.tmp / "cli.db"))
    key = store.runs()[0].key
    logs = _cli("logs", key[:8], "--db", str(env.tmp / "cli.db"), cwd=env.tmp)
    assert logs.returncode == 0 and "_log.out" in logs.stdout, logs.stdout + logs.stderr
    # a second run submits nothing
    again = _cli("run", str(spec_path), "--executor", "slurm", cwd=env.tmp)
    assert again.returncode == 0 and "submitted" not in again.stdout, again.stdout
    # cancel a long one through the CLI
    spec_path.write_text(spec_path.read_text().replace('"epochs": 2', '"epochs": 500'))
    proc = _cli("run", str(spec_path), "--executor", "slurm", cwd=env.tmp)
    assert proc.returncode == 0 and "submitted 2 job(s)" in proc.stdout, proc.stdout + proc.stderr
    cancel = _cli("cancel", str(spec_path), "--db", str(env.tmp / "cli.db"), cwd=env.tmp)
    assert cancel.returncode == 0 and "2 on Slurm" in cancel.stdout, cancel.stdout + cancel.stderr
    statuses = {r.status for r in Store(str(env.tmp / "cli.db")).runs() if r.config["recipe"]["epochs"] == 500}
    assert statuses == {"cancelled"}
    store.close()


@pytest.mark.slow  # > 20 s of waiting on the scheduler; .ci/run runs it
def test_init_from_waits_for_its_parent(env: Env) -> None:
    """A fine-tuning job depends on its parent (afterok); a failed parent cancels it."""
    missing = str(env.tmp / "no-such-dir")
    spec = env.spec(name="deps", init_from={"dataset": "imagefolder"}, recipe={"epochs": 1},
                    dataset_overrides={"imagefolder": {"num_classes": 10}})
    jobs = env.jobs(spec)
    parent, child = jobs
    assert child.depends_on == parent.key
    ctx = env.ctx.__class__(runs_root=env.ctx.runs_root, device="cpu", data_roots={"imagefolder": missing})
    summary = env.executor(spec).launch(jobs, env.store, ctx)
    proc = subprocess.run(["squeue", "-h", "-t", "all", "-j", summary.external_ids[child.key], "-o", "%E"],
                          capture_output=True, text=True, timeout=20)
    assert f"afterok:{summary.external_ids[parent.key]}" in proc.stdout
    env.follow(spec, jobs, timeout_s=120)
    assert env.row(parent.key).status == "failed" and "no-such-dir" in (env.row(parent.key).error or "")
    row = env.row(child.key)
    assert row.status == "failed" and "init_from" in (row.error or ""), row.error


@pytest.mark.slow  # > 20 s of waiting on the scheduler; .ci/run runs it
def test_cli_wait_exits_1_unless_every_job_finished(env: Env) -> None:
    """`run --executor slurm --wait` exits like the local executor: 1 when a job failed."""
    spec_path = env.tmp / "broken.yaml"
    spec_path.write_text(json.dumps({
        "name": "brokenwait", "models": ["vit_micro"], "methods": ["default"], "datasets": ["imagefolder"],
        "dataset_overrides": {"imagefolder": {"num_classes": 3}},
        "data": {"roots": {"imagefolder": str(env.tmp / "no-such-dir")}},
        "executor": {"name": "slurm", "device": "cpu"},
        "results": {"db": str(env.tmp / "wait.db"), "runs_dir": str(env.tmp / "wait-runs")},
        "slurm": {"time": 5, "folder": str(env.folder)},
    }))
    proc = _cli("run", str(spec_path), "--wait", cwd=env.tmp, timeout=180)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "done: 1 failed" in proc.stdout, proc.stdout
    # the job ran under the spec's name, not a generic one
    from mpvgbench.store import Store

    store = Store(str(env.tmp / "wait.db"))
    (row,) = store.runs()
    info = json.loads((Path(str(row.run_dir)) / "slurm.json").read_text())
    assert info["job_name"] == "brokenwait"
    store.close()


@pytest.mark.slow
def test_status_shows_requeues_epochs_and_the_final_state(env: Env) -> None:
    """A requeued job is `requeued`, not `running`, with the requeue counted as an attempt; the
    epoch under way is shown; the final Slurm state survives the job leaving squeue."""
    from mpvgbench.executors.job_view import job_view
    from mpvgbench.executors.slurm import reconcile

    spec = env.spec(name="requeue", recipe={"epochs": 500})
    (job,) = env.jobs(spec)
    summary = env.executor(spec).launch([job], env.store, env.ctx)
    job_id = summary.external_ids[job.key]
    run_dir = env.ctx.run_dir(job.key)
    _wait_for(lambda: (run_dir / "progress.json").exists(), 120, "the job to start training")
    reconcile(env.store, env.store.runs(status="running"))
    view = job_view(env.row(job.key))
    assert view.state == "running" and view.attempts == 1 and view.epoch.endswith("/500"), view
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=20)
    _wait_for(lambda: _squeue_state(job_id) == "PENDING", 30, "the requeue")
    reconcile(env.store, env.store.runs(status="running"))
    view = job_view(env.row(job.key))
    assert view.state.startswith("requeued") and view.attempts == 2, view
    assert env.row(job.key).status == "running"
    # the restarted job records its own start (SLURM_RESTART_COUNT), with no poller needed
    from mpvgbench.executors.slurm_queue import job_record

    first = job_record(run_dir)
    assert first["job_id"] == job_id and first["restarts"] == 0 and first["threads"] == "1", first
    _wait_for(lambda: job_record(run_dir).get("restarts") == 1, 90, "the requeued job to restart")
    subprocess.run(["scancel", job_id], check=True, timeout=20)
    _wait_for(lambda: _squeue_state(job_id) == "CANCELLED", 30, "scancel to take effect")
    reconcile(env.store, env.store.runs(status="running"))
    row = env.row(job.key)
    assert row.status == "failed" and job_view(row).state == "failed (CANCELLED)", (row, job_view(row))
    assert job_view(row).attempts == 2


@pytest.mark.slow  # a DeiT-Ti parent and an UperNet fine-tune, two tasks each
def test_dense_fine_tune_waits_for_its_parent_and_trains_with_two_tasks(env: Env) -> None:
    """Table 4's smoke cell on Slurm: the UperNet job depends on its DeiT-Ti parent (afterok),
    both run as two tasks joined over gloo, the fine-tune with the global-batch BatchNorm."""
    from mpvgbench.matrix import expand
    from mpvgbench.rundir import read_json

    spec = env.spec(name="densedp", models=["deit_tiny"], methods=["mpvg"], datasets=["ade20k"],
                    init_from={"dataset": "imagenet"}, recipe={}, slurm={"tasks_per_node": 2})
    jobs = expand(spec, smoke=True)
    env.store.register_jobs(jobs, spec.name)
    parent, child = jobs
    assert child.depends_on == parent.key and child.dataset == "ade20k_synthetic"
    summary = env.executor(spec).launch(jobs, env.store, env.ctx)
    proc = subprocess.run(["squeue", "-h", "-t", "all", "-j", summary.external_ids[child.key], "-o", "%E"],
                          capture_output=True, text=True, timeout=20)
    assert f"afterok:{summary.external_ids[parent.key]}" in proc.stdout
    assert env.follow(spec, jobs, timeout_s=600) == {"finished": 2}, (env.row(parent.key), env.row(child.key))
    result = read_json(env.ctx.run_dir(child.key) / "result.json")
    assert result and result["task"] == "segmentation" and result["env"]["num_processes"] == 2
    assert result["iterations"] == 4 and result["miou"] is not None
