"""The classification task: its metrics lines and result, exact resume with loader workers,
EMA, other recipes, config errors found before training, checkpoints of other runs, init_from.

Real vit_micro on digits, a few steps per epoch so each training run takes about a second.
(What every task shares, resume and checkpoints, is tested once per task in test_loop.py.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from mpvgbench.errors import ConfigError, DataError, NonFiniteError
from mpvgbench.rundir import RunDirError, atomic_torch_save, read_checkpoint, read_jsonl
from mpvgbench.train import train_job
from mpvgbench.train.init_weights import load_init_weights
from tests.train.cases import Interrupt, assert_same_run, interrupt_at, make_config


def test_metrics_lines_and_result_hold_top1_top5_and_the_ema(tmp_path: Path) -> None:
    result = train_job(make_config(epochs=2, max_steps_per_epoch=2), tmp_path, device="cpu")
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert set(rows[0]) == {
        "epoch", "iteration", "train_loss", "val_loss", "top1", "top5", "lr", "epoch_time_s",
        "eval_time_s", "images_per_s", "ema_val_loss", "ema_top1", "ema_top5",
    }
    assert rows[-1]["lr"] < rows[0]["lr"]  # per-update cosine after one warmup epoch
    assert result["final_top5"] == rows[-1]["top5"] and result["best_top5"] == max(r["top5"] for r in rows)
    assert result["ema_final_top1"] == rows[-1]["ema_top1"]
    assert result["env"]["num_processes"] == 1 and result["env"]["device"] == "cpu"
    assert json.loads((tmp_path / "result.json").read_text()) == result


@pytest.mark.parametrize("num_workers", [0, 1])
def test_mid_epoch_resume_is_exact_with_dataloader_workers(tmp_path: Path, num_workers: int) -> None:
    # worker processes augment with their own RNGs, seeded from the per-epoch loader generator;
    # the resumed epoch replays its consumed batches so they advance exactly as before
    config = make_config(epochs=2, max_steps_per_epoch=3)
    kw: dict[str, Any] = dict(device="cpu", num_workers=num_workers, checkpoint_every_steps=1)
    baseline = train_job(config, tmp_path / "a", **kw)
    with pytest.raises(Interrupt):
        train_job(config, tmp_path / "b", progress_callback=interrupt_at(2, 3), **kw)
    assert read_checkpoint(tmp_path / "b")["loop"]["step"] == 2  # type: ignore[index]
    assert_same_run(tmp_path / "a", tmp_path / "b", baseline, train_job(config, tmp_path / "b", **kw))


@pytest.mark.parametrize(
    "recipe",
    [
        dict(sched="step", optimizer="sgd", repeated_aug=False, mixup=0, cutmix=0, grad_clip=1.0, ema=False),
        dict(sched="none", label_smoothing=0, mixup=0, cutmix=0, ema=False, warmup_epochs=0),
    ],
)
def test_other_recipes_run(tmp_path: Path, recipe: dict[str, Any]) -> None:
    config = make_config(epochs=2, max_steps_per_epoch=2, **recipe)
    result = train_job(config, tmp_path, device="cpu")
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert result["epochs"] == 2 and "ema_final_top1" not in result and "ema_top1" not in rows[0]
    if recipe["sched"] == "none":
        assert [r["lr"] for r in rows] == [config.recipe.scaled_lr()] * 2


def test_a_huge_lr_is_a_nonfinite_failure_not_a_result(tmp_path: Path) -> None:
    # one update at lr 1e30 leaves finite weights (~1e30) after a finite loss; the validation
    # loss is NaN: such a run must not count as finished
    config = make_config(epochs=1, max_steps_per_epoch=1, lr=1e30, warmup_epochs=0, sched="none", ema=False)
    with pytest.raises(NonFiniteError, match=r"non-finite val_loss \(nan\) after epoch 1"):
        train_job(config, tmp_path, device="cpu")
    assert not (tmp_path / "result.json").exists()


def test_config_errors_are_user_errors_naming_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="even per-process batch, got 7; change recipe.batch_size"):
        train_job(make_config(batch_size=7), tmp_path, device="cpu")
    with pytest.raises(DataError, match="digits training set .* smaller than one per-process batch"):
        train_job(make_config(batch_size=4096, mixup=0, cutmix=0), tmp_path, device="cpu")
    with pytest.raises(ConfigError, match="compile='yes'; use auto, on or off"):
        train_job(make_config(), tmp_path, device="cpu", compile="yes")


def test_misspelt_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="devcie"):
        train_job(make_config(), tmp_path, devcie="cpu")  # type: ignore[call-arg]


def test_corrupted_or_foreign_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.pt").write_bytes(b"\x00" * 20)
    with pytest.raises(RunDirError, match="checkpoint.pt is corrupted .*delete it to restart"):
        train_job(make_config(), tmp_path, device="cpu")
    atomic_torch_save(tmp_path / "checkpoint.pt", {"model": {}, "key": "0123456789abcdef"})
    with pytest.raises(RunDirError, match="belongs to run 0123456789abcdef"):
        train_job(make_config(), tmp_path, device="cpu")


def test_leftover_temp_files_of_an_interrupted_save_are_removed_at_start(tmp_path: Path) -> None:
    (tmp_path / ".checkpoint.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    train_job(make_config(epochs=1, max_steps_per_epoch=1, eval_max_batches=1), tmp_path, device="cpu")
    assert not list(tmp_path.glob(".*.tmp")) and (tmp_path / "result.json").exists()


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


def test_a_fine_tune_starts_from_its_parent(tmp_path: Path) -> None:
    parent = make_config(epochs=1, max_steps_per_epoch=1, eval_max_batches=1)
    train_job(parent, tmp_path / parent.key(), device="cpu")
    child = make_config(epochs=1, max_steps_per_epoch=1, eval_max_batches=1, lr=1e-30, warmup_epochs=0,
                        sched="none", ema=False).model_copy(update={"init_from": parent.key()})
    train_job(child, tmp_path / child.key(), device="cpu")  # lr 1e-30: the weights stay the parent's
    ckpt_p, ckpt_c = read_checkpoint(tmp_path / parent.key()), read_checkpoint(tmp_path / child.key())
    assert ckpt_p is not None and ckpt_c is not None
    for name, tensor in ckpt_p["model"].items():
        assert torch.allclose(ckpt_c["model"][name], tensor, atol=1e-7), name
