"""Default training recipes per model family and dataset (paper Table 7 + each family's own defaults).

A cell's recipe is ``default_recipe(family, dataset)`` with the spec's overrides on top
(``matrix.expand``). This module also holds the dataset defaults (classes, image size,
channels); the model facts (family, depth, sizes) are in the torch-free ``mpvgbench.catalog``,
so ``run --dry-run`` never imports torch or timm (~3 s).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from mpvgbench.catalog import model_info
from mpvgbench.config import Recipe
from mpvgbench.errors import UnknownNameError

# ---------------------------------------------------------------------------- datasets


class DatasetInfo(NamedTuple):
    num_classes: Optional[int]  # None: the spec must say (dataset_overrides.<name>.num_classes)
    img_size: int  # native size of the images (the model's own size is used for large images)
    in_chans: int


DATASET_INFO: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(10, 8, 1),  # sklearn's 1797 8x8 handwritten digits, bundled
    "cifar100": DatasetInfo(100, 32, 3),
    "imagenet": DatasetInfo(1000, 224, 3),
    "imagefolder": DatasetInfo(None, 224, 3),  # root/train/<class>/*, root/val/<class>/*
    "synthetic": DatasetInfo(1000, 224, 3),  # random tensors: smoke runs and benchmarks
}
SMALL_IMAGE_DATASETS = frozenset({"digits", "cifar100"})
SMOKE_NUM_CLASSES = 10


def dataset_info(name: str) -> DatasetInfo:
    """``(num_classes, img_size, in_chans)`` defaults of a dataset name."""
    try:
        return DATASET_INFO[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown dataset {name!r}; allowed: {', '.join(DATASET_INFO)}"
        ) from None


# ------------------------------------------------------------------------------ models
# The model facts live in mpvgbench.catalog (torch-free).


def default_img_size(model: str, dataset: str) -> int:
    """The image size a model trains at on a dataset.

    Small-image datasets keep their native size for the small-image families (ViT-Lite on
    CIFAR: 32; the micro ViT: 8) and for digits always (8x8); other models upsample to their
    own size (T2T-ViT fine-tuned on CIFAR-100 at 224, as in the paper).
    """
    info = model_info(model)
    data = dataset_info(dataset)
    if dataset == "digits" or (
        dataset in SMALL_IMAGE_DATASETS and info.family in ("vit_lite", "micro")
    ):
        return data.img_size
    return info.default_img_size


# ----------------------------------------------------------------------------- recipes

# ImageNet recipes (paper Table 7). Recipe()'s defaults are DeiT's.
_DEIT = Recipe()
_CEIT = Recipe()
_SWIN = Recipe(
    lr=1e-3, lr_base_batch=1024, warmup_epochs=20, warmup_lr=5e-7, min_lr=5e-6,
    grad_clip=5.0, drop_path=0.2, repeated_aug=False,
)
_T2T_IMAGENET = Recipe(
    epochs=300, cooldown_epochs=10, batch_size=512, lr=1e-3, lr_base_batch=512,
    weight_decay=0.03, warmup_epochs=10, repeated_aug=False,
)
# CIFAR-100 (paper Table 7): ViT-Lite from scratch (CCT's recipe), T2T-ViT fine-tuned.
_VIT_LITE_CIFAR = Recipe(
    epochs=300, cooldown_epochs=10, batch_size=128, lr=6e-4, lr_base_batch=128,
    weight_decay=0.06, warmup_epochs=10, warmup_lr=1e-5, min_lr=1e-5,
    train_crop_scale=(0.8, 1.0), eval_crop_pct=1.0, repeated_aug=False,
)
# The paper says AdamW; T2T's official transfer script uses SGD (momentum 0.9): override
# with `recipe: {optimizer: sgd}`. Light augmentation as in that script; no warmup ("-").
_T2T_CIFAR_FINETUNE = Recipe(
    epochs=60, batch_size=128, lr=5e-2, lr_base_batch=128, weight_decay=5e-4,
    optimizer="adamw", warmup_epochs=0, min_lr=0.0, drop_path=0.0, label_smoothing=0.0,
    mixup=0.0, cutmix=0.0, randaugment=None, color_jitter=0.0, random_erasing=0.0,
    train_crop_scale=(0.8, 1.0), eval_crop_pct=1.0, repeated_aug=False,
)
# 8x8 one-channel digits on a CPU: seconds per run, no heavy augmentation.
QUICK_RECIPE = Recipe(
    epochs=10, batch_size=64, lr=3e-3, lr_base_batch=64, min_lr=1e-5, warmup_epochs=1,
    warmup_lr=1e-4, weight_decay=0.05, drop_path=0.0, label_smoothing=0.0, mixup=0.0,
    cutmix=0.0, mixup_prob=0.0, randaugment=None, color_jitter=0.0, random_erasing=0.0,
    train_crop_scale=(1.0, 1.0), eval_crop_pct=1.0, repeated_aug=False, amp=False,
)

IMAGENET_RECIPES: dict[str, Recipe] = {
    "deit": _DEIT, "ceit": _CEIT, "swin": _SWIN, "t2t": _T2T_IMAGENET,
    "vit_lite": _DEIT, "micro": _DEIT,
}
CIFAR_RECIPES: dict[str, Recipe] = {"t2t": _T2T_CIFAR_FINETUNE}


def default_recipe(family: str, dataset: str) -> Recipe:
    """The family's recipe for a dataset (unknown families get DeiT's)."""
    if dataset == "digits":
        return QUICK_RECIPE
    if dataset == "cifar100":
        return CIFAR_RECIPES.get(family, _VIT_LITE_CIFAR)
    return IMAGENET_RECIPES.get(family, _DEIT)


def smoke_recipe(recipe: Recipe, family: str) -> Recipe:
    """A seconds-long version of ``recipe``: 2 epochs of 2 steps, one eval batch, small batch."""
    return recipe.model_copy(
        update={
            "epochs": 2,
            "cooldown_epochs": 0,
            "warmup_epochs": min(recipe.warmup_epochs, 1),
            "batch_size": 4 if family == "swin" else 8,
            "max_steps_per_epoch": 2,
            "eval_max_batches": 1,
            "repeated_aug": False,
            "compile": False,
        }
    )
