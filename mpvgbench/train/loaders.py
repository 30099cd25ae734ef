"""``build_loaders``: the classification trainer's data, one call (the trainer's only data hook).

``config.loader`` picks the pipeline: ``timm`` (default, the paper's: torch DataLoader workers
running timm's transforms, ``data.build_datasets``) or ``dali`` (``data_dali``: decode and
augmentation on the GPU). Either way the trainer gets the same things: a training loader of
``len()`` batches that it iterates once per epoch, an evaluation loader, the training sampler
(``set_epoch``) and the generator it re-seeds every epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional

import torch

from mpvgbench.config import TrainConfig
from mpvgbench.errors import DataError
from mpvgbench.train.classification_parts import ShardSampler, build_train_sampler
from mpvgbench.train.runtime import DistInfo

__all__ = ["DALI_DATASETS", "Loaders", "build_loaders"]

# what data.loader: dali reads (JPEG folders, CIFAR-100's arrays) and their generated stand-ins
DALI_DATASETS = frozenset({"imagenet", "imagefolder", "imagenet_synthetic", "cifar100", "cifar100_synthetic"})


@dataclass
class Loaders:
    train: Any  # iterable of (x, y) batches with len() and .num_workers
    val: Iterable[Any]
    train_sampler: Any  # .set_epoch(seed)
    generator: torch.Generator  # re-seeded by the trainer every epoch
    train_size: int


def build_loaders(
    config: TrainConfig, data_root: Optional[str], *, batch_size: int, dist: DistInfo,
    device: torch.device, num_workers: int, download: bool = False,
) -> Loaders:
    """Datasets, samplers and loaders of a classification run (per process: ``batch_size`` is
    the per-process batch). Builds no model and draws no random number (the model's init
    follows it and must stay a function of the seed alone)."""
    from mpvgbench.data import build_datasets

    loader = config.loader
    if loader == "dali" and config.dataset not in DALI_DATASETS:
        raise DataError(f"data.loader: dali reads {', '.join(sorted(DALI_DATASETS))}; "
                        f"{config.dataset} needs data.loader: timm")
    train_ds, val_ds = build_datasets(config, data_root, download=download)
    train_sampler = build_train_sampler(train_ds, config.recipe, dist)
    val_sampler = ShardSampler(val_ds, dist.rank, dist.world_size)
    generator = torch.Generator()
    if loader == "dali":
        from mpvgbench.data_dali import build_dali_loader

        threads = max(1, num_workers)
        common: dict[str, Any] = {"batch_size": batch_size, "device": device, "num_threads": threads}
        train = build_dali_loader(config, train_ds, train_sampler, is_training=True, generator=generator, **common)
        val: Iterable[Any] = build_dali_loader(config, val_ds, val_sampler, is_training=False, generator=None, **common)
        return Loaders(train, val, train_sampler, generator, len(train_ds))
    from torch.utils.data import DataLoader

    kwargs: dict[str, Any] = {"num_workers": num_workers, "pin_memory": device.type == "cuda"}
    # persistent_workers stays off: fresh workers every epoch are seeded from the generator, which
    # is what makes augmentation a function of the epoch (exact resume) with num_workers > 0.
    train = DataLoader(train_ds, batch_size=batch_size, sampler=train_sampler, drop_last=True,
                       generator=generator, **kwargs)
    val = DataLoader(val_ds, batch_size=batch_size, sampler=val_sampler, **kwargs)
    return Loaders(train, val, train_sampler, generator, len(train_ds))
