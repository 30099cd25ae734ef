"""Default training recipes per model family and dataset (paper Table 7 + each family's own defaults).

A cell's recipe is ``default_recipe(family, dataset)`` with the spec's overrides on top
(``matrix.expand``). The model and dataset facts (family, depth, sizes; classes, image size,
channels, task) are in the torch-free ``mpvgbench.catalog``, so ``run --dry-run`` never imports
torch or timm (~3 s).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

from mpvgbench.catalog import (  # noqa: F401 - dataset names re-exported from the catalog
    DATASET_TABLE, DOWNSTREAM_MODELS, DOWNSTREAM_TASKS, SMOKE_DATASETS, DatasetInfo, dataset_info,
    model_info, smoke_dataset,
)
from mpvgbench.config import ParamGroup, Recipe

# ---------------------------------------------------------------------------- datasets
# The dataset facts live in mpvgbench.catalog; these names are its, re-exported.
DATASET_INFO = DATASET_TABLE
SMALL_IMAGE_DATASETS = frozenset({"digits", "cifar100"})
SMOKE_NUM_CLASSES = 10


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
    if dataset in DOWNSTREAM_TASKS:  # the training crop; the backbone keeps its own PE grid
        return data.img_size
    if dataset == "digits" or (
        dataset in SMALL_IMAGE_DATASETS and info.family in ("vit_lite", "micro")
    ):
        return data.img_size
    return info.default_img_size


# ----------------------------------------------------------------------------- recipes
# Every value that differs from Recipe()'s default carries its source; ``recipe_sources`` (and
# `mpvgbench recipes`) show them. The original repositories were read at these files:
PAPER = "paper Table 7"
DEIT_DEFAULT = "default (DeiT's recipe)"
SWIN_REPO = "microsoft/Swin-Transformer config.py + main.py"
# Swin's config.py: BASE_LR 5e-4, WARMUP_LR 5e-7, MIN_LR 5e-6, all three scaled by
# total_batch / 512 in main.py; at Table 7's batch 1024: 1e-3, 1e-6, 1e-5.
SWIN_TINY_CFG = "microsoft/Swin-Transformer configs/swin/swin_tiny_patch4_window7_224.yaml"
T2T_REPO = "yitu-opensource/T2T-ViT main.py"
T2T_CFG = "yitu-opensource/T2T-ViT models/t2t_vit.py"  # _cfg(crop_pct=.9), used for eval
T2T_TRANSFER = "yitu-opensource/T2T-ViT transfer_learning.py"
CCT_REPO = "SHI-Labs/Compact-Transformers configs/datasets/cifar100.yml"
MPVGBENCH = "mpvgbench"
COCO_RECIPE = "paper Table 8 (COCO, Mask R-CNN 3x+MS)"
ADE_RECIPE = "paper Table 9 (ADE20K, UperNet)"
VIT_ADAPTER = "czczup/ViT-Adapter configs (*_deit_adapter_tiny_*)"
DENSE_UNUSED = MPVGBENCH + " (classification only: off, unused by the dense trainer)"


class SourcedRecipe(NamedTuple):
    recipe: Recipe
    sources: dict[str, str]  # field -> where its value comes from (missing: DEIT_DEFAULT)


def _sourced(base: Optional[SourcedRecipe] = None, **values: tuple[Any, str]) -> SourcedRecipe:
    """``base`` (or Recipe()) with ``field=(value, source)`` updates, validated."""
    start = base.recipe if base is not None else Recipe()
    recipe = Recipe.model_validate({**start.model_dump(), **{k: v for k, (v, _) in values.items()}})
    sources = {**(base.sources if base is not None else {}), **{k: s for k, (_, s) in values.items()}}
    return SourcedRecipe(recipe, sources)


# ImageNet recipes (paper Table 7). Recipe()'s defaults are DeiT's.
_DEIT = _sourced(
    epochs=(300, PAPER), batch_size=(1024, PAPER), lr=(5e-4, PAPER), lr_base_batch=(512, PAPER),
    weight_decay=(0.05, PAPER), warmup_epochs=(5, PAPER), sched=("cosine", PAPER),
)
_CEIT = _DEIT
_SWIN = _sourced(
    _DEIT, lr=(1e-3, PAPER), lr_base_batch=(1024, PAPER), warmup_epochs=(20, PAPER),
    warmup_lr=(1e-6, SWIN_REPO), min_lr=(1e-5, SWIN_REPO), grad_clip=(5.0, SWIN_REPO),
    drop_path=(0.2, SWIN_TINY_CFG), repeated_aug=(False, SWIN_REPO),
)
_T2T_IMAGENET = _sourced(
    _DEIT, epochs=(300, PAPER), cooldown_epochs=(10, PAPER), batch_size=(512, PAPER),
    lr=(1e-3, PAPER), lr_base_batch=(512, PAPER), weight_decay=(0.03, PAPER),
    warmup_epochs=(10, PAPER), repeated_aug=(False, T2T_REPO), eval_crop_pct=(0.9, T2T_CFG),
)
# CIFAR-100 (paper Table 7): ViT-Lite from scratch (CCT's recipe), T2T-ViT fine-tuned.
_VIT_LITE_CIFAR = _sourced(
    _DEIT, epochs=(300, PAPER), cooldown_epochs=(10, PAPER), batch_size=(128, PAPER),
    lr=(6e-4, PAPER), lr_base_batch=(128, PAPER), weight_decay=(0.06, PAPER),
    warmup_epochs=(10, PAPER), warmup_lr=(1e-6, CCT_REPO), min_lr=(1e-5, CCT_REPO),
    train_crop_scale=((0.8, 1.0), CCT_REPO), eval_crop_pct=(1.0, CCT_REPO),
    repeated_aug=(False, CCT_REPO),
)
# T2T-ViT's official transfer script (--transfer-learning True) at Table 7's lr/wd/batch/epochs.
# The paper says AdamW for all its experiments, but AdamW at lr 5e-2 wrecks pretrained weights;
# these numbers are that script's, which runs plain SGD (momentum 0.9, no Nesterov) with the
# T2T module and the blocks at --transfer-ratio 0.01 x lr, the new head at lr, and everything
# else (class token, fixed sinusoidal PE, Last LN) in no group at all, i.e. frozen. The PE
# chain's LN' (the methods' per-block norms) belong to the blocks. Weight decay on every
# parameter; cosine to --min-lr 2e-4 (epoch-wise there, per update here); drop path 0.1;
# plain cross-entropy, no mixup/RandAugment/erasing; eval on the resized image (no crop).
# The script's train crop (resize, pad 28 px, random 224 crop, flip) has no Recipe knob: the
# (0.8, 1) random-resized crop is the closest light augmentation.
T2T_TRANSFER_PARAM_GROUPS = (
    ParamGroup(match=("head.*",), lr_scale=1.0),
    ParamGroup(match=("patch_embed.*", "blocks.*", "pe_chain.*"), lr_scale=0.01),
    ParamGroup(match=("cls_token", "pos_embed", "norm.*"), lr_scale=0.0),
)
_T2T_CIFAR_FINETUNE = _sourced(
    epochs=(60, PAPER), batch_size=(128, PAPER), lr=(5e-2, PAPER), lr_base_batch=(128, PAPER),
    weight_decay=(5e-4, PAPER), warmup_epochs=(0, PAPER), sched=("cosine", PAPER),
    optimizer=("sgd", T2T_TRANSFER), momentum=(0.9, T2T_TRANSFER), nesterov=(False, T2T_TRANSFER),
    param_groups=(T2T_TRANSFER_PARAM_GROUPS, T2T_TRANSFER), decay_all_params=(True, T2T_TRANSFER),
    min_lr=(2e-4, T2T_TRANSFER), drop_path=(0.1, T2T_TRANSFER), label_smoothing=(0.0, T2T_TRANSFER),
    mixup=(0.0, T2T_TRANSFER), cutmix=(0.0, T2T_TRANSFER), randaugment=(None, T2T_TRANSFER),
    color_jitter=(0.0, T2T_TRANSFER), random_erasing=(0.0, T2T_TRANSFER),
    eval_crop_pct=(1.0, T2T_TRANSFER), repeated_aug=(False, T2T_TRANSFER),
    train_crop_scale=((0.8, 1.0), MPVGBENCH + " (nearest to the script's padded random crop)"),
)
# 8x8 one-channel digits on a CPU: seconds per run, no heavy augmentation.
_QUICK = _sourced(**{
    name: (value, MPVGBENCH + " quick recipe (digits on a CPU)") for name, value in dict(
        epochs=10, batch_size=64, lr=3e-3, lr_base_batch=64, min_lr=1e-5, warmup_epochs=1,
        warmup_lr=1e-4, weight_decay=0.05, drop_path=0.0, label_smoothing=0.0, mixup=0.0,
        cutmix=0.0, mixup_prob=0.0, randaugment=None, color_jitter=0.0, random_erasing=0.0,
        train_crop_scale=(1.0, 1.0), eval_crop_pct=1.0, repeated_aug=False, amp=False,
    ).items()
})
QUICK_RECIPE = _QUICK.recipe
# Dense prediction. The downstream trainer reads lr, weight_decay, batch_size, epochs (COCO) or
# max_iters (ADE20K), drop_path, max_steps_per_epoch and eval_max_batches; the schedules
# (3x steps, poly), warmups and parameter groups are the official configs' (downstream/optim.py).
# Classification-only fields are set to "off" so the recipe shows nothing that does not run.
_DENSE_OFF = dict(
    lr_base_batch=None, warmup_epochs=0, min_lr=0.0, label_smoothing=0.0, mixup=0.0, cutmix=0.0,
    mixup_prob=0.0, randaugment=None, color_jitter=0.0, random_erasing=0.0, repeated_aug=False,
)
_COCO = _sourced(
    optimizer=("adamw", COCO_RECIPE), lr=(1e-4, COCO_RECIPE), weight_decay=(0.05, COCO_RECIPE),
    batch_size=(8, COCO_RECIPE), epochs=(36, COCO_RECIPE), sched=("step", COCO_RECIPE),
    drop_path=(0.1, VIT_ADAPTER), **{k: (v, DENSE_UNUSED) for k, v in _DENSE_OFF.items()},
)
_ADE20K = _sourced(
    optimizer=("adamw", ADE_RECIPE), lr=(12e-5, ADE_RECIPE), weight_decay=(0.01, ADE_RECIPE),
    batch_size=(8, ADE_RECIPE), max_iters=(160_000, ADE_RECIPE), epochs=(1, MPVGBENCH + " (max_iters rules)"),
    sched=("none", ADE_RECIPE + " poly, in downstream/optim.py"),
    drop_path=(0.1, VIT_ADAPTER), **{k: (v, DENSE_UNUSED) for k, v in _DENSE_OFF.items()},
)
DENSE_RECIPES: dict[str, SourcedRecipe] = {
    "coco": _COCO, "coco_synthetic": _COCO, "ade20k": _ADE20K, "ade20k_synthetic": _ADE20K,
}

IMAGENET_RECIPES: dict[str, SourcedRecipe] = {
    "deit": _DEIT, "ceit": _CEIT, "swin": _SWIN, "t2t": _T2T_IMAGENET,
    "vit_lite": _DEIT, "micro": _DEIT,
}
CIFAR_RECIPES: dict[str, SourcedRecipe] = {"t2t": _T2T_CIFAR_FINETUNE}


def _sourced_default(family: str, dataset: str) -> SourcedRecipe:
    if dataset in DENSE_RECIPES:
        return DENSE_RECIPES[dataset]
    if dataset == "digits":
        return _QUICK
    if dataset == "cifar100":
        return CIFAR_RECIPES.get(family, _VIT_LITE_CIFAR)
    return IMAGENET_RECIPES.get(family, _DEIT)


def default_recipe(family: str, dataset: str) -> Recipe:
    """The family's recipe for a dataset (unknown families get DeiT's)."""
    return _sourced_default(family, dataset).recipe


def recipe_sources(family: str, dataset: str) -> dict[str, str]:
    """Where each field of ``default_recipe(family, dataset)`` comes from, for every field."""
    sources = _sourced_default(family, dataset).sources
    return {name: sources.get(name, DEIT_DEFAULT) for name in Recipe.model_fields}


def smoke_recipe(recipe: Recipe, family: str, dataset: str = "synthetic") -> Recipe:
    """A seconds-long version of ``recipe``: 2 epochs of 2 steps, one eval batch, small batch.
    Dense prediction: 4 iterations of 2 images (BatchNorm after the PPM's 1x1 pool needs 2)."""
    if dataset in DOWNSTREAM_TASKS:
        update: dict[str, Any] = {"batch_size": 2, "max_steps_per_epoch": 2, "eval_max_batches": 1}
        update.update({"max_iters": 4} if recipe.max_iters is not None else {"epochs": 2})
        return recipe.model_copy(update=update)
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
