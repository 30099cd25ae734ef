"""Trainer: exact resume, metrics without duplicates, non-finite loss, init_from.

Real vit_micro on digits, a few steps per epoch so each training run takes about a second.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

from mpvgbench.config import Recipe, TrainConfig
from mpvgbench.rundir import RunDirError, atomic_torch_save, read_checkpoint, read_jsonl
from mpvgbench.trainer import NonFiniteLossError, train
from mpvgbench.training_parts import load_init_weights

TIMING = {"epoch_time_s", "images_per_s"}  # the only fields allowed to differ between runs


def make_config(**recipe: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        epochs=3, warmup_epochs=1, batch_size=32, lr=1e-3, lr_base_batch=None, min_lr=1e-5,
        ema=True, ema_decay=0.9, max_steps_per_epoch=4, eval_max_batches=2, drop_path=0.1,
    )
    base.update(recipe)
    return TrainConfig(
        model="vit_micro", method={"base": "mpvg"}, dataset="digits", img_size=8, num_classes=10,
        seed=3, recipe=Recipe(**base),
    )


class Interrupt(Exception):
    pass


def interrupt_at(epoch: int, step: int):  # noqa: ANN201
    def callback(progress: dict[str, Any]) -> None:
        if progress["epoch"] == epoch and progress["step"] == step:
            raise Interrupt

    return callback


def comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def assert_same_run(a: Path, b: Path, result_a: dict[str, Any], result_b: dict[str, Any]) -> None:
    rows_a, rows_b = read_jsonl(a / "metrics.jsonl"), read_jsonl(b / "metrics.jsonl")
    assert [r["epoch"] for r in rows_b] == [r["epoch"] for r in rows_a]
    for ra, rb in zip(comparable(rows_a), comparable(rows_b)):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], abs=1e-6), k
    for k in ("final_top1", "best_top1", "final_top5", "best_top5", "ema_final_top1", "epochs"):
        assert result_a[k] == pytest.approx(result_b[k], abs=1e-6), k
    wa = read_checkpoint(a)["model"]  # type: ignore[index]
    wb = read_checkpoint(b)["model"]  # type: ignore[index]
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6, rtol=0) for k in wa)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    run = tmp_path_factory.mktemp("baseline")
    return run, train(make_config(), run, device="cpu")


def test_uninterrupted_run_files(baseline: tuple[Path, dict[str, Any]]) -> None:
    run, result = baseline
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert set(rows[0]) == {
        "epoch", "train_loss", "val_loss", "top1", "top5", "lr", "epoch_time_s", "images_per_s",
        "ema_val_loss", "ema_top1", "ema_top5",
    }
    assert rows[-1]["lr"] < rows[0]["lr"]  # per-update cosine after one warmup epoch
    progress = json.loads((run / "progress.json").read_text())
    assert progress["epoch"] == 3 and progress["step"] == progress["steps_per_epoch"] == 4
    assert json.loads((run / "result.json").read_text()) == result
    assert result["epochs"] == 3 and result["final_top1"] == rows[-1]["top1"]
    assert result["best_top1"] == max(r["top1"] for r in rows)
    assert result["env"]["num_processes"] == 1 and result["env"]["device"] == "cpu"
    assert read_checkpoint(run)["epoch"] == 3  # type: ignore[index]


def test_resume_after_interruption_is_exact(baseline: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    run0, result0 = baseline
    with pytest.raises(Interrupt):
        train(make_config(), tmp_path, device="cpu", progress_callback=interrupt_at(2, 3))
    assert [r["epoch"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1]
    assert read_checkpoint(tmp_path)["epoch"] == 1  # type: ignore[index]
    assert not (tmp_path / "result.json").exists()
    result = train(make_config(), tmp_path, device="cpu")
    assert_same_run(run0, tmp_path, result0, result)


def test_metrics_not_duplicated_when_killed_between_metrics_and_checkpoint(
    baseline: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    run0, result0 = baseline
    with pytest.raises(Interrupt):
        train(make_config(), tmp_path, device="cpu", progress_callback=interrupt_at(2, 1))
    # as if killed after epoch 2's metrics line was written but before its checkpoint
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    stale = {**rows[0], "epoch": 2, "top1": -1.0}
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*rows, stale]))
    result = train(make_config(), tmp_path, device="cpu")
    assert [r["epoch"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    assert_same_run(run0, tmp_path, result0, result)


def test_finished_run_rerun_is_idempotent(baseline: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    run0, result0 = baseline
    shutil.copytree(run0, tmp_path, dirs_exist_ok=True)
    result = train(make_config(), tmp_path, device="cpu")  # nothing left to train
    assert_same_run(run0, tmp_path, result0, result)


class NaNAfter(nn.Module):
    """Wraps a model; its ``n``-th training forward returns NaN."""

    def __init__(self, inner: nn.Module, n: int) -> None:
        super().__init__()
        self.inner, self.n, self.calls = inner, n, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls == self.n:
                out = out * float("nan")
        return out


def test_nonfinite_loss_names_epoch_and_step(tmp_path: Path) -> None:
    from mpvgbench.trainer import build_model_for_config

    def factory(config: TrainConfig, **kw: Any) -> nn.Module:
        return NaNAfter(build_model_for_config(config, **kw), n=4 + 3)  # 4 steps per epoch

    with pytest.raises(NonFiniteLossError) as err:
        train(make_config(), tmp_path, device="cpu", model_factory=factory)
    assert (err.value.epoch, err.value.step) == (2, 3)
    assert "epoch 2 step 3" in str(err.value) and "\n" not in str(err.value)
    assert read_checkpoint(tmp_path)["epoch"] == 1  # type: ignore[index]  # NaN epoch never saved
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 1


def test_corrupted_or_foreign_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.pt").write_bytes(b"\x00" * 20)
    with pytest.raises(RunDirError, match="checkpoint.pt is corrupted .*delete it to restart"):
        train(make_config(), tmp_path, device="cpu")
    atomic_torch_save(tmp_path / "checkpoint.pt", {"model": {}, "key": "0123456789abcdef"})
    with pytest.raises(RunDirError, match="belongs to run 0123456789abcdef"):
        train(make_config(), tmp_path, device="cpu")


def test_batch_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even per-process batch"):
        train(make_config(batch_size=7), tmp_path, device="cpu")
    with pytest.raises(ValueError, match="smaller than one per-process batch"):
        train(make_config(batch_size=4096, mixup=0, cutmix=0), tmp_path, device="cpu")


def test_init_from_skips_head_and_resamples_pos_embed(tmp_path: Path) -> None:
    from mpvgbench.models import build_model

    src = build_model("vit_micro", "mpvg", num_classes=10)
    atomic_torch_save(tmp_path / "src" / "checkpoint.pt", {"model": src.state_dict()})
    dst = build_model("vit_micro", "mpvg", num_classes=5, img_size=12)
    fresh = load_init_weights(dst, "src", tmp_path / "dst")  # a job key: sibling run dir
    assert fresh and all(k.startswith("head") for k in fresh)
    src_sd, dst_sd = src.state_dict(), dst.state_dict()
    pos = [k for k in src_sd if src_sd[k].shape != dst_sd[k].shape and not k.startswith("head")]
    assert pos, "a 12x12 input should change the position embedding's shape"
    for k, v in src_sd.items():
        if not k.startswith("head") and k not in pos:
            assert torch.equal(v, dst_sd[k]), k
    with pytest.raises(RunDirError, match="init_from 'nope': no checkpoint.pt"):
        load_init_weights(dst, "nope", tmp_path / "dst")

# DDP (2 gloo processes) is exercised end to end through torchrun in test_worker.py.


def test_resume_is_exact_with_dataloader_workers(tmp_path: Path) -> None:
    # worker processes augment with their own RNGs, seeded from the per-epoch loader generator
    config = make_config(epochs=2, max_steps_per_epoch=3)
    baseline = train(config, tmp_path / "a", device="cpu", num_workers=1)
    with pytest.raises(Interrupt):
        train(config, tmp_path / "b", device="cpu", num_workers=1, progress_callback=interrupt_at(2, 2))
    resumed = train(config, tmp_path / "b", device="cpu", num_workers=1)
    assert_same_run(tmp_path / "a", tmp_path / "b", baseline, resumed)


@pytest.mark.parametrize(
    "recipe",
    [
        dict(sched="step", optimizer="sgd", repeated_aug=False, mixup=0, cutmix=0, grad_clip=1.0, ema=False),
        dict(sched="none", label_smoothing=0, mixup=0, cutmix=0, ema=False, warmup_epochs=0),
    ],
)
def test_other_recipes_run(tmp_path: Path, recipe: dict[str, Any]) -> None:
    config = make_config(epochs=2, max_steps_per_epoch=2, **recipe)
    result = train(config, tmp_path, device="cpu")
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert result["epochs"] == 2 and "ema_final_top1" not in result and "ema_top1" not in rows[0]
    if recipe["sched"] == "none":
        assert [r["lr"] for r in rows] == [config.recipe.scaled_lr()] * 2
