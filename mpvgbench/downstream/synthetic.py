"""Tiny synthetic datasets in the COCO and ADE20K on-disk formats (tests and ``--smoke`` runs).

Each image is a noisy background with a few filled rectangles and ellipses; each shape is one
instance (COCO: RLE mask, bbox, area) and one class region (ADE: label PNG, 0 = "other").
Images are PNG so pixels survive the round trip exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

__all__ = ["make_synthetic_ade20k", "make_synthetic_coco", "random_shapes"]

# COCO category ids are not contiguous in the real file either: the loader must map them
SYNTHETIC_CATEGORIES = ({"id": 1, "name": "box"}, {"id": 3, "name": "disc"}, {"id": 7, "name": "bar"})
_COLOURS = ((230, 40, 40), (40, 200, 60), (50, 80, 230))


def random_shapes(rng: np.random.Generator, height: int, width: int, n_shapes: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """An RGB image and ``(kind, mask)`` per shape (kind 0..2; later shapes occlude earlier)."""
    image = rng.integers(90, 150, size=(height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    shapes: list[tuple[int, np.ndarray]] = []
    for _ in range(n_shapes):
        kind = int(rng.integers(0, 3))
        h = int(rng.integers(height // 5, height // 2))
        w = int(rng.integers(width // 5, width // 2)) if kind != 2 else int(rng.integers(width // 2, width - 4))
        if kind == 2:
            h = max(4, h // 3)  # "bar": long and thin
        top, left = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
        if kind == 1:
            cy, cx = top + h / 2, left + w / 2
            mask = ((yy - cy) / (h / 2)) ** 2 + ((xx - cx) / (w / 2)) ** 2 <= 1
        else:
            mask = (yy >= top) & (yy < top + h) & (xx >= left) & (xx < left + w)
        for earlier in shapes:
            earlier[1][mask] = False
        shapes.append((kind, mask))
        image[mask] = _COLOURS[kind]
    return image, [(k, m) for k, m in shapes if m.any()]


def make_synthetic_coco(root: str | Path, n_images: int = 4, size: tuple[int, int] = (96, 128), seed: int = 0) -> Path:
    """``root/{train2017,val2017}/*.png`` and ``root/annotations/instances_*.json`` (the same
    images in both splits, so a model that overfits train scores on val). Returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    height, width = size
    images, annotations = [], []
    pictures = []
    for i in range(n_images):
        image, shapes = random_shapes(rng, height, width, n_shapes=3)
        image_id = 100 + i
        name = f"{image_id:012d}.png"
        pictures.append((name, image))
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        for kind, mask in shapes:
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": SYNTHETIC_CATEGORIES[kind]["id"],
                "segmentation": rle, "area": float(mask.sum()), "bbox": [x, y, w, h], "iscrowd": 0,
            })
    content = {"images": images, "annotations": annotations, "categories": list(SYNTHETIC_CATEGORIES)}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
        for name, image in pictures:
            Image.fromarray(image).save(root / f"{split}2017" / name)
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(content))
    return root


def make_synthetic_ade20k(root: str | Path, n_images: int = 4, size: tuple[int, int] = (96, 128), seed: int = 0) -> Path:
    """``root/ADEChallengeData2016/{images,annotations}/{training,validation}/`` with labels
    0 (other) and 1..3 (the three shape kinds). Returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    base = root / "ADEChallengeData2016"
    for split in ("training", "validation"):
        (base / "images" / split).mkdir(parents=True, exist_ok=True)
        (base / "annotations" / split).mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        image, shapes = random_shapes(rng, *size, n_shapes=3)
        label = np.zeros(size, np.uint8)
        for kind, mask in shapes:
            label[mask] = kind + 1
        for split in ("training", "validation"):
            stem = f"ADE_{split[:5]}_{i:08d}"
            Image.fromarray(image).save(base / "images" / split / f"{stem}.png")
            Image.fromarray(label).save(base / "annotations" / split / f"{stem}.png")
    return root
