"""Family recipes (paper Table 7), dataset defaults and the light-weight model table."""

from __future__ import annotations

import pytest

from mpvgbench.catalog import MODEL_TABLE, known_models, model_info
from mpvgbench.config import Recipe
from mpvgbench.recipes import (
    QUICK_RECIPE, dataset_info, default_img_size, default_recipe, recipe_sources, smoke_recipe,
)


# Paper Table 7, transcribed: dataset, model, lr, scheduler, weight decay, batch, epochs
# (+ cooldown), warm-up epochs ("-" = none). DeiT's lr 5e-4 is per 512 images (DeiT's rule);
# the paper's optimizer is AdamW except the T2T-ViT fine-tune, which follows T2T-ViT's official
# transfer script (SGD), see mpvgbench/recipes.py.
TABLE7 = {  # (family, dataset): (lr at its reference batch, reference batch, wd, batch, epochs, cooldown, warmup)
    ("deit", "imagenet"): (5e-4, 512, 0.05, 1024, 300, 0, 5),
    ("swin", "imagenet"): (1e-3, 1024, 0.05, 1024, 300, 0, 20),
    ("ceit", "imagenet"): (5e-4, 512, 0.05, 1024, 300, 0, 5),
    ("t2t", "imagenet"): (1e-3, 512, 0.03, 512, 300, 10, 10),
    ("vit_lite", "cifar100"): (6e-4, 128, 0.06, 128, 300, 10, 10),
    ("t2t", "cifar100"): (5e-2, 128, 5e-4, 128, 60, 0, 0),
}


@pytest.mark.parametrize("family,dataset", list(TABLE7))
def test_paper_table7(family: str, dataset: str) -> None:
    lr, base, wd, batch, epochs, cooldown, warmup = TABLE7[family, dataset]
    r = default_recipe(family, dataset)
    assert (r.lr, r.lr_base_batch, r.weight_decay, r.batch_size) == (lr, base, wd, batch)
    assert (r.epochs, r.cooldown_epochs, r.warmup_epochs, r.sched) == (epochs, cooldown, warmup, "cosine")
    assert r.scaled_lr() == pytest.approx(lr * batch / base)
    assert r.optimizer == ("sgd" if (family, dataset) == ("t2t", "cifar100") else "adamw")
    sources = recipe_sources(family, dataset)
    for name in ("lr", "weight_decay", "batch_size", "epochs", "warmup_epochs", "sched"):
        assert sources[name] == "paper Table 7", (family, name)


def test_t2t_cifar100_finetune_is_the_official_transfer_script() -> None:
    """yitu-opensource/T2T-ViT transfer_learning.py: SGD(momentum 0.9), T2T module + blocks at
    0.01 x lr, head at lr, the rest frozen; wd on every parameter; cosine to 2e-4; drop path 0.1."""
    r = default_recipe("t2t", "cifar100")
    assert (r.optimizer, r.momentum, r.nesterov, r.decay_all_params) == ("sgd", 0.9, False, True)
    assert (r.min_lr, r.drop_path, r.label_smoothing, r.eval_crop_pct) == (2e-4, 0.1, 0.0, 1.0)
    assert r.mixup == r.cutmix == r.random_erasing == 0 and r.randaugment is None
    groups = {pattern: g.lr_scale for g in r.param_groups or () for pattern in g.match}
    assert groups == {"head.*": 1.0, "patch_embed.*": 0.01, "blocks.*": 0.01, "pe_chain.*": 0.01,
                      "cls_token": 0.0, "pos_embed": 0.0, "norm.*": 0.0}
    assert recipe_sources("t2t", "cifar100")["param_groups"] == "yitu-opensource/T2T-ViT transfer_learning.py"


def test_values_from_the_original_repos() -> None:
    swin = default_recipe("swin", "imagenet")  # Swin: 5e-7 / 5e-6 at batch 512, scaled to 1024
    assert (swin.warmup_lr, swin.min_lr) == (1e-6, 1e-5)
    assert default_recipe("vit_lite", "cifar100").warmup_lr == 1e-6  # CCT's cifar100.yml
    assert default_recipe("t2t", "imagenet").eval_crop_pct == 0.9  # T2T-ViT's _cfg crop_pct
    assert default_recipe("deit", "imagenet").eval_crop_pct == 0.875
    assert recipe_sources("swin", "imagenet")["warmup_lr"].startswith("microsoft/Swin-Transformer")


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
    for family, dataset in [*TABLE7, ("micro", "digits")]:  # only the fine-tune uses the new fields
        r = default_recipe(family, dataset)
        new_fields_default = r.param_groups is None and not r.decay_all_params and r.nesterov is None
        assert new_fields_default == ((family, dataset) != ("t2t", "cifar100"))
    assert set(recipe_sources("deit", "imagenet")) == set(Recipe.model_fields)


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