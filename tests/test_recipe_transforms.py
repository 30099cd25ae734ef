"""Every distinct training transform of the shipped specs survives 20,000 augmentations of
real-format images read by the real dataset readers (issue 19).

The transforms are collected from the specs themselves (every classification cell of
``experiments/*.yaml``, deduplicated on what shapes its transform): DeiT/Swin/T2T/CeiT on
ImageNet at 224 (one transform: their recipes differ in optimisation only), ViT-Lite on
CIFAR-100 at 32 and T2T-ViT's CIFAR-100 fine-tune at 224. ImageNet
cells read the generated ImageNet-format folder (CMYK and grayscale JPEGs, a PNG named .JPEG,
sizes from 80x60 to 1200x300) through torchvision's ImageFolder; CIFAR cells read the generated
CIFAR-100 pickles through torchvision's CIFAR100. At 224 one transform costs ~55 s on one core
here, so the 20,000-draw runs are ``slow``; the fast variant draws a few hundred of each.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mpvgbench.config import TrainConfig
from mpvgbench.data import build_datasets
from mpvgbench.data_standins import make_cifar100_standin, make_imagenet_standin
from mpvgbench.matrix import expand
from mpvgbench.recipes import DOWNSTREAM_TASKS
from mpvgbench.spec import load_spec

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
STAND_IN = {"imagenet": "imagenet_synthetic", "cifar100": "cifar100_synthetic"}


def _transform_identity(config: TrainConfig) -> tuple[Any, ...]:
    r = config.recipe
    return (config.dataset, config.img_size, r.train_crop_scale, r.color_jitter, r.randaugment, r.random_erasing)


def shipped_training_transforms() -> dict[str, TrainConfig]:
    """One config per distinct training transform of the shipped specs' classification cells."""
    found: dict[tuple[Any, ...], TrainConfig] = {}
    models: dict[tuple[Any, ...], set[str]] = {}
    for path in sorted(EXPERIMENTS.glob("table*.yaml")) + [EXPERIMENTS / "fig5.yaml"]:
        for job in expand(load_spec(path)):
            if job.dataset in STAND_IN:  # dense cells have their own transforms; digits has none
                identity = _transform_identity(job.config)
                found.setdefault(identity, job.config)
                models.setdefault(identity, set()).add(job.model)
    return {f"{c.dataset}-{c.img_size}-{'+'.join(sorted(models[i]))}": c for i, c in found.items()}


TRANSFORMS = shipped_training_transforms()


def test_the_specs_have_the_recipes_of_the_paper() -> None:
    """DeiT's family of ImageNet transforms at 224, ViT-Lite's CIFAR one at 32, T2T's fine-tune."""
    by_dataset = {(c.dataset, c.img_size, c.recipe.randaugment) for c in TRANSFORMS.values()}
    assert ("imagenet", 224, "rand-m9-mstd0.5-inc1") in by_dataset
    assert ("cifar100", 32, "rand-m9-mstd0.5-inc1") in by_dataset
    assert ("cifar100", 224, None) in by_dataset  # T2T-ViT's fine-tune: no RandAugment
    assert not any(c.dataset in DOWNSTREAM_TASKS for c in TRANSFORMS.values())


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("standins")
    return {
        # 16 ImageNet-sized images of every oddity; the draws cycle through them
        "imagenet": make_imagenet_standin(base / "imagenet", classes=2, train_per_class=8, val_per_class=1),
        "cifar100": make_cifar100_standin(base / "cifar100"),
    }


def draw(config: TrainConfig, root: Path, draws: int) -> int:
    """Seeded draws of the training set (its real reader and transform); the number that worked."""
    classes = len(list((root / "train").iterdir())) if config.dataset == "imagenet" else 10
    standin = config.model_copy(update={"dataset": STAND_IN[config.dataset], "num_classes": classes})
    train, _ = build_datasets(standin, root, train_transform_only=True)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    shape = (3, config.img_size, config.img_size)
    for i in range(draws):
        x, _ = train[i % len(train)]
        assert x.shape == shape and torch.isfinite(x).all(), i
    return draws


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_each_recipe_transform_survives_a_few_hundred_draws(name: str, roots: dict[str, Path]) -> None:
    config = TRANSFORMS[name]
    assert draw(config, roots[config.dataset], 300) == 300


@pytest.mark.slow
@pytest.mark.timeout(3600)  # ~55 s per 224 transform on an idle core; far more on a shared one
@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_each_recipe_transform_survives_20000_draws(name: str, roots: dict[str, Path]) -> None:
    config = TRANSFORMS[name]
    assert draw(config, roots[config.dataset], 20_000) == 20_000
