"""The training forward of a detector or segmenter as one module (:class:`DenseLosses`, what the
training loop wraps in DDP, autocast and compile) and the evaluation loops for detection and
segmentation (sharded over the ranks of a process group)."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from mpvgbench.downstream.data import CocoInstances
from mpvgbench.downstream.detection import detect_at_original_size
from mpvgbench.downstream.metrics import ConfusionMatrix, coco_evaluate, detections_to_coco
from mpvgbench.downstream.upernet import UperNetSegmenter

__all__ = ["DenseLosses", "evaluate_detection", "evaluate_segmentation", "slide_inference"]


class DenseLosses(nn.Module):
    """The training forward of a detector or segmenter as one module's ``forward``, which is what
    DDP and autocast wrap: ``(images, targets) -> loss dict``. Detection targets are dicts with
    ``boxes``, ``labels``, ``masks``; segmentation targets are the label maps."""

    def __init__(self, model: nn.Module, task: str) -> None:
        super().__init__()
        if task not in ("detection", "segmentation"):
            raise ValueError(f"task must be 'detection' or 'segmentation', got {task!r}")
        self.model, self.task = model, task

    def forward(self, images: Any, targets: Any) -> dict[str, Tensor]:
        if self.task == "detection":
            keys = ("boxes", "labels", "masks")
            return self.model(list(images), [{k: t[k] for k in keys} for t in targets])
        return self.model.losses(images, targets)  # type: ignore[operator]


def _shard(n: int, shard: tuple[int, int]) -> range:
    rank, world = shard
    return range(rank, n, world)


@torch.no_grad()
def slide_inference(model: UperNetSegmenter, img: Tensor, crop: int = 512, stride: int = 341) -> Tensor:
    """MMSeg's ``mode='slide'``: logits of overlapping ``crop`` windows (``stride`` apart, the
    last one flush with the border) averaged per pixel. ``img (B, 3, H, W)`` -> ``(B, K, H, W)``."""
    b, _, h, w = img.shape
    rows = max(h - crop + stride - 1, 0) // stride + 1
    cols = max(w - crop + stride - 1, 0) // stride + 1
    logits = img.new_zeros((b, model.num_classes, h, w))
    count = img.new_zeros((1, 1, h, w))
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + crop, h), min(c * stride + crop, w)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            logits[:, :, y1:y2, x1:x2] += model.predict_logits(img[:, :, y1:y2, x1:x2])
            count[:, :, y1:y2, x1:x2] += 1
    assert (count > 0).all()
    return logits / count


@torch.no_grad()
def evaluate_segmentation(
    model: UperNetSegmenter, dataset: Dataset, crop: int = 512, stride: int = 341,
    *, max_images: Optional[int] = None, shard: tuple[int, int] = (0, 1), amp: bool = False,
) -> dict[str, float]:
    """mIoU and aAcc (percent) over the whole dataset (its first ``max_images`` images if given)
    from one confusion matrix. The dataset yields ``(image, label)`` with the image resized for the model (SegmentationTestTransform)
    and the label at its original size; logits are resized to the label before the argmax.
    ``shard=(rank, world)``: this process scores images ``rank, rank + world, ...`` and the
    matrices of all ranks are summed, so every rank returns the whole set's numbers."""
    model.eval()
    device = next(model.parameters()).device  # the dataset yields CPU tensors; so is the metric
    matrix = ConfusionMatrix(model.num_classes, model.ignore_index)
    n = len(dataset) if max_images is None else min(max_images, len(dataset))  # type: ignore[arg-type]
    for i in _shard(n, shard):
        image, label = dataset[i]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = slide_inference(model, image[None].to(device), crop, stride)
        logits = F.interpolate(logits.float().cpu(), size=label.shape[-2:], mode="bilinear", align_corners=False)
        matrix.update(logits.argmax(1)[0], label)
    if shard[1] > 1:
        counts = matrix.matrix.to(device)
        torch_dist.all_reduce(counts)
        matrix.matrix = counts.cpu()
    return {"mIoU": matrix.miou(), "aAcc": matrix.pixel_accuracy()}


@torch.no_grad()
def evaluate_detection(
    model: nn.Module, dataset: CocoInstances, *, max_images: Optional[int] = None,
    shard: tuple[int, int] = (0, 1), amp: bool = False,
) -> dict[str, float]:
    """COCO AP box / mask (fractions) over ``dataset`` (its first ``max_images`` images if given:
    COCOeval then scores those images only); predictions made on the transformed image are
    mapped back to the original image size (boxes scaled, masks pasted at that size).
    ``shard=(rank, world)``: each rank predicts its share, the results are gathered and every
    rank scores the whole set (so all ranks return the same numbers)."""
    model.eval()
    device = next(model.parameters()).device  # the dataset yields CPU tensors; so is COCOeval
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    results: list[dict[str, Any]] = []
    image_ids: list[int] = []
    for i in _shard(n, shard):
        image, target = dataset[i]
        image_id = int(target["image_id"])
        image_ids.append(image_id)
        info = dataset.coco.imgs[image_id]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = detect_at_original_size(model, image.to(device), (info["height"], info["width"]))  # type: ignore[arg-type]
        results.extend(detections_to_coco([out], [image_id], dataset.label_to_cat_id))
    if shard[1] > 1:
        gathered: list[Any] = [None] * shard[1]
        torch_dist.all_gather_object(gathered, (results, image_ids))
        results = [r for part in gathered for r in part[0]]
        image_ids = [i for part in gathered for i in part[1]]
    return coco_evaluate(dataset.coco, results, image_ids=None if n == len(dataset) else image_ids)
