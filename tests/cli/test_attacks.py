"""Issue "Nothing lost, nothing run twice, under attack": one test per way main used to break.

docs/reliability.md maps each item to its test here (and to tests/test_checkpoint.py,
tests/test_worker_signals.py, tests/train/test_loop.py for the training loop's items).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from mpvgbench.executors.base import RunContext, new_owner_id, process_start_time
from mpvgbench.executors.local import LocalExecutor, owner_is_alive
from mpvgbench.spec import SpecError, load_spec
from mpvgbench.store import Store
from tests.cli.conftest import fabricate_run, fake_result, invoke, jobs_of, micro_config, write_spec


def one_line_error(res: object) -> str:
    output = res.output  # type: ignore[attr-defined]
    assert res.exit_code == 2, output  # type: ignore[attr-defined]
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    assert "Traceback" not in output
    return lines[0]


# ----------------------------------------------------------------- 1, 13: inputs bounded


def test_1_a_yaml_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    levels = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    text = "name: x\nmodels: [vit_micro]\nmethods: [mpvg]\ndatasets: [digits]\n" + "\n".join(levels)
    path = tmp_path / "bomb.yaml"
    path.write_text(text.replace("a8: &a8", "description:"))
    start = time.monotonic()
    with pytest.raises(SpecError, match="expands to over"):
        load_spec(path)
    assert time.monotonic() - start < 30  # minutes and gigabytes before


def test_1_deep_nesting_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("name: x\nmodels: " + "[" * 5000)
    with pytest.raises(SpecError, match="nested deeper than"):
        load_spec(path)


def test_13_yaml_tags_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "tag.yaml"
    path.write_text("name: x\nmodels: !!set {vit_micro: null}\nmethods: [mpvg]\ndatasets: [digits]\n")
    with pytest.raises(SpecError, match="YAML tags are not allowed"):
        load_spec(path)


def test_1_error_messages_never_render_a_huge_value() -> None:
    from mpvgbench.errors import short_repr

    shared: list = ["x" * 10] * 9
    for _ in range(12):  # 9**12 leaves if rendered in full
        shared = [shared] * 9
    assert short_repr(shared) == "a list of 9 item(s)"


# -------------------------------------------------------- 2, 9: the coordinator records


def _claimed(tmp_path: Path, owner: str, *, heartbeat_age_s: float = 0.0) -> tuple[Path, str, Path]:
    spec = write_spec(tmp_path / "spec.yaml")
    (job,) = jobs_of(spec)
    run_dir = tmp_path / "runs" / job.key
    run_dir.mkdir(parents=True)
    with Store(tmp_path / "results.db") as store:
        store.register_jobs([job], "tiny")
        assert store.claim(job.key, owner, stale_after_s=120, executor="local", run_dir=str(run_dir))
        if heartbeat_age_s:
            import sqlalchemy as sa

            from mpvgbench import store_schema as S

            with store._engine.begin() as conn:
                conn.execute(sa.update(S.runs).values(heartbeat_at=time.time() - heartbeat_age_s))
    (run_dir / "config.json").write_text(json.dumps(job.config.model_dump(mode="json")))
    (run_dir / "result.json").write_text(json.dumps(fake_result(job.key, 61.0)))
    return spec, job.key, run_dir


def test_2_status_and_report_never_record_a_live_coordinators_run(tmp_path: Path) -> None:
    spec, key, _ = _claimed(tmp_path, new_owner_id())  # this process: alive, heartbeat fresh
    for command in (["status", spec], ["report", "--spec", spec]):
        res = invoke(*command)
        assert res.exit_code == 0, res.output
        with Store(tmp_path / "results.db") as store:
            assert store.statuses([key]) == {key: "running"}  # left to its coordinator


def test_2_an_orphaned_run_is_adopted_by_status(tmp_path: Path) -> None:
    dead = f"{socket.gethostname()}:{2**22 + 11}:gone"
    spec, key, _ = _claimed(tmp_path, dead)
    assert invoke("status", spec).exit_code == 0
    with Store(tmp_path / "results.db") as store:
        assert store.statuses([key]) == {key: "finished"}


def test_9_a_finished_but_unrecorded_run_is_recorded_not_retrained(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.yaml", seeds=[0, 1])
    jobs = jobs_of(spec)
    for job in jobs:  # a new database next to an old runs dir; or a kill after result.json
        run_dir = tmp_path / "runs" / job.key
        run_dir.mkdir(parents=True)
        (run_dir / "config.json").write_text(json.dumps(job.config.model_dump(mode="json")))
        (run_dir / "result.json").write_text(json.dumps(fake_result(job.key, 70.0)))
    res = invoke("run", spec, "--executor", "debug")
    assert res.exit_code == 0, res.output
    assert "2 finished, 0 failed, 0 to run" in res.output  # no worker started
    assert not any((tmp_path / "runs" / job.key / "stdout.log").exists() for job in jobs)


# --------------------------------------------------------------------- 3: --force holds


def test_3_a_killed_force_still_forces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = write_spec(tmp_path / "spec.yaml")
    (job,) = jobs_of(spec)
    with Store(tmp_path / "results.db") as store:
        fabricate_run(store, tmp_path / "runs", job.config, top1=33.0, spec_name="tiny")
    (tmp_path / "runs" / job.key / "checkpoint.pt").write_bytes(b"old weights")

    def killed(self: Store, keys: object, **kw: object) -> list[str]:
        raise KeyboardInterrupt  # the kill lands between the files and the database

    with monkeypatch.context() as patch:  # not monkeypatch.undo(): that would undo the chdir too
        patch.setattr(Store, "reset", killed)
        invoke("run", spec, "--force", "--executor", "debug")
    assert not (tmp_path / "runs" / job.key / "checkpoint.pt").exists()
    with Store(tmp_path / "results.db") as store:
        assert store.statuses([job.key]) == {job.key: "finished"}  # so the next --force resets it
    res = invoke("run", spec, "--force", "--executor", "debug")
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "runs" / job.key / "result.json").read_text())
    assert result["final_top1"] != 33.0  # trained anew, not the old result re-read


# ------------------------------------------------------------------ 5: damaged database


def test_5_a_damaged_sqlite_page_is_one_line_for_every_command(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.yaml", seeds=list(range(40)))
    with Store(tmp_path / "results.db") as store:
        for job in jobs_of(spec):
            fabricate_run(store, tmp_path / "runs", job.config, spec_name="tiny")
    db = tmp_path / "results.db"
    data = bytearray(db.read_bytes())
    page = 4096
    assert len(data) > 6 * page
    for offset in range(2 * page, len(data) - page, page):  # every table page, not the header
        data[offset + 8: offset + 200] = os.urandom(192)
    db.write_bytes(bytes(data))
    for command in (["status", "--all"], ["report"], ["run", spec, "--executor", "debug"]):
        line = one_line_error(invoke(*command))
        assert "results.db" in line and ("damaged" in line or "check the --db path" in line), line


# ------------------------------------------------------------------ 6: runs dir unusable


@pytest.mark.parametrize("runs_dir", ["afile", "/dev/null", "/dev/null/x"])
def test_6_an_unusable_runs_dir_fails_before_anything_is_stored(tmp_path: Path, runs_dir: str) -> None:
    (tmp_path / "afile").write_text("x")
    spec = write_spec(tmp_path / "spec.yaml")
    line = one_line_error(invoke("run", spec, "--runs-dir", runs_dir))
    assert "cannot hold run directories" in line
    assert not (tmp_path / "results.db").exists()


# ----------------------------------------------------- 7, 16: claims fenced by liveness


def test_7_a_stale_claim_is_not_taken_while_its_worker_still_trains(tmp_path: Path) -> None:
    other = f"{socket.gethostname()}:1:stopped"  # pid 1 lives: a SIGSTOPped coordinator looks so
    spec, key, run_dir = _claimed(tmp_path, other, heartbeat_age_s=600)
    (run_dir / "result.json").unlink()
    (run_dir / "progress.json").write_text('{"epoch": 1, "step": 3}')  # the worker reports
    (job,) = jobs_of(spec)
    ctx = RunContext(runs_root=tmp_path / "runs", stale_after_s=120)
    executor = LocalExecutor()
    with Store(tmp_path / "results.db") as store:
        assert not executor._claim(job, store, new_owner_id(), ctx)
        old = time.time() - 600
        os.utime(run_dir / "progress.json", (old, old))  # the worker went quiet too
        assert executor._claim(job, store, new_owner_id(), ctx)


def test_16_a_reused_pid_is_not_mistaken_for_the_dead_coordinator() -> None:
    mine = new_owner_id()
    assert owner_is_alive(mine)
    host, pid, rest = mine.split(":", 2)
    started = process_start_time(int(pid))
    assert started is not None and rest.endswith(f"@{started}")
    reused = f"{host}:{pid}:{rest.split('@')[0]}@{started - 1}"  # same pid, an earlier process
    assert not owner_is_alive(reused)


# ------------------------------------------------------------- 11: values that validate


@pytest.mark.parametrize("field, value, words", [
    ("recipe.lr", ".inf", "finite number"),
    ("recipe.weight_decay", ".nan", "finite number"),
    ("recipe.mixup", ".inf", "finite number"),
    ("recipe.epochs", "true", "valid integer"),
    ("recipe.train_crop_scale", "[5, -1]", "0 < min <= max <= 1"),
    ("dataset_overrides.digits.num_classes", "3", "digits has 10 classes"),
])
def test_11_values_that_used_to_validate_are_one_line_errors(tmp_path: Path, field: str, value: str,
                                                             words: str) -> None:
    spec = write_spec(tmp_path / "spec.yaml")
    line = one_line_error(invoke("run", spec, "--set", f"{field}={value}"))
    assert words in line, line
    assert not (tmp_path / "results.db").exists()


def test_11_init_from_a_key_that_exists_nowhere(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.yaml", init_from="0123456789abcdef")
    line = one_line_error(invoke("run", spec))
    assert "init_from run 0123456789abcdef is not in the database" in line


# ---------------------------------------------------------------------- 14, 15: the rest


def test_14_logs_of_a_deleted_run_dir_say_so(tmp_path: Path) -> None:
    import shutil

    with Store(tmp_path / "results.db") as store:
        key = fabricate_run(store, tmp_path / "runs", micro_config(), spec_name="tiny")
    shutil.rmtree(tmp_path / "runs" / key)
    line = one_line_error(invoke("logs", key[:8]))
    assert "is gone" in line and "--force" in line


def test_15_a_huge_matrix_is_refused_before_it_is_built(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.yaml", seeds=list(range(60_000)), methods=["default", "mpvg"])
    line = one_line_error(invoke("run", spec, "--dry-run"))
    assert "120,000 cells" in line and "limit is 100,000" in line


def test_15_status_lists_at_most_twenty_pending_rows(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.yaml", seeds=list(range(500)))
    with Store(tmp_path / "results.db") as store:
        store.register_jobs(jobs_of(spec), "tiny")
    res = invoke("status")
    assert res.exit_code == 0 and res.output.startswith("500 pending\n")
    assert "... and 480 more pending (mpvgbench status --all)" in res.output
    assert len(res.output.splitlines()) < 30


def test_7_on_this_host_the_run_dirs_lock_decides(tmp_path: Path) -> None:
    """A worker holding the run directory's lock fences its claim even when quiet; once it is
    gone the claim is free, even with fresh progress; a worker.json naming a live process that
    is no worker (pid 1 here) fences nothing (it used to make `run` wait forever)."""
    import subprocess
    import sys

    from mpvgbench.executors.local import record_worker, worker_is_training
    from mpvgbench.executors.witness import try_lock

    run_dir = tmp_path / "run"
    lock = try_lock(run_dir)
    assert lock is not None
    (run_dir / "progress.json").write_text("{}")  # fresh
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], pass_fds=(lock.fileno(),))
    lock.close()  # the child holds it now, as a worker does
    try:
        record_worker(run_dir, alive.pid)
        old = time.time() - 600
        os.utime(run_dir / "progress.json", (old, old))
        assert worker_is_training(run_dir, within_s=120)
        assert try_lock(run_dir) is None  # a second coordinator (another database) cannot start it
    finally:
        alive.kill()
        alive.wait()
    (run_dir / "progress.json").write_text("{}")  # fresh again, but the worker is gone
    assert not worker_is_training(run_dir, within_s=120)
    record_worker(run_dir, 1)  # a live process that is not a worker
    assert not worker_is_training(run_dir, within_s=0)
    (run_dir / "worker.json").write_text("[1, 2]")  # damaged: a list
    assert not worker_is_training(run_dir, within_s=0)
