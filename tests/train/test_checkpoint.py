"""train/checkpoint.py: what a checkpoint holds (one place), prefix-free weights, checksum, key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mpvgbench.train.checkpoint import LoopState, checkpoint_payload, plain_state_dict, restore_checkpoint
from mpvgbench.models import build_model
from mpvgbench.rundir import RunDirError, atomic_torch_save, read_checkpoint


def _parts() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = build_model("vit_micro", "mpvg", num_classes=10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_payload_roundtrip_restores_state_and_modules(tmp_path: Path) -> None:
    model, optimizer = _parts()
    state = LoopState(epoch=2, step=3, num_updates=11, rows=[{"epoch": 1, "top1": 5.0}],
                      best={"top1": 5.0}, wall_time_s=1.5, epoch_loss_sum=6.0, epoch_loss_count=3)
    payload = checkpoint_payload("k" * 16, state, {"model": model, "optimizer": optimizer, "scheduler": None,
                                                   "ema": None}, world_size=1)
    assert "scaler" not in payload and "ema_sr_generator" not in payload
    atomic_torch_save(tmp_path / "checkpoint.pt", payload)
    fresh, fresh_opt = build_model("vit_micro", "mpvg", num_classes=10), None
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    ckpt = read_checkpoint(tmp_path)
    assert ckpt is not None
    restored = restore_checkpoint(ckpt, "k" * 16, tmp_path / "checkpoint.pt",
                                  {"model": fresh, "optimizer": fresh_opt, "scheduler": None, "ema": None})
    assert restored == state
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in model.state_dict().items())
    assert fresh_opt.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()


def test_damaged_or_foreign_payload_is_refused_naming_the_fix(tmp_path: Path) -> None:
    model, optimizer = _parts()
    parts = {"model": model, "optimizer": optimizer, "scheduler": None, "ema": None}
    payload = checkpoint_payload("a" * 16, LoopState(epoch=1), parts, world_size=1)
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(RunDirError, match=r"belongs to run a{16}, not b{16}; delete it to restart"):
        restore_checkpoint(payload, "b" * 16, path, parts)
    payload["model"]["head.bias"] = payload["model"]["head.bias"] + 1  # bit rot that still unpickles
    with pytest.raises(RunDirError, match=r"checkpoint.pt is damaged \(checksum mismatch\); delete it"):
        restore_checkpoint(payload, "a" * 16, path, parts)


def test_compiled_and_ddp_prefixes_are_removed() -> None:
    model, _ = _parts()
    wrapped = torch.nn.Module()
    wrapped._orig_mod = model  # what torch.compile's OptimizedModule holds
    assert plain_state_dict(wrapped).keys() == model.state_dict().keys()
    wrapped2 = torch.nn.Module()
    wrapped2.module = model  # DistributedDataParallel
    assert plain_state_dict(wrapped2).keys() == model.state_dict().keys()


def test_checksum_is_about_contents_not_storage() -> None:
    # a checkpoint saved from CUDA tensors loads onto the CPU: storage/device must not matter
    model, optimizer = _parts()
    parts = {"model": model, "optimizer": optimizer, "scheduler": None, "ema": None}
    payload = checkpoint_payload("a" * 16, LoopState(epoch=1), parts, world_size=1)
    moved = dict(payload, model={k: v.t().clone().t() if v.ndim == 2 else v.clone()
                                 for k, v in payload["model"].items()})  # other storage and strides
    restore_checkpoint(moved, "a" * 16, Path("checkpoint.pt"), parts)
    moved["model"]["head.weight"] = moved["model"]["head.weight"].to(torch.float64)
    with pytest.raises(RunDirError, match="checksum mismatch"):
        restore_checkpoint(moved, "a" * 16, Path("checkpoint.pt"), parts)
