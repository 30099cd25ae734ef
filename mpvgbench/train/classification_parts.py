"""Parts of the classification task over timm/torch: samplers, Mixup/CutMix, the training
loss, the lr schedule, and top-1/top-5 evaluation. The run's randomness is re-seeded per epoch by
the loop (``runtime.py``); the sampler and the DataLoader generator are re-seeded by the task.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized
from typing import Any, Callable, Optional

import torch
import torch.distributed as torch_dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DistributedSampler, Sampler

from mpvgbench.config import Recipe
from mpvgbench.train.runtime import DistInfo


# ------------------------------------------------------------------------------------- data


class ShardSampler(Sampler[int]):
    """Evaluation shard of one rank: every ``world_size``-th index, no padding, no duplicates,
    so summed counts over ranks are exactly the single-process numbers."""

    def __init__(self, dataset: Sized, rank: int, world_size: int) -> None:
        self.indices = range(rank, len(dataset), world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_train_sampler(dataset: Sized, recipe: Recipe, dist: DistInfo) -> Sampler[int]:
    """RepeatAugSampler when ``recipe.repeated_aug``, else a shuffling DistributedSampler.

    Both are used with explicit ``num_replicas``/``rank`` also on a single process. For repeated
    augmentation this is a deliberate choice: the *global* batch then holds the same
    3-augmentations-per-image composition on 1 or N processes, so a job key (which ignores the
    device count) means one training procedure. Their ``set_epoch`` value is the shuffle seed.
    """
    from timm.data.distributed_sampler import RepeatAugSampler

    if recipe.repeated_aug:
        return RepeatAugSampler(dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True)
    return DistributedSampler(
        dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=0, drop_last=False
    )


# ------------------------------------------------------------------------- loss, mixup, optim


def mixup_enabled(recipe: Recipe) -> bool:
    return recipe.mixup > 0 or recipe.cutmix > 0


def build_mixup(recipe: Recipe, num_classes: int) -> Optional[Callable[..., Any]]:
    """timm Mixup/CutMix (which also applies label smoothing to the soft targets); None when off."""
    if not mixup_enabled(recipe):
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=recipe.mixup,
        cutmix_alpha=recipe.cutmix,
        prob=recipe.mixup_prob,
        switch_prob=recipe.mixup_switch_prob,
        mode="batch",
        label_smoothing=recipe.label_smoothing,
        num_classes=num_classes,
    )


def build_train_loss(recipe: Recipe) -> nn.Module:
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixup_enabled(recipe):
        return SoftTargetCrossEntropy()  # Mixup already produced smoothed soft targets
    if recipe.label_smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=recipe.label_smoothing)
    return nn.CrossEntropyLoss()


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int) -> Any:
    """A timm scheduler stepped once per *update* (``step_update``), or None for a constant lr.

    Per-update stepping makes warmup and cosine decay smooth instead of a staircase of one lr per
    epoch, which matters for the short runs of small datasets. ``t_initial`` covers
    ``recipe.epochs``; the ``cooldown_epochs`` after it run at ``min_lr`` (timm's convention).
    ``sched="step"`` decays by 10x at 1/3 and 2/3 of the epochs (the recipe has no knob for it).
    """
    from timm.scheduler import CosineLRScheduler, StepLRScheduler

    warmup_t = recipe.warmup_epochs * steps_per_epoch
    if recipe.sched == "cosine":
        return CosineLRScheduler(
            optimizer,
            t_initial=max(1, recipe.epochs * steps_per_epoch),
            lr_min=recipe.min_lr,
            warmup_t=warmup_t,
            warmup_lr_init=recipe.warmup_lr,
            cycle_limit=1,
            t_in_epochs=False,
        )
    if recipe.sched == "step":
        return StepLRScheduler(
            optimizer,
            decay_t=max(1, math.ceil(recipe.epochs / 3)) * steps_per_epoch,
            decay_rate=0.1,
            warmup_t=warmup_t,
            warmup_lr_init=recipe.warmup_lr,
            t_in_epochs=False,
        )
    return None


# ---------------------------------------------------------------------------------- eval


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    *,
    amp: bool,
    max_batches: Optional[int],
    dist: DistInfo,
) -> dict[str, float]:
    """Top-1/top-5 (timm.utils.accuracy) and mean cross-entropy over the (sharded) val set."""
    from timm.utils import accuracy

    was_training = model.training
    model.eval()
    # [loss sum, top1 hits, top5 hits, count] in float64 so sums over ranks are exact
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        out = out.float()
        n = y.shape[0]
        top1, top5 = accuracy(out, y, topk=(1, 5))
        sums += torch.stack(
            [
                F.cross_entropy(out, y, reduction="sum").double(),
                (top1.double() * n / 100).round(),
                (top5.double() * n / 100).round(),
                torch.tensor(float(n), dtype=torch.float64, device=device),
            ]
        )
    if dist.enabled:
        torch_dist.all_reduce(sums)
    model.train(was_training)
    loss_sum, hits1, hits5, count = sums.tolist()
    count = max(count, 1.0)
    return {"val_loss": loss_sum / count, "top1": 100 * hits1 / count, "top5": 100 * hits5 / count}
