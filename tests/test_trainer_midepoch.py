"""Mid-epoch checkpoints (every N steps / M minutes / on request) and their exact resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mpvgbench.rundir import read_checkpoint
from mpvgbench.trainer import request_checkpoint, train
from tests.test_trainer import Interrupt, assert_same_run, interrupt_at, make_config


def _loop(run: Path) -> dict[str, Any]:
    return read_checkpoint(run)["loop"]  # type: ignore[index]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_resume_from_a_mid_epoch_checkpoint_is_exact(tmp_path: Path, num_workers: int) -> None:
    # 4 steps an epoch, a checkpoint every 2 steps (the count restarts at each checkpoint): the
    # last one before the interruption at epoch 2 step 3 is after epoch 2 step 2 (update 6).
    # drop_path, mixup/cutmix and (with a worker) augmentation all draw random numbers, so a
    # resume that replayed the wrong batches or RNG states would not match the baseline.
    config = make_config(epochs=2, max_steps_per_epoch=4)
    baseline = train(config, tmp_path / "a", device="cpu", num_workers=num_workers)
    kw: dict[str, Any] = dict(device="cpu", num_workers=num_workers, checkpoint_every_steps=2)
    with pytest.raises(Interrupt):
        train(config, tmp_path / "b", progress_callback=interrupt_at(2, 3), **kw)
    loop = _loop(tmp_path / "b")
    assert (loop["epoch"], loop["step"], loop["num_updates"]) == (1, 2, 6)  # inside epoch 2
    assert loop["epoch_loss_count"] == 2
    resumed = train(config, tmp_path / "b", **kw)
    assert_same_run(tmp_path / "a", tmp_path / "b", baseline, resumed)


def test_time_based_checkpoints(tmp_path: Path) -> None:
    config = make_config(epochs=1, max_steps_per_epoch=4)
    with pytest.raises(Interrupt):
        train(config, tmp_path, device="cpu", checkpoint_every_min=0.0, progress_callback=interrupt_at(1, 3))
    assert (_loop(tmp_path)["epoch"], _loop(tmp_path)["step"]) == (0, 3)  # every step is due
    with pytest.raises(Interrupt):
        train(config, tmp_path / "never", device="cpu", checkpoint_every_min=None,
              progress_callback=interrupt_at(1, 3))
    assert read_checkpoint(tmp_path / "never") is None


def test_requested_checkpoint_is_written_at_the_next_step_then_reported(tmp_path: Path) -> None:
    config = make_config(epochs=1, max_steps_per_epoch=4)
    seen: list[dict[str, Any]] = []

    def ask_at_step_1(progress: dict[str, Any]) -> None:
        if progress["step"] == 1:
            request_checkpoint()  # what the Slurm signal handler does

    def requeue() -> None:
        seen.append(_loop(tmp_path))  # the checkpoint exists when the requeue runs
        raise Interrupt

    with pytest.raises(Interrupt):
        train(config, tmp_path, device="cpu", checkpoint_every_min=None, progress_callback=ask_at_step_1,
              on_requested_checkpoint=requeue)
    assert [(s["epoch"], s["step"]) for s in seen] == [(0, 2)]
    result = train(config, tmp_path, device="cpu")  # resumes; the request was consumed
    assert result["epochs"] == 1


def test_leftover_temp_files_of_an_interrupted_save_are_removed_at_start(tmp_path: Path) -> None:
    (tmp_path / ".checkpoint.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    train(make_config(epochs=1, max_steps_per_epoch=1, eval_max_batches=1), tmp_path, device="cpu")
    assert not list(tmp_path.glob(".*.tmp")) and (tmp_path / "result.json").exists()
