"""Dense prediction (paper Tables 3-4): ViT-Adapter-Ti with Mask R-CNN (COCO) or UperNet
(ADE20K), fine-tuned from a Table 1 classification run (``init_from``).

An interval is an evaluation interval: COCO runs ``epochs`` passes of ``len(train) // batch``
iterations and evaluates after each (MMDet's per-epoch evaluation); ADE20K runs
``recipe.max_iters`` and evaluates ten times (MMSeg's 16k interval of 160k). metrics.jsonl's
``epoch`` counts evaluations. In result.json ``final_top1``/``best_top1`` hold the primary metric
(AP box x100 for COCO, mIoU for ADE20K) so the store's schema holds; ``ap_box``, ``ap_mask`` /
``miou`` and their ``final_``/``best_`` forms are what the report's Tables 3-4 read.

Sampling is a function of each sample's position (``downstream.train_parts``), so a resumed
interval starts at its next batch without replaying the consumed ones. Under DDP, rank ``r``
takes the ``r``-th slice of every global batch, BatchNorms become :class:`GlobalBatchNorm2d`
(the official runs' SyncBN), evaluation is sharded and reduced so every rank holds the same
metrics. ``compile`` compiles the ViT-Adapter in place (one graph; torchvision's detection heads
have data-dependent shapes and stay eager), so parameter names stay as they are.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from mpvgbench.config import TrainConfig
from mpvgbench.downstream.steps import DenseLosses, evaluate_detection, evaluate_segmentation
from mpvgbench.downstream.train_parts import (
    PRIMARY_METRIC, SeededSamples, build_dense_data, build_dense_model, build_dense_optimizer,
    collate_fn, dense_backbone, dense_settings, dense_task, position_batches,
)
from mpvgbench.errors import DataError
from mpvgbench.train.runtime import DistInfo, Runtime, derive_seed, per_process_batch, seed_everything
from mpvgbench.train.task import DataOptions, ModelFactory, Schedule, Task

METRIC_NAMES = {"detection": ("ap_box", "ap_mask"), "segmentation": ("miou",)}


class PerIterationSchedule:
    """A torch ``LambdaLR`` stepped once per update, behind timm's ``step_update`` (the loop's
    scheduler interface); its state_dict is the LambdaLR's."""

    def __init__(self, scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
        self.scheduler = scheduler

    def step_update(self, num_updates: int) -> None:
        self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


def evaluate_dense(task: str, model: nn.Module, val: Any, slide_crop: int, slide_stride: int,
                   *, max_images: Optional[int] = None, dist: DistInfo = DistInfo(), amp: bool = False) -> dict[str, float]:
    """The table metrics in percent: ``ap_box``/``ap_mask`` (COCOeval, x100) or ``miou``/``aacc``;
    sharded over the ranks of ``dist``, the same numbers on every rank."""
    shard = (dist.rank, dist.world_size)
    if task == "detection":
        coco = evaluate_detection(model, val, max_images=max_images, shard=shard, amp=amp)
        # COCOeval reports -1 for "no ground truth in this range"; 0 keeps the value a percentage
        return {"ap_box": 100 * max(coco["bbox_AP"], 0.0), "ap_mask": 100 * max(coco["segm_AP"], 0.0)}
    seg = evaluate_segmentation(model, val, slide_crop, slide_stride, max_images=max_images, shard=shard, amp=amp)  # type: ignore[arg-type]
    return {"miou": seg["mIoU"], "aacc": seg["aAcc"]}


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


class DenseTask(Task):
    """``model_factory(config, run_dir)`` builds the detector or segmenter (default
    :func:`mpvgbench.downstream.train_parts.build_dense_model`). ``download`` is ignored: COCO
    and ADE20K are never fetched."""

    interval_name = "eval"
    fixed_input_shapes = False  # multi-scale detection batches
    # parameters loaded but unused by the adapter (the ViT's Last LN, MPVG's LN'', the class
    # token) and heads without positives in a batch get no gradient
    ddp_find_unused_parameters = True

    def __init__(self, config: TrainConfig, run_dir: Path, runtime: Runtime, data: DataOptions,
                 model_factory: Optional[ModelFactory]) -> None:
        from mpvgbench.downstream.sync_bn import convert_to_global_batchnorm

        recipe, dist = config.recipe, runtime.dist
        self.config, self.runtime, self.num_workers = config, runtime, data.num_workers
        self.task = dense_task(config)
        self.primary_metric = PRIMARY_METRIC[self.task]
        self.tracked_metrics = METRIC_NAMES[self.task]
        self.data = build_dense_data(config, data.data_root, run_dir)
        per_process_batch(recipe.batch_size, dist.world_size)  # fails now, not at the loader
        self.samples = SeededSamples(self.data.train, self.data.train_transform, config.seed, self.data.train_order)
        # one pass (COCO: orientation groups padded to whole batches)
        iters_per_epoch = len(self.samples) // recipe.batch_size
        if recipe.max_steps_per_epoch is not None:
            iters_per_epoch = min(iters_per_epoch, recipe.max_steps_per_epoch)
        if iters_per_epoch == 0:
            raise DataError(f"the {config.dataset} training set ({len(self.data.train)} images) is smaller "  # type: ignore[arg-type]
                            f"than one batch ({recipe.batch_size}); lower recipe.batch_size")
        if recipe.max_iters is not None:
            self.schedule = Schedule(recipe.max_iters, max(1, math.ceil(recipe.max_iters / 10)))
        else:
            self.schedule = Schedule(recipe.epochs * iters_per_epoch, iters_per_epoch)
        seed_everything(config.seed)  # model init is a function of the seed alone
        model = (model_factory or build_dense_model)(config, run_dir)
        if dist.enabled:  # the official runs' SyncBN: statistics of the global batch
            model = convert_to_global_batchnorm(model)
        self.model = model.to(runtime.device)
        optimizer, scheduler = build_dense_optimizer(self.model, config, iters_per_epoch, self.schedule.total_steps)
        self.optimizer, self.scheduler = optimizer, PerIterationSchedule(scheduler)
        self.ema = None

    def training_forward(self) -> nn.Module:
        return DenseLosses(self.model, self.task)

    def compile(self, forward: nn.Module) -> nn.Module:
        dense_backbone(self.model).compile()  # in place: parameter names (checkpoints) stay
        return forward

    def batches(self, interval: int, first_step: int) -> Iterator[Any]:
        per_interval, dist = self.schedule.steps_per_interval, self.runtime.dist
        first = interval * per_interval + first_step
        last = interval * per_interval + self.schedule.steps_in(interval)
        loader = DataLoader(
            self.samples, num_workers=self.num_workers, collate_fn=collate_fn(self.task),
            batch_sampler=position_batches(first, last, self.config.recipe.batch_size, dist.rank, dist.world_size),
            pin_memory=self.runtime.device.type == "cuda",
        )
        return iter(loader)

    def prepare_batch(self, batch: Any, update: int) -> tuple[Any, Any]:
        # drop path and dropout: a function of (update, rank), whatever ran before
        seed_everything(derive_seed(self.config.seed, update, 2, self.runtime.dist.rank))
        images, targets = _to_device(batch, self.runtime.device)
        return images, targets

    def evaluate(self) -> dict[str, float]:
        recipe = self.config.recipe
        max_images = None if recipe.eval_max_batches is None else recipe.eval_max_batches * recipe.batch_size
        return evaluate_dense(self.task, self.model, self.data.val, self.data.slide_crop, self.data.slide_stride,
                              max_images=max_images, dist=self.runtime.dist, amp=self.runtime.amp)

    def result_fields(self, final: dict[str, Any], best: dict[str, float]) -> dict[str, Any]:
        primary = self.primary_metric
        fields: dict[str, Any] = {
            "task": self.task, "primary_metric": primary,
            "final_top1": final.get(primary), "best_top1": best.get(primary),
            "final_top5": None, "best_top5": None, "iterations": final.get("iteration", 0),
            "dense_settings": dense_settings(self.config),
        }
        for name in self.tracked_metrics:
            fields.update({name: final.get(name), f"final_{name}": final.get(name), f"best_{name}": best.get(name)})
        return fields
