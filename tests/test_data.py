"""Datasets: digits split, synthetic determinism, CIFAR-100 files, ImageFolder, root errors."""

from __future__ import annotations

import hashlib
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mpvgbench.config import Recipe, TrainConfig
from mpvgbench.data import (
    DATASETS,
    DataError,
    DigitsDataset,
    build_datasets,
    dataset_info,
    default_num_workers,
    input_channels,
)
from mpvgbench.methods import canonical_method_dict
from mpvgbench.recipes import QUICK_RECIPE, default_recipe

ROOT = Path(__file__).resolve().parent.parent


def config(dataset: str, model: str = "vit_lite_7_4", img_size: int = 32, num_classes: int = 100,
           recipe: Recipe | None = None) -> TrainConfig:
    return TrainConfig(model=model, method=canonical_method_dict("mpvg"), dataset=dataset, img_size=img_size,
                       num_classes=num_classes, recipe=recipe or default_recipe("vit_lite", "cifar100"))


# ------------------------------------------------------------------------------- digits


def test_digits_split_is_fixed_stratified_and_independent_of_the_seed() -> None:
    torch.manual_seed(0)
    train, val = DigitsDataset("train"), DigitsDataset("val")
    torch.manual_seed(123)
    train2, val2 = DigitsDataset("train"), DigitsDataset("val")
    assert (len(train), len(val)) == (1437, 360)
    assert torch.equal(train.images, train2.images) and torch.equal(val.labels, val2.labels)
    counts = torch.bincount(val.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    assert abs(float(train.images.mean())) < 1e-4 and abs(float(train.images.std()) - 1) < 1e-3
    image, label = train[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32 and 0 <= label < 10
    assert train.classes == [str(c) for c in range(10)]


def test_digits_augmentation_is_a_small_shift_and_off_by_default() -> None:
    plain = DigitsDataset("train")
    assert torch.equal(plain[5][0], plain[5][0])
    shifted = DigitsDataset("train", augment=True)
    torch.manual_seed(0)
    samples = [shifted[5][0] for _ in range(20)]
    assert all(s.shape == (1, 8, 8) for s in samples)
    assert any(not torch.equal(s, plain[5][0]) for s in samples)
    assert not DigitsDataset("val", augment=True).augment


def test_build_digits_follows_the_recipe() -> None:
    cfg = config("digits", model="vit_micro", img_size=8, num_classes=10, recipe=QUICK_RECIPE)
    train, val = build_datasets(cfg, None)
    assert (len(train), len(val)) == (1437, 360) and not train.augment
    shifted = cfg.model_copy(update={"recipe": QUICK_RECIPE.model_copy(update={"train_crop_scale": (0.8, 1.0)})})
    assert build_datasets(shifted, None)[0].augment
    train_only = build_datasets(cfg, None, train_transform_only=True)
    assert train_only[1] is None
    assert input_channels(cfg) == 1 and default_num_workers("digits") == 0


# ---------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_sized_by_the_config() -> None:
    recipe = QUICK_RECIPE.model_copy(update={"batch_size": 4, "max_steps_per_epoch": 2, "eval_max_batches": 1})
    cfg = config("synthetic", model="deit_tiny", img_size=32, num_classes=10, recipe=recipe)
    train, val = build_datasets(cfg, None)
    assert (len(train), len(val)) == (8, 4)
    x, y = train[3]
    assert x.shape == (3, 32, 32) and y == 3
    assert torch.equal(train[3][0], build_datasets(cfg, None)[0][3][0])
    assert not torch.equal(train[3][0], val[3][0])
    micro = cfg.model_copy(update={"model": "vit_micro", "img_size": 8})
    assert build_datasets(micro, None)[0][0][0].shape == (1, 8, 8)
    with pytest.raises(IndexError):
        train[8]


# ---------------------------------------------------------------------------- cifar100


def write_cifar(root: Path, monkeypatch: pytest.MonkeyPatch, n_train: int = 6, n_test: int = 4) -> Path:
    """Tiny CIFAR-100 pickles in torchvision's layout; torchvision is told their md5 sums."""
    from torchvision.datasets import CIFAR100

    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        entry = {
            "filenames": [f"img{i}.png" for i in range(n)],
            "batch_label": f"{split} batch",
            "fine_labels": [int(v) for v in rng.integers(0, 100, n)],
            "coarse_labels": [int(v) for v in rng.integers(0, 20, n)],
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        }
        (base / split).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": [f"s{i}" for i in range(20)]}
    (base / "meta").write_bytes(pickle.dumps(meta))
    md5 = {name: hashlib.md5((base / name).read_bytes()).hexdigest() for name in ("train", "test", "meta")}
    monkeypatch.setattr(CIFAR100, "train_list", [["train", md5["train"]]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", md5["test"]]])
    monkeypatch.setattr(CIFAR100, "meta", {"filename": "meta", "key": "fine_label_names", "md5": md5["meta"]})
    return root


def test_cifar100_reads_torchvision_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_cifar(tmp_path / "c100", monkeypatch)
    cfg = config("cifar100")
    train, val = build_datasets(cfg, str(root))
    assert (len(train), len(val)) == (6, 4) and len(train.classes) == 100
    x, y = train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y < 100
    assert val[1][0].shape == (3, 32, 32)
    big = config("cifar100", model="t2t_vit_7", img_size=224, recipe=default_recipe("t2t", "cifar100"))
    assert build_datasets(big, root)[0][2][0].shape == (3, 224, 224)


def test_cifar100_refuses_files_that_fail_their_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a foreign pickle is never unpickled: torchvision checks the md5 first
    root = write_cifar(tmp_path / "c100", monkeypatch)

    class Evil:
        def __reduce__(self) -> Any:
            return (print, ("pwned",))

    (root / "cifar-100-python" / "train").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(DataError, match=r"data.roots.cifar100: .*cifar-100-python is missing or has damaged files"):
        build_datasets(config("cifar100"), root)


def test_cifar100_download_is_wired(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.datasets import CIFAR100

    calls: list[str] = []
    monkeypatch.setattr(CIFAR100, "download", lambda self: calls.append(self.root))
    root = write_cifar(tmp_path / "c100", monkeypatch)
    build_datasets(config("cifar100"), root, download=True)
    assert calls == [str(root)]  # once: the test split does not fetch again


@pytest.mark.parametrize("how", ["unset", "missing", "empty"])
def test_cifar100_missing_root_names_the_spec_field(tmp_path: Path, how: str) -> None:
    root = {"unset": None, "missing": tmp_path / "nope", "empty": tmp_path}[how]
    with pytest.raises(DataError) as info:
        build_datasets(config("cifar100"), root)
    message = str(info.value)
    assert "data.roots.cifar100" in message and "\n" not in message
    if how == "unset":
        assert "data.download: true" in message


# ------------------------------------------------------------------------- image folders


def write_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 2) -> Path:
    from PIL import Image

    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("dataset", ["imagefolder", "imagenet"])
def test_image_folder_datasets(tmp_path: Path, dataset: str) -> None:
    root = write_folder(tmp_path / "imgs")
    cfg = config(dataset, model="deit_tiny", img_size=32, num_classes=2, recipe=default_recipe("deit", "imagenet"))
    train, val = build_datasets(cfg, root)
    assert (len(train), len(val)) == (4, 4) and train.classes == ["cat", "dog"]
    assert train[0][0].shape == (3, 32, 32) and val[3][1] == 1
    with pytest.raises(DataError, match=f"2 classes but the config expects 5; set dataset_overrides.{dataset}.num_classes: 2"):
        build_datasets(cfg.model_copy(update={"num_classes": 5}), root)


def test_image_folder_without_val_split(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "imgs")
    for item in (root / "val").rglob("*.png"):
        item.unlink()
    for folder in sorted((root / "val").iterdir()):
        folder.rmdir()
    (root / "val").rmdir()
    cfg = config("imagenet", model="deit_tiny", img_size=32, num_classes=2, recipe=Recipe())
    with pytest.raises(DataError, match=r"data.roots.imagenet: .* has no val/ folder"):
        build_datasets(cfg, root)
    assert build_datasets(cfg, root, train_transform_only=True)[1] is None
    with pytest.raises(DataError, match="data.roots.imagenet is not set"):
        build_datasets(cfg, None)


# --------------------------------------------------------------------------------- misc


def test_registry_and_info() -> None:
    assert set(DATASETS) == {"digits", "cifar100", "imagenet", "imagefolder", "synthetic",
                             "coco", "ade20k", "coco_synthetic", "ade20k_synthetic",  # Tables 3-4
                             "imagenet_synthetic", "cifar100_synthetic"}  # run --smoke's stand-ins
    digits, cifar = dataset_info("digits"), dataset_info("cifar100")
    assert (digits.num_classes, digits.img_size, digits.in_chans) == (10, 8, 1)
    assert (cifar.num_classes, cifar.img_size, cifar.in_chans) == (100, 32, 3)
    assert dataset_info("imagefolder").num_classes is None
    with pytest.raises(ValueError, match="unknown dataset"):  # UnknownNameError is a ValueError too
        dataset_info("mnist")


def test_spec_matrix_and_data_imports_stay_light() -> None:
    code = ("import sys, mpvgbench.spec, mpvgbench.matrix, mpvgbench.data, mpvgbench.recipes; "
            "print(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
