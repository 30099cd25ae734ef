"""What the dense task (``mpvgbench.train.dense``) builds from a :class:`TrainConfig`: data, transforms, model, optimiser.

The official sizes (COCO crop 1024, ADE20K crop 512) are scaled by ``config.img_size / crop``,
so a smoke cell at 64 px runs the same pipeline on tiny images (``coco_synthetic`` and
``ade20k_synthetic`` are generated into the run directory by ``make_synthetic_*``).

Sampling is a pure function of ``(seed, sample position)``: position ``p`` is image
``order_{p // L}[p % L]`` of the training set (``grouped_batches``: one shuffled pass of ``L``
positions at a time; COCO's passes group each batch by orientation, as MMDet's GroupSampler)
with the augmentation RNG seeded from ``(seed, p)``. A run resumed at iteration ``i`` therefore
continues with the same images and augmentations as one that never stopped, without replaying
batches (replaying 14k COCO batches would take longer than the work lost), and with any loader
workers.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from mpvgbench.config import TrainConfig
from mpvgbench.downstream.grouped_batches import AspectGroupedOrder, SampleOrder, ShuffledOrder
from mpvgbench.errors import DataError
from mpvgbench.recipes import DOWNSTREAM_TASKS
from mpvgbench.train.init_weights import resolve_init_from
from mpvgbench.train.runtime import derive_seed, per_process_batch

__all__ = [
    "OFFICIAL_CROP", "PRIMARY_METRIC", "DenseData", "SeededSamples", "build_dense_data",
    "build_dense_model", "build_dense_optimizer", "dense_backbone", "dense_settings", "dense_task",
    "position_batches", "pretrain_img_size",
]

OFFICIAL_CROP = {"detection": 1024, "segmentation": 512}
PRIMARY_METRIC = {"detection": "ap_box", "segmentation": "miou"}  # -> result.json's *_top1
SYNTHETIC_DATA_DIR = "synthetic_data"  # inside the run directory
SYNTHETIC_IMAGES, SYNTHETIC_SIZE = 4, (96, 128)


def dense_task(config: TrainConfig) -> str:
    """``"detection"`` or ``"segmentation"``; ``KeyError`` for a classification dataset."""
    return DOWNSTREAM_TASKS[config.dataset]


def dense_settings(config: TrainConfig) -> dict[str, Any]:
    """The answers this run gives to the paper's open questions (docs/downstream.md), for
    ``result.json`` and ``report --table 3/4``: MPVG's Last-LN term in the adapter, the batch
    and how COCO batches are drawn."""
    batching = "orientation groups" if dense_task(config) == "detection" else "shuffled"
    return {"last_ln": config.recipe.adapter_last_ln, "batch": config.recipe.batch_size, "batching": batching}


# ------------------------------------------------------------------------------------ data


@dataclass
class DenseData:
    train: Dataset  # untransformed training images (SeededSamples applies the transform)
    train_transform: Any  # has an ``rng`` (random.Random) attribute
    val: Dataset  # transformed for evaluation
    slide_crop: int  # segmentation: sliding-window size and stride
    slide_stride: int
    train_order: Optional[SampleOrder] = None  # None: one permutation per pass (ShuffledOrder)


def _root(config: TrainConfig, data_root: Optional[str], run_dir: Path) -> Path:
    from mpvgbench.downstream.synthetic import make_synthetic_ade20k, make_synthetic_coco

    if config.dataset.endswith("_synthetic"):
        root = run_dir / SYNTHETIC_DATA_DIR
        done = root / ".complete"
        if not done.exists():  # generated once; deterministic, so a half-written one is redone
            make = make_synthetic_coco if dense_task(config) == "detection" else make_synthetic_ade20k
            make(root, n_images=SYNTHETIC_IMAGES, size=SYNTHETIC_SIZE, seed=0)
            done.touch()
        return root
    if not data_root:
        raise DataError(f"{config.dataset} needs its data root; set data.roots.{config.dataset} in the spec")
    root = Path(data_root).expanduser()
    if root.name == "ADEChallengeData2016":  # the ADE20K reader wants the folder holding it
        root = root.parent
    return root


def build_dense_data(config: TrainConfig, data_root: Optional[str], run_dir: Path) -> DenseData:
    """Training set, its transform, and the evaluation set at ``config.img_size``'s scale."""
    from mpvgbench.downstream.data import (
        ADE20K, CocoInstances, DetectionTestTransform, DetectionTrainTransform,
        SegmentationTestTransform, SegmentationTrainTransform,
    )

    root = _root(config, data_root, run_dir)
    task = dense_task(config)
    crop = config.img_size
    ratio = crop / OFFICIAL_CROP[task]
    if task == "detection":
        # MMDet's short sides 480..800 step 32 (long <= 1333), test 800: scaled, multiples of 32
        scales = sorted({max(32, round(s * ratio / 32) * 32) for s in range(480, 801, 32)})
        long_side = round(1333 * ratio)
        # AutoAugment's second policy: short side 400/500/600, then an absolute crop of 384..600
        crop_scales = tuple(max(1, round(s * ratio)) for s in (400, 500, 600))
        crop_range = (max(1, round(384 * ratio)), max(1, round(600 * ratio)))
        train_tf: Any = DetectionTrainTransform(scales, max_size=long_side, crop=crop,
                                                crop_scales=crop_scales, crop_range=crop_range)
        val_ds: Dataset = CocoInstances(root, "val", DetectionTestTransform(round(800 * ratio), long_side))
        train_ds = CocoInstances(root, "train")
        # GroupSampler by the global batch: every rank's slice is one orientation too
        order = AspectGroupedOrder(train_ds.landscape_flags(), config.recipe.batch_size, config.seed)
        return DenseData(train_ds, train_tf, val_ds, crop, crop, order)
    scale = (round(2048 * ratio), round(512 * ratio))
    train_tf = SegmentationTrainTransform(crop, scale)
    val_ds = ADE20K(root, "validation", SegmentationTestTransform(scale))
    return DenseData(ADE20K(root, "training"), train_tf, val_ds, crop, max(1, round(341 * ratio)))


class SeededSamples(Dataset):
    """Sample position ``p`` -> the transformed ``p``-th training sample (see the module doc).
    ``len`` is one pass's positions (``order.epoch_length``; COCO's grouped passes pad each
    orientation to whole batches, as MMDet's GroupSampler)."""

    def __init__(self, base: Dataset, transform: Any, seed: int, order: Optional[SampleOrder] = None) -> None:
        self.base, self.transform, self.seed = base, transform, seed
        self.order: SampleOrder = order if order is not None else ShuffledOrder(len(base), seed)  # type: ignore[arg-type]
        self.size = self.order.epoch_length
        self._perms: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, position: int) -> Any:
        epoch = position // self.size
        if epoch not in self._perms:
            self._perms = {epoch: self.order.epoch(epoch)}
        image, target = self.base[int(self._perms[epoch][position % self.size])]
        self.transform.rng = random.Random(derive_seed(self.seed, position, 1))
        return self.transform(image, target)


def position_batches(first_iteration: int, total_iterations: int, batch_size: int,
                     rank: int = 0, world_size: int = 1) -> list[list[int]]:
    """This rank's sample positions of iterations ``first_iteration .. total_iterations - 1``:
    the ``rank``-th of ``world_size`` equal slices of each global batch, so the ranks together
    see exactly the samples (and augmentations) one process with the whole batch would."""
    per_rank = per_process_batch(batch_size, world_size)
    starts = (it * batch_size + rank * per_rank for it in range(first_iteration, total_iterations))
    return [list(range(start, start + per_rank)) for start in starts]


def collate_segmentation(batch: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    images, labels = zip(*batch)
    return torch.stack(images), torch.stack(labels)


def collate_fn(task: str) -> Callable[..., Any]:
    from mpvgbench.downstream.data import collate_detection

    return collate_detection if task == "detection" else collate_segmentation


# ----------------------------------------------------------------------------------- model


def pretrain_img_size(init_from: Optional[str], run_dir: Path, default: int = 224, patch: int = 16) -> int:
    """The image size the classification parent trained at, read from its ``pos_embed`` (a smoke
    parent trains at 32 px): the adapter's ViT is built on that grid so the checkpoint loads as is."""
    if init_from is None:
        return default
    from mpvgbench.rundir import read_checkpoint

    ckpt = read_checkpoint(resolve_init_from(init_from, run_dir))
    assert ckpt is not None
    tokens = int(ckpt["model"]["pos_embed"].shape[1])
    grid = math.isqrt(tokens)
    if grid * grid != tokens:  # a class-token row in front
        grid = math.isqrt(tokens - 1)
    return grid * patch


def build_dense_model(config: TrainConfig, run_dir: Path) -> nn.Module:
    """Mask R-CNN or UperNet on ViT-Adapter-Ti around ``config.model`` with ``config.method``;
    with ``init_from``, the parent's classification weights are loaded into the ViT (strict)."""
    from mpvgbench.downstream.detection import build_mask_rcnn
    from mpvgbench.downstream.upernet import build_upernet
    from mpvgbench.rundir import read_checkpoint

    size = pretrain_img_size(config.init_from, run_dir)
    adapter_kw: dict[str, Any] = {"pretrain_img_size": size, "drop_path_rate": config.recipe.drop_path,
                                  "last_ln": config.recipe.adapter_last_ln}
    if dense_task(config) == "detection":
        model: nn.Module = build_mask_rcnn(config.method, config.num_classes, **adapter_kw)
    else:
        model = build_upernet(config.method, config.num_classes, **adapter_kw)
    adapter = dense_backbone(model)
    if config.init_from is not None:
        ckpt = read_checkpoint(resolve_init_from(config.init_from, run_dir))
        assert ckpt is not None
        adapter.load_classification_weights(ckpt)  # type: ignore[operator]
    return model


def dense_backbone(model: nn.Module) -> nn.Module:
    """The ViT-Adapter inside a detector (``backbone.body``) or a segmenter (``backbone``): the
    part ``torch.compile`` takes (one graph, no breaks; torchvision's detection heads have
    data-dependent shapes and stay eager)."""
    backbone = model.backbone  # type: ignore[union-attr]
    return getattr(backbone, "body", backbone)


def build_dense_optimizer(model: nn.Module, config: TrainConfig, iterations_per_epoch: int, total_iterations: int) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW with the official parameter groups and its per-iteration schedule: MMDet's 3x
    steps (at 3/4 and 11/12 of the epochs: 27 and 33 of 36) or MMSeg's poly over the run."""
    from mpvgbench.downstream.optim import (
        detection_param_groups, poly_schedule, segmentation_param_groups, step_schedule,
    )

    recipe = config.recipe
    if dense_task(config) == "detection":
        groups = detection_param_groups(model, recipe.lr, recipe.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=recipe.lr)
        steps = (recipe.epochs * 3 // 4, recipe.epochs * 11 // 12)
        return optimizer, step_schedule(optimizer, iterations_per_epoch, steps)
    groups = segmentation_param_groups(model, recipe.lr, recipe.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=recipe.lr)
    return optimizer, poly_schedule(optimizer, max_iters=total_iterations)
