"""Tiny ViT-Adapter detectors/segmenters and dense configs the trainer tests share (also imported
by ``ddp_job.py``, which torchrun starts in other processes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mpvgbench.config import TrainConfig
from mpvgbench.recipes import default_recipe, smoke_recipe

TINY_ADAPTER: dict[str, Any] = dict(
    vit_kwargs=dict(depth=4, embed_dim=64, num_heads=2),
    interaction_indexes=((0, 0), (1, 1), (2, 2), (3, 3)),
    window_sizes=(None,) * 4,
    deform_heads=4,
)


def tiny_segmenter(config: TrainConfig, run_dir: Path, **adapter: Any) -> torch.nn.Module:
    from mpvgbench.downstream.upernet import build_upernet

    return build_upernet(config.method, config.num_classes, head_channels=16, aux_channels=8,
                         pretrain_img_size=64, **{**TINY_ADAPTER, **adapter})


def tiny_segmenter_without_dropout(config: TrainConfig, run_dir: Path) -> torch.nn.Module:
    """Deterministic given the weights: one process and several ranks draw different dropout
    masks, so an exact DDP comparison turns the head's Dropout2d and drop path off."""
    model = tiny_segmenter(config, run_dir, drop_path_rate=0.0)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout2d):
            module.p = 0.0
    return model


def tiny_detector(config: TrainConfig, run_dir: Path) -> torch.nn.Module:
    from mpvgbench.downstream.detection import build_mask_rcnn

    return build_mask_rcnn(config.method, config.num_classes, pretrain_img_size=64, conv_inplane=16, **TINY_ADAPTER)


def ade_config(max_iters: int = 2, **update: Any) -> TrainConfig:
    recipe = smoke_recipe(default_recipe("deit", "ade20k_synthetic"), "deit", "ade20k").model_copy(
        update={"max_iters": max_iters, **update})
    return TrainConfig(model="deit_tiny", method="mpvg", dataset="ade20k_synthetic", img_size=64,
                       num_classes=3, recipe=recipe)


def coco_config(**update: Any) -> TrainConfig:
    recipe = smoke_recipe(default_recipe("deit", "coco_synthetic"), "deit", "coco").model_copy(
        update={"epochs": 1, **update})
    return TrainConfig(model="deit_tiny", method="mpvg", dataset="coco_synthetic", img_size=64,
                       num_classes=3, recipe=recipe)
