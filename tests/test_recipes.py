"""Family recipes (paper Table 7), dataset defaults and the light-weight model table."""

from __future__ import annotations

import pytest

from mpvgbench.catalog import MODEL_TABLE, known_models, model_info
from mpvgbench.config import Recipe
from mpvgbench.recipes import QUICK_RECIPE, dataset_info, default_img_size, default_recipe, smoke_recipe


def fields(recipe: Recipe) -> tuple[object, ...]:
    return (recipe.optimizer, recipe.scaled_lr(), recipe.weight_decay, recipe.batch_size,
            recipe.epochs, recipe.cooldown_epochs, recipe.warmup_epochs, recipe.sched)


@pytest.mark.parametrize(
    "family,dataset,expected",
    [  # optimizer, lr at the paper's batch, wd, batch, epochs, cooldown, warmup, schedule
        ("deit", "imagenet", ("adamw", 1e-3, 0.05, 1024, 300, 0, 5, "cosine")),  # 5e-4 x 1024/512
        ("ceit", "imagenet", ("adamw", 1e-3, 0.05, 1024, 300, 0, 5, "cosine")),
        ("swin", "imagenet", ("adamw", 1e-3, 0.05, 1024, 300, 0, 20, "cosine")),
        ("t2t", "imagenet", ("adamw", 1e-3, 0.03, 512, 300, 10, 10, "cosine")),
        ("vit_lite", "cifar100", ("adamw", 6e-4, 0.06, 128, 300, 10, 10, "cosine")),
        ("t2t", "cifar100", ("adamw", 5e-2, 5e-4, 128, 60, 0, 0, "cosine")),
    ],
)
def test_paper_table7(family: str, dataset: str, expected: tuple[object, ...]) -> None:
    assert fields(default_recipe(family, dataset)) == pytest.approx(expected)


def test_family_specifics() -> None:
    deit, swin, t2t = (default_recipe(f, "imagenet") for f in ("deit", "swin", "t2t"))
    assert deit.randaugment == "rand-m9-mstd0.5-inc1" and deit.repeated_aug and deit.drop_path == 0.1
    assert (deit.mixup, deit.cutmix, deit.label_smoothing, deit.random_erasing) == (0.8, 1.0, 0.1, 0.25)
    assert swin.grad_clip == 5.0 and swin.drop_path == 0.2 and not swin.repeated_aug
    assert not t2t.repeated_aug
    lite = default_recipe("vit_lite", "cifar100")
    assert lite.train_crop_scale == (0.8, 1.0) and lite.randaugment and lite.mixup == 0.8
    finetune = default_recipe("t2t", "cifar100")
    assert finetune.mixup == 0 and finetune.randaugment is None and finetune.warmup_epochs == 0
    assert default_recipe("ceit", "cifar100") == lite  # from-scratch CIFAR recipe for the rest
    assert default_recipe("unknown", "imagenet") == deit


def test_quick_recipe_is_cpu_sized_without_heavy_augmentation() -> None:
    for family in ("micro", "deit", "t2t"):
        assert default_recipe(family, "digits") is QUICK_RECIPE
    r = QUICK_RECIPE
    assert 5 <= r.epochs <= 20 and 32 <= r.batch_size <= 128 and 1e-3 <= r.scaled_lr() <= 5e-3
    assert r.randaugment is None and r.mixup == r.cutmix == 0 and r.random_erasing == 0
    assert not r.repeated_aug and r.train_crop_scale == (1.0, 1.0)


def test_smoke_recipe() -> None:
    smoke = smoke_recipe(default_recipe("swin", "imagenet"), "swin")
    assert (smoke.epochs, smoke.cooldown_epochs, smoke.warmup_epochs, smoke.batch_size) == (2, 0, 1, 4)
    assert (smoke.max_steps_per_epoch, smoke.eval_max_batches, smoke.grad_clip) == (2, 1, 5.0)


def test_image_sizes_and_datasets() -> None:
    assert default_img_size("vit_lite_7_4", "cifar100") == 32
    assert default_img_size("t2t_vit_7", "cifar100") == 224
    assert default_img_size("vit_micro", "digits") == 8
    assert default_img_size("deit_base", "imagenet") == 224
    assert default_img_size("vit_micro", "cifar100") == 32
    assert dataset_info("synthetic").in_chans == 3
    with pytest.raises(ValueError, match="unknown model 'resnet50'; allowed: deit_tiny"):
        model_info("resnet50")


def test_catalog_agrees_with_the_built_models() -> None:
    """The torch-free catalog's facts are those of the real models (depth = PE chain depth)."""
    import torch

    import mpvgbench.models as models
    for name, info in MODEL_TABLE.items():
        with torch.device("meta"):
            model = models.build_model(name, "lape", img_size=info.smoke_img_size, in_chans=info.in_chans)
        assert model.pe_chain.depth == info.depth, name
        assert models.model_family(name) == info.family
    assert known_models() == models.list_models()