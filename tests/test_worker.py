"""Worker: a real ``kill -9`` mid-epoch then a rerun equals an uninterrupted run; error.json
kinds; the submitit wrapper; DDP through torchrun."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from mpvgbench import worker
from mpvgbench.config import Recipe, TrainConfig
from mpvgbench.errors import DataError, InfraError, NonFiniteError, NonFiniteLossError
from mpvgbench.rundir import read_checkpoint, read_json, read_jsonl
from mpvgbench.train import train_job as train
from tests.jobs import TIMING, prepare_job

ROOT = Path(__file__).resolve().parents[1]


def make_config(model: str = "vit_micro", **recipe: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        epochs=3, warmup_epochs=1, batch_size=64, lr=1e-3, lr_base_batch=None, ema=True, ema_decay=0.9,
    )
    base.update(recipe)
    return TrainConfig(
        model=model, method={"base": "mpvg"}, dataset="digits", img_size=8, num_classes=10, seed=1,
        recipe=Recipe(**base),
    )


def worker_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SUBMITIT_EXECUTOR"):
        env.pop(name, None)
    return env


def run_worker(run_dir: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mpvgbench.worker", str(run_dir)], cwd=ROOT, env=worker_env(**extra),
        capture_output=True, text=True, timeout=300,
    )


@pytest.mark.slow
def test_kill_9_mid_epoch_then_rerun_matches_uninterrupted(tmp_path: Path) -> None:
    # 10 steps of 64 digits per epoch: ~0.4 s an epoch on one core, long enough to land inside
    config = make_config(max_steps_per_epoch=10)
    baseline = train(config, tmp_path / "baseline", device="cpu")

    run = prepare_job(tmp_path, config)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpvgbench.worker", str(run)], cwd=ROOT,
        env=worker_env(MPVGBENCH_PROGRESS_INTERVAL_S="0"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                progress = read_json(run / "progress.json", missing_ok=True) or {}
            except ValueError:
                progress = {}
            if progress.get("epoch") == 2 and (progress.get("step") or 0) >= 2:
                break
            time.sleep(0.01)
        else:
            pytest.fail(f"worker never reached epoch 2: {proc.poll()=}")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert read_checkpoint(run)["epoch"] == 1  # type: ignore[index]  # killed inside epoch 2
    assert not (run / "result.json").exists() and not (run / "error.json").exists()

    done = run_worker(run)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((run / "result.json").read_text())
    for k in ("final_top1", "best_top1", "final_top5", "best_top5", "ema_final_top1", "epochs"):
        assert result[k] == pytest.approx(baseline[k], abs=1e-6), k
    rows = read_jsonl(run / "metrics.jsonl")
    rows0 = read_jsonl(tmp_path / "baseline" / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for r, r0 in zip(rows, rows0):
        for k in set(r0) - TIMING:
            assert r[k] == pytest.approx(r0[k], abs=1e-6), (r["epoch"], k)


def _prepare(tmp_path: Path, config: TrainConfig | None = None) -> Path:
    config = config or make_config(epochs=1, max_steps_per_epoch=2, eval_max_batches=1)
    return prepare_job(tmp_path, config)


def test_success_exit_0_and_stale_error_removed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _prepare(tmp_path)
    (run / "error.json").write_text("{}")
    assert worker.main([str(run)]) == 0
    assert not (run / "error.json").exists()
    result = json.loads((run / "result.json").read_text())
    assert result["key"] == json.loads((run / "job.json").read_text())["key"]
    assert "finished" in capsys.readouterr().out


def test_a_user_mistake_found_in_the_worker_is_recorded_as_such(tmp_path: Path) -> None:
    config = make_config(epochs=1).model_copy(update={"model": "no_such_model"})
    run = _prepare(tmp_path, config)
    assert worker.main([str(run)]) == 1
    err = json.loads((run / "error.json").read_text())
    assert err["kind"] == "user" and err["key"] == config.key()
    assert "\n" not in err["error"] and err["error"].startswith("unknown model 'no_such_model'")
    assert 0 < len(err["traceback_tail"].splitlines()) <= 20
    assert not (run / "result.json").exists()


def test_corrupted_config_is_an_error_record(tmp_path: Path) -> None:
    run = _prepare(tmp_path)
    (run / "config.json").write_text("{not json")
    assert worker.main([str(run)]) == 1
    err = json.loads((run / "error.json").read_text())
    assert err["kind"] == "user" and "config.json is corrupted" in err["error"]


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (NonFiniteLossError(2, 3, float("nan")), "nonfinite"),
        (NonFiniteError("non-finite val_loss (nan) after epoch 2", 2, None), "nonfinite"),
        (DataError("imagenet needs its data root; set data.roots.imagenet"), "user"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "oom"),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"), "oom"),
        (RuntimeError("CUDA error: out of memory"), "oom"),
        (InfraError("could not join the process group"), "infra"),
        (RuntimeError("boom\nsecond line"), "exception"),
    ],
)
def test_error_kinds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException, kind: str) -> None:
    import mpvgbench.train

    run = _prepare(tmp_path)
    (run / "progress.json").write_text(json.dumps({"epoch": 4, "step": 7}))

    def fail(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise exc

    monkeypatch.setattr(mpvgbench.train, "train_job", fail)
    with pytest.raises(type(exc)):
        worker.run_job(str(run))
    err = json.loads((run / "error.json").read_text())
    assert err["kind"] == kind and "\n" not in err["error"]
    assert set(err) == {"key", "kind", "error", "traceback_tail", "epoch", "step"}
    assert (err["epoch"], err["step"]) == {"nonfinite": (2, getattr(exc, "step", None))}.get(kind, (4, 7))
    assert err["error"].startswith(f"{type(exc).__name__}: ") == (kind != "user")  # bugs keep their type


def test_checkpointable_job_requeues_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import submitit

    job = worker.CheckpointableJob()
    delayed = job.checkpoint(str(tmp_path))
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert isinstance(delayed.function, worker.CheckpointableJob) and delayed.args == (str(tmp_path),)
    assert pickle.loads(pickle.dumps(delayed)).args == (str(tmp_path),)
    monkeypatch.setattr(worker, "run_job", lambda run_dir: {"key": run_dir})
    assert job(str(tmp_path)) == {"key": str(tmp_path)}


def test_submitit_multi_task_sets_up_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    class FakeEnv:
        num_tasks, global_rank, local_rank, job_id = 4, 3, 1, "12345_0"
        hostnames = ["node7", "node8"]

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        # setenv first: delenv of an absent variable records nothing to undo, and the values
        # setup_distributed writes would leak into later tests (WORLD_SIZE=4 -> a hang)
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(worker, "_submitit_env", lambda: FakeEnv())
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: calls.append(kw))
    assert worker.setup_distributed("cpu") is True
    assert calls == [{"backend": "gloo", "init_method": "env://"}]
    assert [os.environ[n] for n in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")] == [
        "3", "4", "1", "node7", str(20000 + 123450 % 20000),
    ]


def test_single_task_needs_no_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    assert worker.setup_distributed("auto") is False


@pytest.mark.slow
def test_ddp_two_processes_via_torchrun(tmp_path: Path) -> None:
    """2 gloo processes through torchrun's env vars: same files, same shapes as 1 process."""
    config = make_config(epochs=2, warmup_epochs=0, max_steps_per_epoch=2, eval_max_batches=2)
    single = _prepare(tmp_path / "single", config)
    ddp = _prepare(tmp_path / "ddp", config)
    assert worker.main([str(single)]) == 0
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "mpvgbench.worker", str(ddp)],
        cwd=ROOT, env=worker_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r1 = json.loads((single / "result.json").read_text())
    r2 = json.loads((ddp / "result.json").read_text())
    assert r1.keys() == r2.keys() and r2["epochs"] == 2 and r2["env"]["num_processes"] == 2
    rows1, rows2 = read_jsonl(single / "metrics.jsonl"), read_jsonl(ddp / "metrics.jsonl")
    assert [r.keys() for r in rows2] == [r.keys() for r in rows1]
    assert read_checkpoint(ddp)["world_size"] == 2  # type: ignore[index]
    assert not (ddp / "error.json").exists()
