"""``data.loader: dali``: DALI's CPU mode (``device_id=None``) on the generated real-format
stand-ins, and the one-line refusals. Skipped where DALI is not installed (``mpvgbench[dali]``)."""

from __future__ import annotations

import builtins
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from mpvgbench.config import TrainConfig
from mpvgbench.data_standins import ensure_standin
from mpvgbench.errors import DataError
from mpvgbench.recipes import default_recipe
from mpvgbench.train.runtime import DistInfo


def dali_config(dataset: str, img_size: int, loader: str = "dali", **recipe: Any) -> TrainConfig:
    real = "cifar100" if dataset.startswith("cifar") else "imagenet"
    base = default_recipe("vit_lite" if real == "cifar100" else "deit", real)
    return TrainConfig(model="vit_micro", method="mpvg", dataset=dataset, img_size=img_size, num_classes=10,
                       recipe=base.model_copy(update=recipe), loader=loader)


def loaders(config: TrainConfig, root: Path, batch_size: int = 4) -> Any:
    from mpvgbench.train.loaders import build_loaders

    return build_loaders(config, str(root), batch_size=batch_size, dist=DistInfo(), device=torch.device("cpu"),
                         num_workers=1)


def test_missing_dali_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from mpvgbench.data_dali import require_dali

    real_import = builtins.__import__

    def no_dali(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("nvidia.dali") or name == "nvidia":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dali)
    with pytest.raises(DataError, match=r"pip install 'mpvgbench\[dali\]' or set data.loader: timm") as info:
        require_dali()
    assert "\n" not in str(info.value)


def test_dali_refuses_datasets_it_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="digits needs data.loader: timm"):
        loaders(dali_config("digits", 8).model_copy(update={"dataset": "digits"}), tmp_path)


def test_dali_is_out_of_the_key_at_its_default_and_in_it_when_set() -> None:
    timm_cfg, dali_cfg = dali_config("cifar100", 32, "timm"), dali_config("cifar100", 32, "dali")
    assert '"loader"' not in timm_cfg.key() and timm_cfg.key() != dali_cfg.key()
    from mpvgbench.config import config_payload

    assert '"loader":"timm"' not in config_payload(timm_cfg) and '"loader":"dali"' in config_payload(dali_cfg)


def test_eval_pipelines_read_every_oddity_of_both_formats(tmp_path: Path) -> None:
    """JPEG (CMYK, grayscale, a PNG named .JPEG, 80x60 to 1200x300) and CIFAR arrays: the eval
    pipeline (decode, resize, centre crop, normalise) gives every image, labelled as the reader says."""
    pytest.importorskip("nvidia.dali")
    for dataset, size in (("imagenet_synthetic", 16), ("cifar100_synthetic", 8)):
        root = ensure_standin(dataset, tmp_path / dataset)
        built = loaders(dali_config(dataset, size), root)
        seen = 0
        for x, y in built.val:
            assert x.dtype == torch.float32 and x.shape[1:] == (3, size, size) and torch.isfinite(x).all()
            assert y.dtype == torch.int64 and len(y) == len(x)
            seen += len(x)
        assert seen == built.val.labels.numel() == 20


def train_losses(config: TrainConfig, root: Path, run_dir: Path) -> tuple[list[float], float]:
    from mpvgbench.train import train_job

    result = train_job(config, run_dir, data_root=str(root), device="cpu")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["train_loss"] for row in rows], result["final_top1"]


@pytest.mark.slow
def test_dali_cpu_run_has_the_loss_trajectory_shape_of_the_timm_run(tmp_path: Path) -> None:
    """vit_micro on the CIFAR-100 stand-in, ViT-Lite's recipe (RandAugment m9, random erasing;
    Mixup/CutMix and smoothing off so the loss shows the fit), 8 epochs, once per loader.

    Compared: (1) each run's training loss falls: the mean of its last 3 epochs is at least 0.1
    below its first epoch; (2) the two falls agree within a factor of 2; (3) both end above
    chance (10%) top-1. The augmentations differ (docs/data.md), so the values are not equal."""
    pytest.importorskip("nvidia.dali")
    root = ensure_standin("cifar100_synthetic", tmp_path / "c")
    recipe = dict(epochs=8, cooldown_epochs=0, warmup_epochs=1, batch_size=8, max_steps_per_epoch=5,
                  mixup=0.0, cutmix=0.0, label_smoothing=0.0, lr=3e-3, lr_base_batch=None, repeated_aug=False)
    falls, tops = {}, {}
    for loader in ("timm", "dali"):
        losses, tops[loader] = train_losses(dali_config("cifar100_synthetic", 8, loader, **recipe), root,
                                            tmp_path / loader)
        assert len(losses) == 8
        falls[loader] = losses[0] - sum(losses[-3:]) / 3
    assert min(falls.values()) >= 0.1, falls
    assert max(falls.values()) <= 2 * min(falls.values()), falls
    assert min(tops.values()) > 10.0, tops


def test_run_refuses_dali_up_front_when_it_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`run` says so in one line, exit 2, before a database exists."""
    import yaml
    from click.testing import CliRunner

    import mpvgbench.data_dali as data_dali
    from mpvgbench.cli import cli

    def missing() -> None:
        raise DataError(data_dali.DALI_MISSING)

    monkeypatch.setattr(data_dali, "require_dali", missing)
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "d", "models": ["vit_micro"], "methods": ["mpvg"],
                                    "datasets": ["cifar100"], "seeds": [0], "data": {"loader": "dali"}}))
    res = CliRunner().invoke(cli, ["run", str(spec), "--smoke", "--device", "cpu"])
    assert res.exit_code == 2 and "pip install 'mpvgbench[dali]'" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / ".smoke" / "results.db").exists()
