"""Image classification (paper Tables 1, 2, 5, 6; Fig. 5): a timm-style ViT trained with timm's
recipe parts (DeiT's: AdamW, cosine per update, Mixup/CutMix, label smoothing, repeated
augmentation, EMA). An interval is an epoch of ``len(train) // batch`` steps (at most
``recipe.max_steps_per_epoch``), ``recipe.total_epochs`` of them, evaluated after each.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from mpvgbench.config import TrainConfig
from mpvgbench.errors import ConfigError, DataError
from mpvgbench.optim import build_optimizer
from mpvgbench.train.classification_parts import build_mixup, build_scheduler, build_train_loss, evaluate_classifier
from mpvgbench.train.init_weights import load_init_weights
from mpvgbench.train.loaders import build_loaders
from mpvgbench.train.runtime import Runtime, derive_seed, per_process_batch, seed_everything
from mpvgbench.train.task import DataOptions, ModelFactory, Schedule, Task


class ClassifierLoss(nn.Module):
    """``forward(images, targets) -> {"loss": ...}``: the model and its training loss as the one
    module DDP and ``torch.compile`` wrap (timm's ``TrainingTask``)."""

    def __init__(self, model: nn.Module, criterion: nn.Module) -> None:
        super().__init__()
        self.model, self.criterion = model, criterion

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": self.criterion(self.model(images), targets)}


class ClassificationTask(Task):
    """``model_factory(config, drop_rate=..., drop_path_rate=...)`` builds the model (default
    :func:`mpvgbench.models.build_model_for_config`)."""

    interval_name = "epoch"
    primary_metric = "top1"
    tracked_metrics = ("top1", "top5", "ema_top1", "ema_top5")

    def __init__(self, config: TrainConfig, run_dir: Path, runtime: Runtime, data: DataOptions,
                 model_factory: Optional[ModelFactory]) -> None:
        from mpvgbench.models import build_model_for_config

        recipe, dist = config.recipe, runtime.dist
        self.config, self.runtime, self.run_dir = config, runtime, run_dir
        batch_size = per_process_batch(recipe.batch_size, dist.world_size)
        self.mixup: Optional[Callable[..., Any]] = build_mixup(recipe, config.num_classes)
        if self.mixup is not None and batch_size % 2:
            raise ConfigError(f"mixup/cutmix need an even per-process batch, got {batch_size}; "
                              "change recipe.batch_size or turn recipe.mixup and recipe.cutmix off")
        seed_everything(config.seed)  # model init is a function of the seed alone
        # the timm DataLoaders (the paper's pipeline) or DALI's (data.loader); draws no random number
        loaders = build_loaders(config, data.data_root, batch_size=batch_size, dist=dist, device=runtime.device,
                                num_workers=data.num_workers, download=data.download)
        self.model = (model_factory or build_model_for_config)(
            config, drop_rate=recipe.drop, drop_path_rate=recipe.drop_path).to(runtime.device)
        self.train_sampler, self.loader_generator = loaders.train_sampler, loaders.generator  # re-seeded every epoch
        self.train_loader, self.val_loader = loaders.train, loaders.val
        steps_per_epoch = len(self.train_loader)
        if recipe.max_steps_per_epoch is not None:
            steps_per_epoch = min(steps_per_epoch, recipe.max_steps_per_epoch)
        if steps_per_epoch == 0:
            raise DataError(f"the {config.dataset} training set ({loaders.train_size} images) is smaller "
                            f"than one per-process batch ({batch_size}); lower recipe.batch_size")
        self.schedule = Schedule(recipe.total_epochs * steps_per_epoch, steps_per_epoch)
        self.optimizer = build_optimizer(self.model, recipe, runtime.device.type)  # names before compile
        self.scheduler = build_scheduler(self.optimizer, recipe, steps_per_epoch)
        self.ema: Optional[nn.Module] = None
        if recipe.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=recipe.ema_decay)
        self.criterion = build_train_loss(recipe)

    def start_fresh(self) -> None:
        """No checkpoint: start from ``init_from``'s weights. (The EMA copies the model at its
        first update: timm's ModelEmaV3 uses decay 0 at step 1.)"""
        if self.config.init_from:
            load_init_weights(self.model, self.config.init_from, self.run_dir)

    def training_forward(self) -> nn.Module:
        return ClassifierLoss(self.model, self.criterion)

    def batches(self, interval: int, first_step: int) -> Iterator[Any]:
        seed, rank = self.config.seed, self.runtime.dist.rank
        self.train_sampler.set_epoch(derive_seed(seed, interval))  # type: ignore[attr-defined]
        self.loader_generator.manual_seed(derive_seed(seed, interval, rank, 1))
        batches = iter(self.train_loader)
        # a mid-epoch resume replays the consumed batches: loader workers then advance their
        # augmentation RNGs exactly as the interrupted run's did
        for _ in range(first_step):
            next(batches)
        return batches

    def prepare_batch(self, batch: Any, update: int) -> tuple[Any, Any]:
        images, targets = batch
        device = self.runtime.device
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)
        return images, targets

    def evaluate(self) -> dict[str, float]:
        kw: dict[str, Any] = dict(amp=self.runtime.amp, max_batches=self.config.recipe.eval_max_batches,
                                  dist=self.runtime.dist)
        metrics = evaluate_classifier(self.model, self.val_loader, self.runtime.device, **kw)
        if self.ema is not None:
            ema_metrics = evaluate_classifier(self.ema.module, self.val_loader, self.runtime.device, **kw)
            metrics.update({f"ema_{k}": v for k, v in ema_metrics.items()})
        return metrics

    def result_fields(self, final: dict[str, Any], best: dict[str, float]) -> dict[str, Any]:
        fields = {"final_top1": final.get("top1"), "best_top1": best.get("top1"),
                  "final_top5": final.get("top5"), "best_top5": best.get("top5")}
        if self.ema is not None:
            fields.update({"ema_final_top1": final.get("ema_top1"), "ema_best_top1": best.get("ema_top1"),
                           "ema_final_top5": final.get("ema_top5"), "ema_best_top5": best.get("ema_top5")})
        return fields
