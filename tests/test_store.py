"""Store: registration, claims, heartbeats, ingest, schema checks; SQLite and (optionally) PostgreSQL.

PostgreSQL tests run when MPVGBENCH_TEST_POSTGRES_URL is set (``scripts/postgres.sh start``);
each test gets its own schema, so they can run in parallel against one server.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from mpvgbench import rundir
from mpvgbench import store_schema as S
from mpvgbench.config import Recipe, TrainConfig
from mpvgbench.errors import MpvgbenchError
from mpvgbench.methods import PRESETS
from mpvgbench.store import Store, StoreError, resolve_url
from tests.pg import fresh_schema



@dataclass(frozen=True)
class FakeJob:
    """The shape of mpvgbench.matrix.Job that the store relies on."""

    key: str
    spec_name: str
    config: TrainConfig


def make_job(seed: int = 0, method: Any = "mpvg", model: str = "deit_tiny", dataset: str = "imagenet",
             epochs: int = 300, spec: str = "spec") -> FakeJob:
    cfg = TrainConfig(model=model, method=method, dataset=dataset,
                      img_size=224, num_classes=1000, seed=seed, recipe=Recipe(epochs=epochs))
    return FakeJob(cfg.key(), spec, cfg)


def write_run_dir(root: Path, job: FakeJob, *, epochs: int = 3, final: float | None = 70.0,
                  error: dict[str, Any] | None = None) -> Path:
    """A run directory as a worker leaves it: config, metrics, and result.json or error.json."""
    rd = rundir.RunDir(root / job.key)
    rd.path.mkdir(parents=True, exist_ok=True)
    rundir.atomic_write_json(rd.config, job.config.model_dump(mode="json"))  # what ingest reads
    rows = [{"epoch": e, "train_loss": 5.0 - e, "val_loss": 4.0 - e, "top1": final - epochs + e + 1
             if final is not None else 1.0, "top5": 90.0, "lr": 1e-3, "epoch_time_s": 1.5,
             "images_per_s": 100.0} for e in range(epochs)]
    rundir.atomic_write_jsonl(rd.metrics, rows)
    if final is not None and error is None:
        rundir.atomic_write_json(rd.result, {
            "key": job.key, "final_top1": final, "best_top1": final + 0.5, "final_top5": 91.0,
            "best_top5": 92.0, "epochs": epochs, "wall_time_s": 12.5,
            "env": {"host": "node1", "torch": "2.3.0", "timm": "1.0.9", "python": "3.11",
                    "device": "cpu", "git_commit": "abc123", "git_dirty": False, "num_processes": 1}})
    if error is not None:
        rundir.atomic_write_json(rd.error, {"key": job.key, **error})
    return rd.path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "results.db")
        return
    with fresh_schema() as url:
        yield url.render_as_string(hide_password=False)


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    with Store(db_url) as s:
        yield s


def age_heartbeat(store: Store, key: str, seconds: float) -> None:
    with store._engine.begin() as conn:
        conn.execute(sa.update(S.runs).where(S.runs.c.key == key)
                     .values(heartbeat_at=time.time() - seconds))


# ------------------------------------------------------------------------------ registration

def test_register_links_specs_and_keeps_state(store: Store) -> None:
    a = [make_job(seed) for seed in range(3)]
    b = [a[0], a[1], make_job(7)]
    store.register_jobs(a, "table1")
    assert store.claim(a[0].key, "me", stale_after_s=60)
    store.register_jobs(b, "table5")
    store.register_jobs(b, "table5")  # twice: nothing changes
    runs = {r.key: r for r in store.runs()}
    assert len(runs) == 4
    assert runs[a[0].key].specs == ("table1", "table5")
    assert runs[a[0].key].status == "running"  # re-registering never resets a run
    assert runs[a[2].key].specs == ("table1",)
    assert runs[a[0].key].method == PRESETS["mpvg"]
    assert runs[a[0].key].config == a[0].config.model_dump(mode="json")
    assert (runs[a[1].key].model, runs[a[1].key].method_label, runs[a[1].key].seed) == ("deit_tiny", "mpvg", 1)
    assert store.status_counts("table1") == {"pending": 2, "running": 1, "finished": 0, "failed": 0,
                                             "cancelled": 0}
    assert sum(store.status_counts().values()) == 4
    assert [r.key for r in store.runs(spec_name="table5", status="pending")] == sorted(
        [a[1].key, b[2].key])
    assert [r.key for r in store.runs(keys=[a[2].key])] == [a[2].key]
    with pytest.raises(MpvgbenchError, match="unknown status"):
        store.runs(status="done")


# ------------------------------------------------------------------------------------ claims

def test_claim_is_exclusive_and_stale_claims_are_taken_over(store: Store) -> None:
    job = make_job()
    store.register_jobs([job], "s")
    assert store.claim(job.key, "host:1:a", stale_after_s=60, executor="local", run_dir="/r/x")
    assert not store.claim(job.key, "host:2:b", stale_after_s=60)
    assert store.heartbeat("host:1:a", [job.key]) == 1
    age_heartbeat(store, job.key, 120)  # coordinator a died two minutes ago
    assert store.claim(job.key, "host:2:b", stale_after_s=60)
    (run,) = store.runs()
    assert (run.status, run.owner, run.attempts, run.executor, run.run_dir) == (
        "running", "host:2:b", 2, "local", "/r/x")
    assert store.heartbeat("host:1:a", [job.key]) == 0  # a has lost it
    assert not store.mark_failed(job.key, "host:1:a", "late report")
    assert not store.release(job.key, "host:1:a")
    assert store.heartbeat("host:2:b") == 1


def test_release_fail_cancel_reset(store: Store) -> None:
    jobs = [make_job(s) for s in range(3)]
    store.register_jobs(jobs, "s")
    k0, k1, k2 = (j.key for j in jobs)
    assert store.claim(k0, "o", stale_after_s=60)
    store.set_external_id(k0, "12345", executor="slurm")
    assert store.release(k0, "o")
    run = store.runs(keys=[k0])[0]
    assert (run.status, run.owner, run.external_id, run.executor) == ("pending", None, None, "slurm")
    assert store.claim(k1, "o", stale_after_s=60)
    assert store.mark_failed(k1, "o", "CUDA error:\n out of memory", "Traceback ...\nOOM", kind="oom")
    run = store.runs(keys=[k1])[0]
    assert (run.status, run.error, run.failure_kind) == ("failed", "CUDA error: out of memory", "oom")
    assert store.mark_cancelled([k2, k1]) == 1  # a failed run is not cancelled
    assert store.status_counts() == {"pending": 1, "running": 0, "finished": 0, "failed": 1,
                                     "cancelled": 1}
    assert store.results_frame() == []
    assert store.reset_failed(include_cancelled=False) == [k1]
    assert sorted(store.reset_failed()) == [k2]
    run = store.runs(keys=[k1])[0]
    assert (run.status, run.error, run.attempts) == ("pending", None, 1)


# ------------------------------------------------------------------------------------ ingest

def _snapshot(store: Store) -> tuple[Any, ...]:
    return (store.runs(), store.results_frame(), [store.metrics(r.key) for r in store.runs()])


def test_ingest_finished_run_is_idempotent(store: Store, tmp_path: Path) -> None:
    job = make_job()
    store.register_jobs([job], "s")
    assert store.claim(job.key, "o", stale_after_s=60)
    path = write_run_dir(tmp_path / "runs", job, epochs=3, final=72.5)
    assert store.ingest_run_dir(path) == "finished"
    first = _snapshot(store)
    assert store.ingest_run_dir(str(path)) == "finished"
    assert _snapshot(store) == first
    (run,) = store.runs()
    assert (run.host, run.git_commit, run.git_dirty, run.torch_version, run.timm_version) == (
        "node1", "abc123", False, "2.3.0", "1.0.9")
    assert run.wall_time_s == 12.5 and run.run_dir == str(path.absolute())
    (res,) = store.results_frame()
    assert (res.final_top1, res.best_top1, res.epochs, res.extra["env"]["host"]) == (72.5, 73.0, 3, "node1")
    assert [m.epoch for m in store.metrics(job.key)] == [0, 1, 2]
    assert store.metrics(job.key)[2].top1 == 72.5
    rundir.atomic_write_jsonl(path / "metrics.jsonl", [{"epoch": 0, "top1": 1.0}])  # rewritten
    store.ingest_run_dir(path)
    assert [(m.epoch, m.top1, m.train_loss) for m in store.metrics(job.key)] == [(0, 1.0, None)]


def test_a_dense_result_is_stored_under_its_metrics_names(store: Store, tmp_path: Path) -> None:
    job = make_job(dataset="ade20k")
    path = write_run_dir(tmp_path / "runs", job, epochs=3, final=None)
    # what the dense trainer writes: the primary metric also in final_top1 (schema 1's place)
    rundir.atomic_write_json(path / "result.json", {
        "key": job.key, "final_top1": 41.5, "best_top1": 42.0, "miou": 41.5, "final_miou": 41.5,
        "best_miou": 42.0, "primary_metric": "miou", "task": "segmentation", "iterations": 160,
        "epochs": 10, "wall_time_s": 3.0, "env": {"host": "node1"}})
    assert store.ingest_run_dir(path) == "finished"
    (res,) = store.results_frame()
    assert (res.primary_metric, res.primary(), res.primary("best")) == ("miou", 41.5, 42.0)
    assert (res.final_top1, res.best_top1, res.final_ap_box) == (None, None, None)  # no top-1 here
    assert res.extra == {"task": "segmentation", "iterations": 160, "wall_time_s": 3.0,
                         "env": {"host": "node1"}}
    # a primary metric no task reports is no result
    other = make_job(seed=1, dataset="ade20k")
    path = write_run_dir(tmp_path / "runs", other, epochs=3, final=None)
    rundir.atomic_write_json(path / "result.json", {"key": other.key, "primary_metric": "accuracy",
                                                    "final_accuracy": 1.0})
    assert store.ingest_run_dir(path) == "failed"
    (failed,) = store.runs(keys=[other.key])
    assert "primary_metric must be one of top1, ap_box, miou, got 'accuracy'" in (failed.error or "")


def test_ingest_error_json(store: Store, tmp_path: Path) -> None:
    running, pending = make_job(0), make_job(1)
    store.register_jobs([running, pending], "s")
    assert store.claim(running.key, "o", stale_after_s=60)
    err = {"kind": "nonfinite", "error": "loss is nan at epoch 2", "traceback_tail": "tb", "epoch": 2}
    p1 = write_run_dir(tmp_path, running, final=None, error=err)
    p2 = write_run_dir(tmp_path, pending, final=None, error=err)
    assert store.ingest_run_dir(p1) == "failed"
    assert store.ingest_run_dir(p1) == "failed"
    run = store.runs(keys=[running.key])[0]
    assert (run.error, run.failure_kind, run.traceback_tail) == ("loss is nan at epoch 2", "nonfinite", "tb")
    assert store.ingest_run_dir(p2) == "pending"  # a previous attempt's error, already reset
    assert store.results_frame() == []


def test_ingest_unknown_run_dirs(store: Store, tmp_path: Path) -> None:
    job = make_job(3)
    path = write_run_dir(tmp_path, job, final=71.0)  # not registered: rebuilt from config.json
    assert store.ingest_run_dir(path) == "finished"
    assert [r.key for r in store.results_frame()] == [job.key]
    stray = tmp_path / "0123456789abcdef"
    stray.mkdir()
    with pytest.raises(StoreError, match="no config.json"):
        store.ingest_run_dir(stray)
    misnamed = tmp_path / "fedcba9876543210"
    misnamed.mkdir()
    rundir.atomic_write_json(misnamed / "config.json", job.config.model_dump(mode="json"))
    with pytest.raises(StoreError, match="must be named by its key"):
        store.ingest_run_dir(misnamed)


def test_failed_runs_are_never_results(store: Store, tmp_path: Path) -> None:
    ok, bad = make_job(0), make_job(1)
    store.register_jobs([ok, bad], "s")
    for job in (ok, bad):
        assert store.claim(job.key, "o", stale_after_s=60)
    store.ingest_run_dir(write_run_dir(tmp_path, ok, final=70.0))
    store.ingest_run_dir(write_run_dir(tmp_path, bad, final=None, error={"kind": "oom", "error": "x"}))
    assert [r.key for r in store.results_frame()] == [ok.key]
    assert [r.key for r in store.results_frame("s", dataset="imagenet", model="deit_tiny")] == [ok.key]
    assert store.results_frame(dataset="cifar100") == []


def test_analysis_values(store: Store) -> None:
    job = make_job()
    store.register_jobs([job], "s")
    store.add_analysis(job.key, {"corr": [0.1, -0.2, float("nan")], "n": 3})
    store.add_analysis(job.key, {"n": 4})
    assert store.analysis() == {job.key: {"corr": [0.1, -0.2, None], "n": 4}}
    assert store.analysis(job.key)[job.key]["n"] == 4
    with pytest.raises(StoreError, match="no run 0000000000000000"):
        store.add_analysis("0000000000000000", {"n": 1})


# ----------------------------------------------------------------------------- schema, paths

def test_newer_schema_is_refused(db_url: str) -> None:
    Store(db_url).close()
    engine = sa.create_engine(resolve_url(db_url))
    with engine.begin() as conn:
        conn.execute(sa.update(S.meta).where(S.meta.c.name == "schema_version").values(value="99"))
    engine.dispose()
    with pytest.raises(StoreError, match=rf"newer mpvgbench \(schema 99 > {S.SCHEMA_VERSION}\); upgrade mpvgbench or use "
                                         r"another --db") as info:
        Store(db_url)
    assert "\n" not in str(info.value)


def test_bad_paths(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    for bad in (a_file / "results.db", a_file):  # under a file; a file that is no database
        with pytest.raises(StoreError) as info:
            Store(bad)
        assert "\n" not in str(info.value)
    with pytest.raises(StoreError, match="cannot open the results database nope://"):
        Store("nope://")


def test_resolve_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MPVGBENCH_DB", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_url(None) == f"sqlite:///{tmp_path}/results.db"
    monkeypatch.setenv("MPVGBENCH_DB", "other.db")
    assert resolve_url(None) == f"sqlite:///{tmp_path}/other.db"
    assert resolve_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    with Store() as s:
        assert s.is_sqlite and Path(s.where) == tmp_path / "other.db"


# ------------------------------------------------------------------------------- concurrency

def _claim_all(url: str, owner: str, keys: list[str], queue: Any) -> None:
    store = Store(url)
    queue.put((owner, [k for k in keys if store.claim(k, owner, stale_after_s=3600)]))
    store.close()


def test_two_processes_claim_each_key_once(db_url: str) -> None:
    jobs = [make_job(seed) for seed in range(40)]
    with Store(db_url) as store:
        store.register_jobs(jobs, "s")
    keys = [j.key for j in jobs]
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that imported torch
    queue = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(db_url, f"o{i}", order, queue))
             for i, order in enumerate((keys, keys[::-1]))]
    for p in procs:
        p.start()
    claimed = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sorted(claimed["o0"] + claimed["o1"]) == sorted(keys)
    assert not set(claimed["o0"]) & set(claimed["o1"])
    with Store(db_url) as store:
        assert {r.attempts for r in store.runs()} == {1}
        assert {r.key: r.owner for r in store.runs()} == {
            k: o for o, ks in claimed.items() for k in ks}


def test_helpers_for_the_cli_and_executors(store: Store, tmp_path: Path) -> None:
    done, failed, pending = make_job(0), make_job(1), make_job(2)
    store.register_jobs([done, failed, pending], "s")
    for job in (done, failed):
        assert store.claim(job.key, "o", stale_after_s=60)
    store.set_run_dir(pending.key, "/runs/x", executor="local")
    assert store.runs(keys=[pending.key])[0].run_dir == "/runs/x"
    store.ingest_run_dir(write_run_dir(tmp_path, done, final=70.0))
    store.mark_failed(failed.key, "o", "boom", "tb", kind="exception")
    assert store.statuses([done.key, failed.key, "nope"]) == {done.key: "finished", failed.key: "failed"}
    assert store.failure(failed.key) == {"error": "boom", "kind": "exception", "traceback_tail": "tb",
                                         "attempts": 1}
    assert store.failure(done.key) is None
    assert store.keys_with_prefix(done.key[:6]) == [done.key]
    assert store.keys_with_prefix("%") == [] and len(store.keys_with_prefix("")) == 3
    assert sorted(store.reset([done.key, failed.key, pending.key])) == sorted([done.key, failed.key])
    assert store.results_frame() == []  # a reset run has no result any more
    assert set(store.statuses([done.key, failed.key]).values()) == {"pending"}
