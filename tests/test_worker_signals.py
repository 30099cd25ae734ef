"""A Slurm requeue/time-out landing anywhere, for either task: submitit's last-time-out error
during checkpoint load, save or eval is a ``timeout`` failure that says where, never a corrupted
checkpoint; the requeue signal first gets a checkpoint written at the next step boundary."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import submitit
import torch

import mpvgbench.train.bookkeeping
import mpvgbench.train.checkpoint
import mpvgbench.train.dense
from mpvgbench import worker
from mpvgbench.rundir import atomic_torch_save, read_jsonl
from mpvgbench.train import task_for
from tests.downstream import tiny
from tests.jobs import prepare_job
from tests.train.cases import CASES, TaskCase

LAST_TIMEOUT = "Job not requeued because: timed-out too many times."


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch: pytest.MonkeyPatch) -> Any:
    # run_job applies its thread plan to this (test) process: put everything back afterwards
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(name, os.environ.get(name, "1"))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: TaskCase) -> Path:
    """The case's job prepared as an executor does; the worker builds the tiny dense model."""
    monkeypatch.setattr(mpvgbench.train.dense, "build_dense_model", tiny.tiny_segmenter)
    return prepare_job(tmp_path, case.config)


def _time_out(*args: Any, **kwargs: Any) -> Any:
    raise submitit.core.utils.UncompletedJobError(LAST_TIMEOUT)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("where", ["checkpoint load", "checkpoint save", "eval"])
def test_last_timeout_anywhere_is_a_timeout_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    where: str, case: TaskCase) -> None:
    run = _run_dir(tmp_path, monkeypatch, case)
    if where == "checkpoint load":
        atomic_torch_save(run / "checkpoint.pt", {"model": {}, "key": "x"})  # a file to be loading
        monkeypatch.setattr(torch, "load", _time_out)
    elif where == "checkpoint save":
        monkeypatch.setattr(mpvgbench.train.checkpoint, "atomic_torch_save", _time_out)
    else:
        monkeypatch.setattr(task_for(case.config), "evaluate", _time_out)
    with pytest.raises(submitit.core.utils.UncompletedJobError):
        worker.run_job(str(run))
    err = json.loads((run / "error.json").read_text())
    assert err["kind"] == "timeout"
    assert err["error"].startswith(f"Slurm time limit reached during {where}: ") and LAST_TIMEOUT in err["error"]
    assert "corrupted" not in err["error"]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_full_disk_while_saving_is_infra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: TaskCase) -> None:
    run = _run_dir(tmp_path, monkeypatch, case)

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mpvgbench.train.checkpoint, "atomic_torch_save", full)
    with pytest.raises(OSError):
        worker.run_job(str(run))
    err = json.loads((run / "error.json").read_text())
    assert err["kind"] == "infra" and err["error"].startswith("during checkpoint save: OSError")
    assert len(read_jsonl(run / "metrics.jsonl")) == 1  # the interval trained; only the save failed


@pytest.fixture
def fake_submitit(monkeypatch: pytest.MonkeyPatch) -> Any:
    calls: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    monkeypatch.setattr(worker, "_submitit_env", lambda: object())
    mpvgbench.train.bookkeeping.checkpoint_requested.clear()
    yield calls
    signal.signal(signal.SIGUSR2, previous)
    mpvgbench.train.bookkeeping.checkpoint_requested.clear()


def test_requeue_signal_waits_for_the_checkpoint(fake_submitit: list[int]) -> None:
    after_checkpoint = worker._defer_requeue_signal()
    assert after_checkpoint is not None
    os.kill(os.getpid(), signal.SIGUSR2)
    assert mpvgbench.train.bookkeeping.checkpoint_requested.is_set() and fake_submitit == []
    after_checkpoint()  # what the training loop calls once the checkpoint is on disk
    assert fake_submitit == [signal.SIGUSR2]


def test_requeue_signal_goes_through_when_no_step_boundary_comes(
    fake_submitit: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "REQUEUE_GRACE_S", 0.05)
    assert worker._defer_requeue_signal() is not None
    os.kill(os.getpid(), signal.SIGUSR2)
    deadline = time.monotonic() + 5
    while not fake_submitit and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake_submitit == [signal.SIGUSR2]  # submitit's handler, re-sent after the grace period


def test_outside_submitit_signals_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "_submitit_env", lambda: None)
    before = signal.getsignal(signal.SIGUSR2)
    assert worker._defer_requeue_signal() is None and signal.getsignal(signal.SIGUSR2) is before
