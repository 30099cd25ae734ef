"""The generated stand-ins are in the real formats, carry the real datasets' oddities, and are read
by the real readers (ImageFolder, torchvision's CIFAR100, the COCO and ADE20K readers)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image

from mpvgbench.config import TrainConfig
from mpvgbench.data import DataError, build_datasets, cifar100
from mpvgbench.data_standins import (
    IMAGENET_SIZES, MANIFEST, ensure_standin, make_cifar100_standin, make_imagenet_standin,
    smoke_data_roots,
)
from mpvgbench.recipes import default_recipe


def standin_config(dataset: str, model: str = "deit_tiny", img_size: int = 32) -> TrainConfig:
    family = "vit_lite" if model == "vit_lite_7_4" else "deit"
    real = "cifar100" if dataset.startswith("cifar") else "imagenet"
    return TrainConfig(model=model, method="mpvg", dataset=dataset, img_size=img_size, num_classes=10,
                       recipe=default_recipe(family, real))


def test_imagenet_standin_has_the_real_oddities(tmp_path: Path) -> None:
    root = make_imagenet_standin(tmp_path / "in", classes=4, train_per_class=3, val_per_class=2)
    files = sorted((root / "train").rglob("*.JPEG"))
    assert len(files) == 12 and len(list((root / "val").rglob("*.JPEG"))) == 8
    opened = [Image.open(f) for f in files]
    formats_modes = {(im.format, im.mode) for im in opened}
    assert {("JPEG", "CMYK"), ("JPEG", "L"), ("PNG", "RGB"), ("JPEG", "RGB")} <= formats_modes
    sizes = {im.size for im in opened}
    assert len(sizes) >= 6 and sizes <= set(IMAGENET_SIZES)
    assert any(w < h for w, h in sizes) and any(w > 3 * h for w, h in sizes)  # portrait, panorama
    again = make_imagenet_standin(tmp_path / "again", classes=4, train_per_class=3, val_per_class=2)
    assert all(f.read_bytes() == (again / f.relative_to(root)).read_bytes() for f in files)  # seeded


def test_imagenet_standin_goes_through_imagefolder_and_the_recipe_transform(tmp_path: Path) -> None:
    root = make_imagenet_standin(tmp_path / "in")
    train, val = build_datasets(standin_config("imagenet_synthetic"), root)
    assert type(train).__name__ == "ImageFolder" and len(train.classes) == 10
    assert any("RandAugment" in type(t).__name__ for t in train.transform.transforms)
    for ds in (train, val):
        for i in range(len(ds)):  # every oddity decodes to an RGB 32x32 tensor
            x, y = ds[i]
            assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y < 10


def test_cifar_standin_is_read_by_torchvision_with_its_manifest(tmp_path: Path) -> None:
    root = make_cifar100_standin(tmp_path / "c")
    base = root / "cifar-100-python"
    with open(base / "train", "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    assert entry["data"].shape == (40, 3072) and entry["data"].dtype.name == "uint8"
    train, val = build_datasets(standin_config("cifar100_synthetic", "vit_lite_7_4"), root)
    assert type(train).__name__ == "CIFAR100" and (len(train), len(val)) == (40, 20)
    assert train[0][0].shape == (3, 32, 32) and sorted(set(train.targets)) == list(range(10))


def test_real_cifar_keeps_torchvisions_md5_check(tmp_path: Path) -> None:
    """The manifest is read for the stand-in dataset only: the real reader refuses the same files,
    and the stand-in reader refuses a file that no longer matches its manifest."""
    from torchvision.datasets import CIFAR100

    real_train_md5 = CIFAR100.train_list[0][1]
    root = make_cifar100_standin(tmp_path / "c")
    with pytest.raises(DataError, match="md5"):
        cifar100(root, "train")
    assert cifar100(root, "train", trust_manifest=True).train_list[0][1] != real_train_md5
    assert CIFAR100.train_list[0][1] == real_train_md5  # the class's sums are untouched
    (root / "cifar-100-python" / "test").write_bytes(b"not the file the manifest lists")
    with pytest.raises(DataError, match="md5"):
        cifar100(root, "test", trust_manifest=True)
    (root / "cifar-100-python" / MANIFEST).unlink()
    with pytest.raises(DataError, match="no readable stand-in manifest"):
        cifar100(root, "train", trust_manifest=True)


def test_coco_standin_has_polygons_rle_crowds_and_an_empty_image(tmp_path: Path) -> None:
    from mpvgbench.downstream.data import CocoInstances

    root = ensure_standin("coco_synthetic", tmp_path / "coco")
    content = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    anns = content["annotations"]
    assert any(isinstance(a["segmentation"], list) for a in anns)  # polygons
    assert any(isinstance(a["segmentation"].get("counts"), str) for a in anns if isinstance(a["segmentation"], dict))
    (crowd,) = [a for a in anns if a["iscrowd"]]
    assert isinstance(crowd["segmentation"]["counts"], list)  # uncompressed RLE, as COCO's crowds
    annotated = {a["image_id"] for a in anns}
    assert [i["id"] for i in content["images"] if i["id"] not in annotated]  # an image without any
    assert all(i["file_name"].endswith(".jpg") for i in content["images"])
    val, train = CocoInstances(root, "val"), CocoInstances(root, "train")
    assert (len(val), len(train)) == (5, 4)  # the empty image: evaluated, never trained on
    for i in range(len(val)):
        _, target = val[i]
        assert len(target["masks"]) == len(target["boxes"])


def test_ade20k_standin_is_jpeg_images_with_png_masks(tmp_path: Path) -> None:
    from mpvgbench.downstream.data import ADE20K

    root = ensure_standin("ade20k_synthetic", tmp_path / "ade")
    images = sorted((root / "ADEChallengeData2016" / "images" / "training").iterdir())
    assert images and all(p.suffix == ".jpg" for p in images)
    image, label = ADE20K(root, "training")[0]
    assert image.shape[1:] == label.shape and set(label.unique().tolist()) <= {0, 1, 2, 255}


def test_ensure_standin_builds_once_and_smoke_roots_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    roots = smoke_data_roots({"imagenet_synthetic", "cifar100_synthetic", "synthetic", "coco_synthetic"}, ".smoke")
    assert set(roots) == {"imagenet_synthetic", "cifar100_synthetic"}
    assert all(Path(r).is_absolute() and (Path(r) / ".complete").is_file() for r in roots.values())
    marker = Path(roots["imagenet_synthetic"]) / "train"
    before = marker.stat().st_mtime_ns
    assert smoke_data_roots({"imagenet_synthetic"}, ".smoke") == {"imagenet_synthetic": roots["imagenet_synthetic"]}
    assert marker.stat().st_mtime_ns == before  # cached: not rebuilt
    assert not [p for p in (tmp_path / ".smoke" / "data").iterdir() if ".tmp" in p.name]


def test_a_standin_without_a_root_goes_to_the_shared_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job started without the CLI (Slurm tests, the debugger) still finds its stand-in."""
    import tempfile

    from mpvgbench.data_standins import default_root

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    train, _ = build_datasets(standin_config("cifar100_synthetic", "vit_lite_7_4"), None)
    assert Path(train.root) == default_root("cifar100_synthetic") and str(tmp_path) in train.root
