"""The recipes' RandAugment under today's Pillow: 0-bit posterize is a black image, never an error."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from mpvgbench.augment import POSTERIZE_OPS, posterize, recipe_transform
from mpvgbench.config import TrainConfig
from mpvgbench.data import _transform
from mpvgbench.recipes import default_recipe

RAND_AUGMENT = "rand-m9-mstd0.5-inc1"  # the paper's recipes (DeiT, Swin, T2T, CeiT, ViT-Lite)


def _posterize_ops(transform: object) -> list:
    randaugment = next(t for t in transform.transforms if type(t).__name__ == "RandAugment")
    return [op for op in randaugment.ops if op.name in POSTERIZE_OPS]


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_zero_bits_is_a_black_image_and_other_bits_are_pillows(mode: str) -> None:
    img = Image.effect_noise((40, 30), 64).convert(mode)
    black = posterize(img, 0)
    assert black.mode == mode and black.size == img.size
    assert black.getextrema() == ((0, 0) if mode == "L" else ((0, 0),) * 3)
    assert posterize(img, -1).getextrema() == black.getextrema()
    assert posterize(img, 8) is img
    two_bits = posterize(img, 2)
    levels = {0, 64, 128, 192}
    values = set(two_bits.getdata()) if mode == "L" else {v for px in two_bits.getdata() for v in px}
    assert values <= levels and len(values) > 1


def test_the_recipe_randaugment_reaches_zero_bits_at_magnitude_10_and_survives_it() -> None:
    """m9 with std 0.5 clips at 10, where increasing posterize keeps 4 - int(10/10*4) = 0 bits."""
    transform = recipe_transform(input_size=32, is_training=True, auto_augment=RAND_AUGMENT)
    (op,) = _posterize_ops(transform)
    assert op.name == "PosterizeIncreasing"
    assert op.level_fn(10.0, op.hparams) == (0,)
    img = Image.new("RGB", (32, 32), (200, 120, 30))
    assert op.aug_fn(img, *op.level_fn(10.0, op.hparams)).getextrema() == ((0, 0),) * 3
    assert op.aug_fn is posterize


def test_timm_is_left_alone() -> None:
    """Only the returned transform's ops change: timm's own op table keeps its function."""
    from timm.data import auto_augment, create_transform

    recipe_transform(input_size=32, is_training=True, auto_augment=RAND_AUGMENT)
    assert auto_augment.NAME_TO_OP["PosterizeIncreasing"] is not posterize
    (plain,) = _posterize_ops(create_transform(input_size=32, is_training=True, auto_augment=RAND_AUGMENT))
    assert plain.aug_fn is not posterize


def test_cifar_recipe_transform_survives_20000_augmentations() -> None:
    """ViT-Lite's CIFAR-100 training transform (the recipe's own, via data._transform), 20,000 draws.

    About 40 draws of 0-bit posterize are expected in 20,000 (each draw: 2 ops of 15, p=0.5,
    magnitude >= 10 with probability ~0.023), so the unfixed transform fails this test."""
    recipe = default_recipe("vit_lite", "cifar100")
    assert recipe.randaugment == RAND_AUGMENT
    config = TrainConfig(model="vit_lite_7_4", method="default", dataset="cifar100", img_size=32,
                         num_classes=100, recipe=recipe)
    transform = _transform(config, is_training=True)
    random.seed(0)
    torch.manual_seed(0)
    images = [Image.effect_noise((32, 32), 40 + 10 * i).convert("RGB") for i in range(8)]
    for i in range(20_000):
        out = transform(images[i % len(images)])
        assert out.shape == (3, 32, 32)
