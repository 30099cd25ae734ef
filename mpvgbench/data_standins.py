"""Real-format stand-ins for the paper's datasets, generated here (nothing is downloaded).

``run SPEC --smoke`` trains every cell on one of these, read by the real readers through the
recipe's real transforms, so a smoke run exercises what the full run will:

| stand-in | on disk (as the real dataset) | the real dataset's oddities it carries |
|---|---|---|
| ``imagenet_synthetic`` | ``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG`` (ImageFolder) | a CMYK JPEG, a grayscale JPEG, a PNG named ``.JPEG``, sizes 80x60 .. 1200x300 (both orientations, extreme aspect ratios) |
| ``cifar100_synthetic`` | ``cifar-100-python/{train,test,meta}`` (torchvision's pickles) | none: CIFAR is uniform; the md5 check is kept (see below) |
| ``coco_synthetic`` | ``{train,val}2017/*.jpg``, ``annotations/instances_*.json`` | polygons, compressed and uncompressed RLE, a crowd region, an image without annotations |
| ``ade20k_synthetic`` | ``ADEChallengeData2016/{images,annotations}/{training,validation}/`` | JPEG images with PNG label masks, 0 = "other" |

torchvision's CIFAR100 refuses any file whose md5 is not the real CIFAR-100's. The CIFAR stand-in
writes a manifest (:data:`MANIFEST`) with the md5 of each file it wrote; only the
``cifar100_synthetic`` reader (``data.cifar100(..., trust_manifest=True)``) reads it, and it
still checks every file against it, so a damaged stand-in is refused too. The ``cifar100``
dataset never looks at a manifest: real data keeps torchvision's own check.

Every builder is deterministic in its seed. :func:`ensure_standin` builds a root once, into a
temporary folder renamed into place, so concurrent jobs never read a half-written stand-in.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image

from mpvgbench.errors import DataError

__all__ = [
    "IMAGENET_SIZES", "MANIFEST", "STANDIN_DATASETS", "default_root", "ensure_standin", "make_cifar100_standin",
    "make_imagenet_standin", "read_manifest", "smoke_data_roots",
]

MANIFEST = "mpvgbench-standin.json"  # written by the CIFAR stand-in, read for cifar100_synthetic only
FORMAT_VERSION = 1  # bump when a builder's output changes: cached roots are rebuilt
SMOKE_CLASSES = 10  # recipes.SMOKE_NUM_CLASSES: the smoke models' head
# (width, height): ImageNet's typical 500x375 / 375x500 / 500x333, a square, a large photo, a
# thumbnail smaller than the 224 crop, and panoramas in both directions.
IMAGENET_SIZES: tuple[tuple[int, int], ...] = (
    (500, 375), (375, 500), (500, 333), (500, 500), (800, 600), (80, 60), (1200, 300), (180, 640),
)
# The synset folders of the real train/ and val/ (the first few of the 1,000).
WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331",
         "n01498041", "n01514668", "n01514859", "n01518878", "n01530575", "n01531178")


def _picture(rng: np.random.Generator, width: int, height: int, label: int) -> np.ndarray:
    """A photo-like RGB array: shapes on a noisy background tinted by the class (learnable)."""
    from mpvgbench.downstream.synthetic import random_shapes

    image, _ = random_shapes(rng, height, width, n_shapes=3)
    tint = np.array([(label * 73) % 256, (label * 151) % 256, (label * 37 + 90) % 256], np.float32)
    return (0.6 * image + 0.4 * tint).astype(np.uint8)


def _save(array: np.ndarray, path: Path, oddity: Optional[str], quality: int) -> None:
    image = Image.fromarray(array)
    if oddity == "cmyk":  # 22 of ImageNet's training JPEGs are CMYK
        image.convert("CMYK").save(path, "JPEG", quality=quality)
    elif oddity == "gray":  # grayscale JPEGs are common in both splits
        image.convert("L").save(path, "JPEG", quality=quality)
    elif oddity == "png":  # n02105855_2933.JPEG is a PNG
        image.save(path, "PNG")
    else:
        image.save(path, "JPEG", quality=quality)


def make_imagenet_standin(
    root: str | Path, *, classes: int = SMOKE_CLASSES, train_per_class: int = 3, val_per_class: int = 2,
    size: Optional[tuple[int, int]] = None, quality: int = 90, oddities: bool = True, seed: int = 0,
) -> Path:
    """``root/{train,val}/<wnid>/<wnid>_<i>.JPEG``; sizes cycle through :data:`IMAGENET_SIZES`
    unless ``size`` (width, height) fixes them. With ``oddities`` the training set's first three
    images are CMYK, grayscale and a PNG, and the validation set's first is grayscale."""
    if not 1 <= classes <= len(WNIDS):
        raise ValueError(f"classes must be 1..{len(WNIDS)}, got {classes}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    counter = 0
    for split, per_class, odd in (("train", train_per_class, ("cmyk", "gray", "png")), ("val", val_per_class, ("gray",))):
        n = 0
        for label, wnid in enumerate(WNIDS[:classes]):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                width, height = size or IMAGENET_SIZES[counter % len(IMAGENET_SIZES)]
                counter += 1
                oddity = odd[n] if oddities and n < len(odd) else None
                n += 1
                _save(_picture(rng, width, height, label), folder / f"{wnid}_{i}.JPEG", oddity, quality)
    return root


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def make_cifar100_standin(
    root: str | Path, *, classes: int = SMOKE_CLASSES, train_per_class: int = 4, test_per_class: int = 2,
    seed: int = 0,
) -> Path:
    """``root/cifar-100-python/{train,test,meta}`` as CIFAR-100's python version lays them out
    (protocol-2 pickles, ``data`` N x 3072 uint8 channel-major, ``fine_labels``) plus the
    :data:`MANIFEST` of their md5 sums. ``classes`` fine labels, 20 coarse ones."""
    base = Path(root) / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = [label for label in range(classes) for _ in range(per_class)]
        data = np.stack([_picture(rng, 32, 32, label).transpose(2, 0, 1).reshape(-1) for label in labels])
        entry = {
            "filenames": [f"standin_{split}_{i}.png" for i in range(len(labels))],
            "batch_label": f"{split} batch 1 of 1", "fine_labels": labels,
            "coarse_labels": [label % 20 for label in labels], "data": data,
        }
        (base / split).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {"fine_label_names": [f"class_{i}" for i in range(classes)],
            "coarse_label_names": [f"superclass_{i}" for i in range(20)]}
    (base / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    manifest = {"writer": "mpvgbench", "format": FORMAT_VERSION,
                "md5": {name: _md5(base / name) for name in ("train", "test", "meta")}}
    (base / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return Path(root)


def read_manifest(root: str | Path) -> dict[str, str]:
    """The md5 sums a CIFAR stand-in's manifest lists; DataError when there is none."""
    path = Path(root) / "cifar-100-python" / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        return {name: str(manifest["md5"][name]) for name in ("train", "test", "meta")}
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{path}: no readable stand-in manifest; only a root that "
                        "mpvgbench.data_standins wrote can be read as cifar100_synthetic") from None


def _coco(root: Path) -> Path:
    from mpvgbench.downstream.synthetic import make_synthetic_coco

    return make_synthetic_coco(root, n_images=4, size=(96, 128), seed=0)


def _ade20k(root: Path) -> Path:
    from mpvgbench.downstream.synthetic import make_synthetic_ade20k

    return make_synthetic_ade20k(root, n_images=4, size=(96, 128), seed=0)


STANDIN_DATASETS: dict[str, Callable[[Path], Path]] = {
    "imagenet_synthetic": make_imagenet_standin,
    "cifar100_synthetic": make_cifar100_standin,
    "coco_synthetic": _coco,
    "ade20k_synthetic": _ade20k,
}


def ensure_standin(dataset: str, root: str | Path) -> Path:
    """``root`` holding ``dataset``'s stand-in, built now unless an earlier call finished it.

    Built into a sibling temporary folder and renamed into place: a killed build leaves no
    half-written root, and of two concurrent builds (same bytes) the first rename wins. A root
    that exists is therefore complete (or made by a ``make_*`` call) and is used as it is."""
    root = Path(root)
    if root.is_dir():
        return root
    build = STANDIN_DATASETS[dataset]
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f".{root.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    (tmp / ".complete").touch()
    try:
        os.rename(tmp, root)
    except OSError:  # another process finished first (root exists and is not empty)
        shutil.rmtree(tmp, ignore_errors=True)
        if not root.is_dir():
            raise
    return root


def default_root(dataset: str) -> Path:
    """Where a stand-in goes when no root is given (a job started without the CLI, which passes
    ``.smoke/data/...``): a per-user folder in the temp directory, shared (the bytes are seeded)."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"mpvgbench-standins-{uid}" / f"{dataset}-v{FORMAT_VERSION}"


def smoke_data_roots(datasets: set[str], smoke_dir: str | Path) -> dict[str, str]:
    """``{dataset: root}`` for the stand-ins among ``datasets``, built under ``smoke_dir/data``
    (absolute, so workers elsewhere find them). Datasets that are no stand-in are left out."""
    base = Path(smoke_dir).resolve() / "data"
    return {name: str(ensure_standin(name, base / f"{name}-v{FORMAT_VERSION}"))
            for name in sorted(datasets) if name in ("imagenet_synthetic", "cifar100_synthetic")}
