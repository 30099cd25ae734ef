"""Tiny synthetic datasets in the COCO and ADE20K on-disk formats (tests and ``--smoke`` runs).

Each image is a noisy background with a few filled rectangles and ellipses; each shape is one
instance (COCO: mask, bbox, area) and one class region (ADE: label PNG, 0 = "other").

With ``oddities`` (the default) the files carry what the real datasets do: JPEG images
(``*.jpg``), unoccluded boxes annotated as polygons (the rest as compressed RLE), one crowd
region per split as uncompressed RLE (``iscrowd: 1``, as COCO stores crowds), and one image
without any annotation (COCO keeps ~1% such images; the training reader drops them). Without
it, images are PNG (pixels survive the round trip exactly) and every mask is compressed RLE.
A mask, its bbox and its area always come from the same pycocotools decoding, so they agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

__all__ = ["make_synthetic_ade20k", "make_synthetic_coco", "random_shapes", "uncompressed_rle"]

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


def uncompressed_rle(mask: np.ndarray) -> dict[str, object]:
    """COCO's uncompressed RLE of a binary mask: column-major run lengths, starting with 0s."""
    flat = np.asfortranarray(mask.astype(np.uint8)).reshape(-1, order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"counts": [int(c) for c in counts], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _segmentation(mask: np.ndarray, polygon: bool) -> tuple[object, dict[str, object]]:
    """``(segmentation field, its compressed RLE)``: a polygon for a full rectangle (when asked),
    otherwise compressed RLE with string counts."""
    height, width = mask.shape
    ys, xs = np.nonzero(mask)
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    if polygon and mask[top:bottom, left:right].all():
        poly = [[float(v) for v in (left, top, right, top, right, bottom, left, bottom)]]
        return poly, mask_utils.merge(mask_utils.frPyObjects(poly, height, width))
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}, rle


def _annotation(ann_id: int, image_id: int, category: int, segmentation: object, rle: dict[str, object], crowd: int) -> dict[str, object]:
    x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
    return {"id": ann_id, "image_id": image_id, "category_id": category, "segmentation": segmentation,
            "area": float(mask_utils.area(rle)), "bbox": [x, y, w, h], "iscrowd": crowd}


def make_synthetic_coco(root: str | Path, n_images: int = 4, size: tuple[int, int] = (96, 128), seed: int = 0,
                        oddities: bool = True) -> Path:
    """``root/{train2017,val2017}/*`` and ``root/annotations/instances_*.json`` (the same
    images in both splits, so a model that overfits train scores on val). Returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    height, width = size
    images, annotations = [], []
    pictures = []
    suffix = ".jpg" if oddities else ".png"
    for i in range(n_images + (1 if oddities else 0)):
        empty = i == n_images  # the extra image of ``oddities``: shapes drawn, none annotated
        image, shapes = random_shapes(rng, height, width, n_shapes=3)
        image_id = 100 + i
        name = f"{image_id:012d}{suffix}"
        pictures.append((name, image))
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        for kind, mask in ([] if empty else shapes):
            segmentation, rle = _segmentation(mask, polygon=oddities and kind == 0)
            annotations.append(_annotation(len(annotations) + 1, image_id, SYNTHETIC_CATEGORIES[kind]["id"],
                                           segmentation, rle, crowd=0))
        if oddities and i == 0:  # a crowd: the bottom rows, uncompressed RLE
            crowd = np.zeros((height, width), bool)
            crowd[-max(2, height // 12):, : width // 2] = True
            raw = uncompressed_rle(crowd)
            rle = mask_utils.frPyObjects(raw, height, width)
            annotations.append(_annotation(len(annotations) + 1, image_id, SYNTHETIC_CATEGORIES[0]["id"],
                                           raw, rle, crowd=1))
    content = {"images": images, "annotations": annotations, "categories": list(SYNTHETIC_CATEGORIES)}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
        for name, image in pictures:
            Image.fromarray(image).save(root / f"{split}2017" / name, quality=95)
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(content))
    return root


def make_synthetic_ade20k(root: str | Path, n_images: int = 4, size: tuple[int, int] = (96, 128), seed: int = 0,
                          oddities: bool = True) -> Path:
    """``root/ADEChallengeData2016/{images,annotations}/{training,validation}/`` with labels
    0 (other) and 1..3 (the three shape kinds); images JPEG (as ADE20K's) with ``oddities``,
    else PNG; labels always PNG. Returns ``root``."""
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
            Image.fromarray(image).save(base / "images" / split / f"{stem}{'.jpg' if oddities else '.png'}", quality=95)
            Image.fromarray(label).save(base / "annotations" / split / f"{stem}.png")
    return root
