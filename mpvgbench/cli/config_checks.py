"""Checks that need only the configuration, made by `run` (also `--dry-run`) before anything is
stored or submitted: a job that cannot train fails here in one line, not on a compute node after
a day in the queue (issue: "validation that only the worker does")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from mpvgbench.errors import SpecError

if TYPE_CHECKING:
    from mpvgbench.config import TrainConfig
    from mpvgbench.matrix import Job
    from mpvgbench.spec import Spec

# Bundled datasets: read at their native size, never resized (the model must be built for that
# size), and with a fixed class count.
NATIVE_SIZE_DATASETS = frozenset({"digits"})


def check_configs(spec: Spec, jobs: Sequence[Job]) -> None:
    """SpecError for the first job whose configuration no worker could train."""
    seen: set[tuple[object, ...]] = set()
    for job in jobs:
        config = job.config
        group = (config.model, config.method, config.dataset, config.img_size, config.num_classes,
                 config.recipe)
        if group in seen:
            continue  # seeds of one cell share everything checked here
        seen.add(group)
        where = f"{spec.source}: {config.model} on {config.dataset}"
        _check_sizes(config, where)
        _check_trainable(config, where)


def _check_sizes(config: TrainConfig, where: str) -> None:
    from mpvgbench.recipes import dataset_info

    info = dataset_info(config.dataset)
    if config.dataset in NATIVE_SIZE_DATASETS and config.img_size != info.img_size:
        raise SpecError(f"{where}: img_size {config.img_size}, but {config.dataset} images are "
                        f"{info.img_size}x{info.img_size} and are not resized; set "
                        f"model_overrides.{config.model}.img_size: {info.img_size} (or drop it)")
    if info.num_classes is not None and config.num_classes != info.num_classes and \
            config.dataset in NATIVE_SIZE_DATASETS:
        raise SpecError(f"{where}: num_classes {config.num_classes}, but {config.dataset} has "
                        f"{info.num_classes} classes; drop dataset_overrides.{config.dataset}.num_classes")
    # the catalog's training-set size: the trainer drops the last partial batch, so a larger
    # batch trains nothing at all
    images = info.train_images
    if images is not None and config.recipe.batch_size > images:
        raise SpecError(f"{where}: recipe.batch_size {config.recipe.batch_size} is larger than its "
                        f"{images} training images, so no full batch (and no step) would run; "
                        f"use batch_size <= {images}")


def _check_trainable(config: TrainConfig, where: str) -> None:
    """param_groups that freeze everything, or match no parameter: found on an empty (meta)
    model, no weights allocated."""
    if not config.recipe.param_groups:
        return
    if all(group.lr_scale == 0 for group in config.recipe.param_groups) and any(
            pattern in ("*", "**") for group in config.recipe.param_groups for pattern in group.match):
        raise SpecError(f"{where}: recipe.param_groups freeze every parameter (lr_scale 0 on '*'); "
                        "give some group an lr_scale > 0")
    import torch

    from mpvgbench.models import build_model_for_config
    from mpvgbench.optim import build_param_groups

    try:
        with torch.device("meta"):
            groups = build_param_groups(build_model_for_config(config), config.recipe)
    except ValueError as exc:
        raise SpecError(f"{where}: {exc}") from None
    if not groups:
        raise SpecError(f"{where}: recipe.param_groups freeze every parameter; give some group an "
                        "lr_scale > 0")
