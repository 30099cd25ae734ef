"""COCO instances and ADE20K from a local root, and their training / test transforms.

COCO: ``root/{train2017,val2017}/`` images and ``root/annotations/instances_{split}2017.json``.
A sample is ``(image, target)``: image float ``(3, H, W)`` in [0, 1]; target ``boxes`` (xyxy,
float), ``labels`` (1..K, contiguous over the file's categories), ``masks`` (uint8 ``(N, H, W)``)
and ``image_id``. Crowd annotations and boxes under 1 px are left out (MMDet's ``bboxes_ignore``);
an image whose only annotations are crowds is still a training image (zero instances), as in
MMDet, which keeps every image with any annotation.

ADE20K: ``root/ADEChallengeData2016/images/{training,validation}/`` and
``.../annotations/{training,validation}/`` (same file stem, label PNG). A sample is
``(image, label)``: label int64 ``(H, W)`` after ``reduce_zero_label`` (0 "other" -> 255,
class c -> c - 1, so 150 classes 0..149).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets import CocoDetection

from mpvgbench.data import DataError

__all__ = [
    "ADE20K",
    "CocoInstances",
    "DetectionTrainTransform",
    "SegmentationTestTransform",
    "SegmentationTrainTransform",
    "collate_detection",
]

Target = dict[str, Tensor]
IGNORE = 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)


def _to_tensor(img: Image.Image) -> Tensor:
    return TF.to_dtype(TF.pil_to_tensor(img.convert("RGB")), torch.float32, scale=True)


class CocoInstances(Dataset):
    """COCO-format instance segmentation via torchvision's ``CocoDetection`` + pycocotools masks.

    ``split="train"`` keeps only images with at least one annotation of any kind (crowd too)
    and both sides >= 32 px (MMDet 2.x ``CocoDataset._filter_imgs``: ``filter_empty_gt``
    tests for any annotation, ``min_size=32``); ``"val"`` keeps every image.
    """

    def __init__(self, root: str | Path, split: Literal["train", "val"] = "val", transforms: Callable[..., Any] | None = None) -> None:
        root = Path(root)
        images, ann = root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json"
        for path in (images, ann):
            if not path.exists():
                raise DataError(f"{path} not found; point the COCO root at a folder with {split}2017/ and annotations/")
        self._coco = CocoDetection(str(images), str(ann))
        self.coco = self._coco.coco
        self.cat_ids: list[int] = sorted(self.coco.getCatIds())
        self.label_to_cat_id = {i + 1: c for i, c in enumerate(self.cat_ids)}
        self._cat_to_label = {c: i for i, c in self.label_to_cat_id.items()}
        self.transforms = transforms
        self.indices = list(range(len(self._coco.ids)))
        if split == "train":
            self.indices = [i for i in self.indices if self._usable(self._coco.ids[i])]

    def _usable(self, image_id: int) -> bool:
        info = self.coco.imgs[image_id]
        return min(info["width"], info["height"]) >= 32 and bool(self.coco.imgToAnns.get(image_id))

    def landscape_flags(self) -> list[bool]:
        """Per training index: width > height (MMDet ``CustomDataset.flag``, what
        ``GroupSampler`` groups by), read from the annotation file, no image decoded."""
        infos = (self.coco.imgs[self._coco.ids[i]] for i in self.indices)
        return [info["width"] / info["height"] > 1 for info in infos]

    @staticmethod
    def _keep(ann: dict[str, Any]) -> bool:
        _, _, w, h = ann["bbox"]
        return not ann.get("iscrowd", 0) and w >= 1 and h >= 1 and ann.get("area", 1) > 0

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        img, anns = self._coco[self.indices[index]]
        image_id = self._coco.ids[self.indices[index]]
        anns = [a for a in anns if self._keep(a)]
        w, h = img.size
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns], dtype=torch.float32).reshape(-1, 4)
        masks = np.stack([self.coco.annToMask(a) for a in anns]) if anns else np.zeros((0, h, w), np.uint8)
        target = {
            "boxes": boxes,
            "labels": torch.tensor([self._cat_to_label[a["category_id"]] for a in anns], dtype=torch.int64),
            "masks": torch.from_numpy(masks),
            "image_id": torch.tensor(image_id),
        }
        image = _to_tensor(img)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def collate_detection(batch: Sequence[tuple[Tensor, Target]]) -> tuple[list[Tensor], list[Target]]:
    """Detection batches stay lists (torchvision's detectors pad them)."""
    return [b[0] for b in batch], [b[1] for b in batch]


def _resize_detection(image: Tensor, target: Target, short: int, long: int) -> tuple[Tensor, Target]:
    """Keep-ratio resize so the short side is ``short`` unless the long side would exceed ``long``
    (MMDet's ``Resize(img_scale=(long, short), keep_ratio=True)``; boxes clipped to the image)."""
    h, w = image.shape[1:]
    scale = min(short / min(h, w), long / max(h, w))
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
    target = dict(target)
    boxes = target["boxes"] * torch.tensor([nw / w, nh / h, nw / w, nh / h])
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, nw)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, nh)
    target["boxes"] = boxes
    if target["masks"].numel():
        target["masks"] = F.interpolate(target["masks"][None].float(), size=(nh, nw), mode="nearest")[0].to(torch.uint8)
    else:
        target["masks"] = target["masks"].new_zeros((0, nh, nw))
    return image, target


def _hflip_detection(image: Tensor, target: Target) -> tuple[Tensor, Target]:
    w = image.shape[-1]
    target = dict(target)
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
    target["boxes"], target["masks"] = boxes, target["masks"].flip(-1)
    return image.flip(-1), target


def _crop_detection(image: Tensor, target: Target, size: tuple[int, int], rng: random.Random) -> tuple[Tensor, Target]:
    """Random crop to at most ``size = (h, w)`` at a uniform offset (MMDet's ``RandomCrop`` with
    ``allow_negative_crop=True``): boxes shifted and clipped, instances left empty dropped, even
    all of them (the caller's targets may then hold zero instances)."""
    h, w = image.shape[1:]
    ch, cw = min(size[0], h), min(size[1], w)
    top, left = rng.randint(0, h - ch), rng.randint(0, w - cw)
    target = dict(target)
    boxes = target["boxes"] - torch.tensor([left, top, left, top], dtype=torch.float32)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, cw)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, ch)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    target["boxes"], target["labels"] = boxes[keep], target["labels"][keep]
    target["masks"] = target["masks"][keep, top : top + ch, left : left + cw]
    return image[:, top : top + ch, left : left + cw], target


def _range_crop_size(h: int, w: int, low: int, high: int, rng: random.Random) -> tuple[int, int]:
    """MMDet ``RandomCrop(crop_type="absolute_range", crop_size=(low, high))``: height and width
    drawn independently and uniformly from ``[min(side, low), min(side, high)]`` (inclusive)."""
    return rng.randint(min(h, low), min(h, high)), rng.randint(min(w, low), min(w, high))


class DetectionTrainTransform:
    """The official 3x+MS pipeline (``mask_rcnn_deit_adapter_tiny_fpn_3x_coco.py``, DETR's):

    flip (p=0.5); then AutoAugment picks one of two policies uniformly:
    1. keep-ratio resize, short side from ``scales`` (long side <= ``max_size``);
    2. keep-ratio resize, short side from ``crop_scales`` (long <= ``max_size``), random crop of
       ``h, w`` each uniform in ``crop_range`` (absolute_range), resize again as in 1 (override);
    then a random crop to at most ``crop x crop``. Crops keep images left without instances
    (``allow_negative_crop=True``). Every draw comes from ``self.rng`` (the trainer reseeds it
    per sample for exact resume)."""

    def __init__(
        self,
        scales: Sequence[int] = tuple(range(480, 801, 32)),
        max_size: int = 1333,
        crop: int = 1024,
        crop_scales: Sequence[int] = (400, 500, 600),
        crop_range: tuple[int, int] = (384, 600),
        seed: int | None = None,
    ) -> None:
        if not scales or not crop_scales or min(*scales, *crop_scales, max_size, crop) < 1:
            raise ValueError(f"scales {scales}, crop_scales {crop_scales}, max_size {max_size} and crop {crop} must be positive and non-empty")
        if not 1 <= crop_range[0] <= crop_range[1]:
            raise ValueError(f"crop_range must be (low, high) with 1 <= low <= high, got {crop_range}")
        self.scales, self.max_size, self.crop = tuple(scales), max_size, crop
        self.crop_scales, self.crop_range = tuple(crop_scales), (int(crop_range[0]), int(crop_range[1]))
        self.rng = random.Random(seed)

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        rng = self.rng
        if rng.random() < 0.5:
            image, target = _hflip_detection(image, target)
        if rng.random() < 0.5:  # AutoAugment's policy 2: resize, crop, then policy 1's resize
            image, target = _resize_detection(image, target, rng.choice(self.crop_scales), self.max_size)
            size = _range_crop_size(*image.shape[1:], *self.crop_range, rng)
            image, target = _crop_detection(image, target, size, rng)
        image, target = _resize_detection(image, target, rng.choice(self.scales), self.max_size)
        return _crop_detection(image, target, (self.crop, self.crop), rng)


class DetectionTestTransform:
    """Keep-ratio resize to short side 800, long side <= 1333 (MMDet's test scale)."""

    def __init__(self, short: int = 800, max_size: int = 1333) -> None:
        self.short, self.max_size = short, max_size

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        return _resize_detection(image, target, self.short, self.max_size)


class ADE20K(Dataset):
    """ADE20K scene parsing (150 classes) from ``root`` (the folder holding ``ADEChallengeData2016``)."""

    def __init__(self, root: str | Path, split: Literal["training", "validation"] = "validation", transforms: Callable[..., Any] | None = None) -> None:
        base = Path(root) / "ADEChallengeData2016"
        img_dir, ann_dir = base / "images" / split, base / "annotations" / split
        for path in (img_dir, ann_dir):
            if not path.is_dir():
                raise DataError(f"{path} not found; point the ADE20K root at the folder holding ADEChallengeData2016/")
        self.images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        self.labels = [ann_dir / f"{p.stem}.png" for p in self.images]
        missing = [str(p) for p in self.labels if not p.exists()]
        if missing:
            raise DataError(f"{len(missing)} label PNGs missing, e.g. {missing[0]}; each image needs annotations/{split}/<stem>.png")
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = _to_tensor(Image.open(self.images[index]))
        raw = torch.from_numpy(np.array(Image.open(self.labels[index]), dtype=np.int64))
        label = torch.where(raw == 0, IGNORE, raw - 1)  # reduce_zero_label
        if self.transforms is not None:
            image, label = self.transforms(image, label)
        return image, label


def _resize_segmentation(image: Tensor, label: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return image, label


def _keep_ratio_size(h: int, w: int, long: int, short: int) -> tuple[int, int]:
    scale = min(long / max(h, w), short / min(h, w))
    return int(h * scale + 0.5), int(w * scale + 0.5)


class SegmentationTrainTransform:
    """MMSeg's ADE20K training pipeline: resize to (2048, 512) x ratio in [0.5, 2] keeping the
    aspect ratio, random 512 crop with ``cat_max_ratio`` 0.75 (up to 10 tries), flip (p=0.5),
    photometric distortion, pad to the crop size (image: mean colour, label 255)."""

    def __init__(self, crop: int = 512, scale: tuple[int, int] = (2048, 512), ratio: tuple[float, float] = (0.5, 2.0), seed: int | None = None) -> None:
        self.crop, self.scale, self.ratio = crop, scale, ratio
        self.rng = random.Random(seed)

    def _crop_box(self, label: Tensor) -> tuple[int, int, int, int]:
        h, w = label.shape
        ch, cw = min(self.crop, h), min(self.crop, w)
        for _ in range(10):
            top, left = self.rng.randint(0, h - ch), self.rng.randint(0, w - cw)
            patch = label[top : top + ch, left : left + cw]
            counts = torch.bincount(patch[patch != IGNORE].flatten())
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max().item() / counts.sum().item() < 0.75:
                break
        return top, left, ch, cw

    def _photometric(self, image: Tensor) -> Tensor:
        rng = self.rng
        if rng.random() < 0.5:  # brightness: +-32 of 255
            image = (image + rng.uniform(-32, 32) / 255).clamp(0, 1)
        contrast_first = rng.random() < 0.5
        contrast = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
        if contrast is not None and contrast_first:
            image = (image * contrast).clamp(0, 1)
        if rng.random() < 0.5:
            image = TF.adjust_saturation(image, rng.uniform(0.5, 1.5))
        if rng.random() < 0.5:
            # hue: MMSeg adds np.random.randint(-18, 18), i.e. an integer in [-18, 17], to
            # OpenCV's 0-180 hue (2 degrees a step: -36..+34 degrees); adjust_hue takes turns
            image = TF.adjust_hue(image, rng.randint(-18, 17) / 180)
        if contrast is not None and not contrast_first:
            image = (image * contrast).clamp(0, 1)
        return image

    def __call__(self, image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        r = self.rng.uniform(*self.ratio)
        size = _keep_ratio_size(*image.shape[1:], int(self.scale[0] * r), int(self.scale[1] * r))
        image, label = _resize_segmentation(image, label, size)
        top, left, ch, cw = self._crop_box(label)
        image, label = image[:, top : top + ch, left : left + cw], label[top : top + ch, left : left + cw]
        if self.rng.random() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        image = self._photometric(image)
        pad = (0, self.crop - cw, 0, self.crop - ch)
        # MMSeg pads the normalised image with 0, i.e. with the mean colour before normalising
        padded = torch.stack([F.pad(ch_img, pad, value=m) for ch_img, m in zip(image, IMAGENET_MEAN)])
        return padded, F.pad(label, pad, value=IGNORE)


class SegmentationTestTransform:
    """Keep-ratio resize to (2048, 512), then to a multiple of 32 (ViT-Adapter's test pipeline).
    The label keeps its original size: the metric is computed there."""

    def __init__(self, scale: tuple[int, int] = (2048, 512), divisor: int = 32) -> None:
        self.scale, self.divisor = scale, divisor

    def __call__(self, image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        h, w = _keep_ratio_size(*image.shape[1:], *self.scale)
        d = self.divisor
        size = (max(d, int(np.ceil(h / d)) * d), max(d, int(np.ceil(w / d)) * d))
        return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0], label
