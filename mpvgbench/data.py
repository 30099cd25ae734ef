"""Datasets: ``build_datasets(config, data_root) -> (train, val)`` and the ``DATASETS`` registry.

| name | source | root (spec field) |
|---|---|---|
| digits | ``sklearn.datasets.load_digits``: 1797 real 8x8 images, fixed stratified 80/20 split | none |
|  | (1-pixel random shift iff ``recipe.train_crop_scale[0] < 1``; RGB transforms do not apply) | |
| cifar100 | ``<root>/cifar-100-python/{train,test,meta}`` (torchvision's layout) | ``data.roots.cifar100`` |
| imagenet | ``ImageFolder(<root>/train)``, ``ImageFolder(<root>/val)`` | ``data.roots.imagenet`` |
| imagefolder | any ``<root>/train/<class>/``, ``<root>/val/<class>/`` | ``data.roots.imagefolder`` |
| synthetic | deterministic random tensors (benchmarks) | none |
| imagenet_synthetic | ImageNet's layout and oddities, generated (``run --smoke``; ``data_standins``) | generated |
| cifar100_synthetic | CIFAR-100's pickles, generated, md5s from the project's manifest | generated |

RGB data uses timm's ``create_transform`` driven by the recipe (through ``augment.recipe_transform``,
which keeps RandAugment's 0-bit posterize a black image under Pillow 13). Nothing is downloaded unless
asked (``data.download: true``, CIFAR-100 only). Problems are one-line :class:`DataError`s
naming the spec field to fix. torch/timm are imported inside the functions so that importing
this module stays cheap (``run --dry-run``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional

from mpvgbench.config import TrainConfig
from mpvgbench.catalog import DATASET_TABLE, DatasetInfo, dataset_info

DATASETS: dict[str, DatasetInfo] = DATASET_TABLE  # the catalog's table, under its old name
IN_MEMORY_DATASETS = frozenset({"digits"})
CIFAR_DATASETS = frozenset({"cifar100", "cifar100_synthetic"})  # CIFAR's normalisation
IMAGE_FOLDER_DATASETS = frozenset({"imagenet", "imagefolder", "imagenet_synthetic"})
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DIGITS_SPLIT_SEED = 20250101  # fixed: the split never depends on the run seed
DIGITS_VAL_FRACTION = 0.2


from mpvgbench.errors import DataError  # noqa: E402 - re-exported: a data problem, one line


__all__ = [
    "DATASETS", "DataError", "build_datasets", "dataset_info", "default_num_workers", "input_channels",
    "DigitsDataset", "SyntheticDataset", "cifar100",
]


def input_channels(config: TrainConfig) -> int:
    """Channels of the images ``build_datasets(config, ...)`` yields (pass to ``build_model``).

    The dataset's own count, except ``synthetic``, which matches the model's default
    (1 for the digits-sized micro ViT) so a smoke run builds the model as the real run does.
    """
    if config.dataset == "synthetic":
        from mpvgbench.catalog import model_info

        try:
            return model_info(config.model).in_chans
        except ValueError:
            return dataset_info("synthetic").in_chans
    return dataset_info(config.dataset).in_chans


def default_num_workers(dataset: str) -> int:
    """Loader workers when the spec says ``data.num_workers: null``."""
    if dataset in IN_MEMORY_DATASETS or dataset == "synthetic":
        return 0
    return min(8, os.cpu_count() or 1)


def build_datasets(
    config: TrainConfig,
    data_root: str | Path | None,
    *,
    train_transform_only: bool = False,
    download: bool = False,
) -> tuple[Any, Any]:
    """``(train_ds, val_ds)`` for a config; ``val_ds`` is None when ``train_transform_only``.

    Items are ``(float tensor CxHxW, int label)``. ``data_root`` is the dataset's own root
    (``spec.data_root(dataset)``); ``download`` applies to CIFAR-100 only.
    """
    name = config.dataset
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    if name == "digits":  # a random-crop scale below 1 turns on the 1-pixel shift
        train = DigitsDataset("train", augment=config.recipe.train_crop_scale[0] < 1.0)
        return train, (None if train_transform_only else DigitsDataset("val", augment=False))
    if name == "synthetic":
        return _synthetic(config, train_transform_only)
    train_tf = _transform(config, is_training=True)
    val_tf = None if train_transform_only else _transform(config, is_training=False)
    root = _require_root(name, data_root)
    if name.endswith("_synthetic"):  # a generated stand-in (data_standins): built once, cached
        from mpvgbench.data_standins import ensure_standin

        ensure_standin(name, root)
    if name in CIFAR_DATASETS:
        trusted = name == "cifar100_synthetic"  # md5s from the stand-in's manifest, never for real data
        train = cifar100(root, "train", train_tf, download=download and not trusted, trust_manifest=trusted)
        val = None if val_tf is None else cifar100(root, "test", val_tf, trust_manifest=trusted)
    else:  # imagenet, imagefolder, imagenet_synthetic
        train = _image_folder(name, root, "train", train_tf)
        val = None if val_tf is None else _image_folder(name, root, "val", val_tf)
    _check_classes(name, train, config.num_classes)
    return train, val


# ---------------------------------------------------------------------------- helpers


def _require_root(name: str, data_root: str | Path | None) -> Path:
    if (data_root is None or str(data_root) == "") and name.endswith("_synthetic"):
        from mpvgbench.data_standins import default_root  # run --smoke passes .smoke/data/...

        return default_root(name)
    if data_root is None or str(data_root) == "":
        raise DataError(
            f"data.roots.{name} is not set; point it at the dataset folder in the spec "
            f"(data: {{roots: {{{name}: /path}}}})"
            + (" or set data.download: true" if name == "cifar100" else "")
        )
    root = Path(data_root).expanduser()
    if name.endswith("_synthetic"):
        return root  # generated on first use
    if not root.is_dir():
        raise DataError(f"data.roots.{name}: {str(root)!r} is not a directory")
    return root


def _check_classes(name: str, train: Any, num_classes: int) -> None:
    found = len(train.classes)
    if found != num_classes:
        raise DataError(
            f"data.roots.{name}: the training set has {found} classes but the config expects "
            f"{num_classes}; set dataset_overrides.{name}.num_classes: {found}"
        )


def _transform(config: TrainConfig, *, is_training: bool) -> Callable[[Any], Any]:
    from mpvgbench.augment import recipe_transform  # timm's create_transform, Pillow-13 safe

    recipe = config.recipe
    mean, std = (
        (CIFAR100_MEAN, CIFAR100_STD) if config.dataset in CIFAR_DATASETS else (IMAGENET_MEAN, IMAGENET_STD)
    )
    if not is_training:
        return recipe_transform(
            input_size=config.img_size, is_training=False, interpolation="bicubic",
            crop_pct=recipe.eval_crop_pct, mean=mean, std=std,
        )
    return recipe_transform(
        input_size=config.img_size, is_training=True, scale=recipe.train_crop_scale,
        hflip=0.5, color_jitter=recipe.color_jitter or None, auto_augment=recipe.randaugment,
        interpolation="bicubic", re_prob=recipe.random_erasing, re_mode="pixel", re_count=1,
        mean=mean, std=std,
    )


def _image_folder(name: str, root: Path, split: str, transform: Any) -> Any:
    from torchvision.datasets import ImageFolder

    folder = root / split
    if not folder.is_dir():
        raise DataError(
            f"data.roots.{name}: {str(root)!r} has no {split}/ folder; expected "
            f"{split}/<class>/<image> under it"
        )
    try:
        return ImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"data.roots.{name}: {folder}: {' '.join(str(exc).split())}") from None


# ----------------------------------------------------------------------------- digits


class DigitsDataset:
    """sklearn's 8x8 digits as ``(1x8x8 float tensor, label)``; fixed stratified 80/20 split.

    Pixels (0..16) are scaled to [0, 1] then standardised with the training split's mean and
    std. With ``augment``, training items are shifted by up to one pixel (the only
    augmentation; ``build_datasets`` turns it on when ``recipe.train_crop_scale[0] < 1``).
    """

    def __init__(self, split: str, *, augment: bool = False) -> None:
        import torch

        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        images, labels, train_idx, val_idx = _digits_arrays()
        idx = train_idx if split == "train" else val_idx
        train_images = images[train_idx]
        mean, std = float(train_images.mean()), float(train_images.std())
        self.images = torch.from_numpy((images[idx] - mean) / std).float().unsqueeze(1)
        self.labels = torch.from_numpy(labels[idx]).long()
        self.background = (0.0 - mean) / std
        self.augment = augment and split == "train"
        self.classes = [str(c) for c in range(10)]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[Any, int]:
        import torch

        image = self.images[index]
        if self.augment:
            dy, dx = torch.randint(-1, 2, (2,)).tolist()
            if dy or dx:
                shifted = torch.full_like(image, self.background)
                h, w = image.shape[-2:]
                shifted[..., max(dy, 0): h + min(dy, 0), max(dx, 0): w + min(dx, 0)] = image[
                    ..., max(-dy, 0): h + min(-dy, 0), max(-dx, 0): w + min(-dx, 0)
                ]
                image = shifted
        return image, int(self.labels[index])


def _digits_arrays() -> tuple[Any, Any, Any, Any]:
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)  # (1797, 8, 8)
    labels = bunch.target.astype(np.int64)
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_VAL_FRACTION, stratify=labels,
        random_state=DIGITS_SPLIT_SEED,
    )
    return images, labels, np.sort(train_idx), np.sort(val_idx)


# --------------------------------------------------------------------------- cifar100


def cifar100(root: Path, split: str, transform: Optional[Callable] = None, *, download: bool = False,
             trust_manifest: bool = False) -> Any:
    """torchvision's CIFAR100 (fine labels) under ``<root>/cifar-100-python``.

    torchvision checks every file's md5 before unpickling it, so a damaged or foreign file is
    refused before it could run anything; its RuntimeError becomes a one-line DataError.
    ``trust_manifest`` (the ``cifar100_synthetic`` stand-in only) checks the files against the md5s
    in the manifest the project wrote next to them instead of the real CIFAR-100's: set on this
    one instance, so torchvision's class-level sums, which real data is checked against, stay.
    """
    from torchvision.datasets import CIFAR100

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    dataset = CIFAR100.__new__(CIFAR100)
    if trust_manifest:
        from mpvgbench.data_standins import read_manifest

        md5 = read_manifest(root)
        dataset.train_list, dataset.test_list = [["train", md5["train"]]], [["test", md5["test"]]]
        dataset.meta = {"filename": "meta", "key": "fine_label_names", "md5": md5["meta"]}
    try:
        CIFAR100.__init__(dataset, str(root), train=split == "train", transform=transform, download=download)
        return dataset
    except RuntimeError:
        raise DataError(
            f"data.roots.cifar100: {Path(root) / 'cifar-100-python'} is missing or has damaged files "
            "(md5 check); expected torchvision's cifar-100-python/ layout (or set data.download: true)"
        ) from None


# -------------------------------------------------------------------------- synthetic


class SyntheticDataset:
    """Deterministic random images: item ``i`` is the same tensor in every process and run.

    Each class adds its own fixed pattern to unit noise, so a model can learn something.
    """

    def __init__(self, length: int, num_classes: int, img_size: int, in_chans: int, salt: int) -> None:
        import torch

        self.length, self.num_classes, self.salt = length, num_classes, salt
        self.shape = (in_chans, img_size, img_size)
        self.classes = [str(c) for c in range(num_classes)]
        generator = torch.Generator().manual_seed(1234)
        self.patterns = torch.randn((num_classes, *self.shape), generator=generator)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Any, int]:
        import torch

        if not 0 <= index < self.length:
            raise IndexError(index)
        label = index % self.num_classes
        generator = torch.Generator().manual_seed(self.salt * 1_000_003 + index)
        noise = torch.randn(self.shape, generator=generator)
        return noise + self.patterns[label], label


def _synthetic(config: TrainConfig, train_only: bool) -> tuple[Any, Any]:
    recipe = config.recipe
    train_len = recipe.batch_size * (recipe.max_steps_per_epoch or 10)
    val_len = recipe.batch_size * (recipe.eval_max_batches or 2)
    args = (config.num_classes, config.img_size, input_channels(config))
    train = SyntheticDataset(train_len, *args, salt=1)
    return train, (None if train_only else SyntheticDataset(val_len, *args, salt=2))
