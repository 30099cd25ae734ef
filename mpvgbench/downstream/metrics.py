"""COCO AP (box, mask) with pycocotools, and mIoU from one confusion matrix (MMSegmentation).

mIoU as MMSegmentation computes it: pixels whose label is ``ignore_index`` are dropped, then
per class ``IoU = |pred = c and label = c| / (|pred = c| + |label = c| - intersection)`` summed
over the WHOLE validation set (one confusion matrix, not a mean of per-image scores); classes
with no pixel in labels or predictions get NaN and are left out of the mean.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

__all__ = ["ConfusionMatrix", "coco_evaluate", "detections_to_coco"]

_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def detections_to_coco(
    outputs: Sequence[Mapping[str, Tensor]],
    image_ids: Sequence[int],
    label_to_cat_id: Mapping[int, int],
    mask_threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """torchvision detector outputs (``boxes`` xyxy, ``labels``, ``scores``, optional ``masks``
    ``(N, 1, H, W)`` probabilities) -> COCO result dicts (bbox xywh, RLE segmentation)."""
    results: list[dict[str, Any]] = []
    for out, image_id in zip(outputs, image_ids):
        boxes = out["boxes"].detach().cpu().float()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
        masks = out.get("masks")
        binary = (masks[:, 0] > mask_threshold).cpu().numpy().astype(np.uint8) if masks is not None else None
        for i, (label, score) in enumerate(zip(out["labels"].tolist(), out["scores"].tolist())):
            res: dict[str, Any] = {"image_id": int(image_id), "category_id": label_to_cat_id[int(label)], "bbox": xywh[i], "score": float(score)}
            if binary is not None:
                rle = mask_utils.encode(np.asfortranarray(binary[i]))
                rle["counts"] = rle["counts"].decode("ascii")
                res["segmentation"] = rle
            results.append(res)
    return results


def coco_evaluate(
    coco_gt: COCO, results: list[dict[str, Any]], iou_types: Iterable[str] = ("bbox", "segm"),
    image_ids: Optional[Sequence[int]] = None,
) -> dict[str, float]:
    """pycocotools' COCOeval for each type; keys ``bbox_AP``, ``bbox_AP50``, ..., ``segm_AP``
    (fractions in [0, 1]; the paper prints them x100). No detections at all -> 0.
    ``image_ids``: score these images only (default: every image of the annotation file)."""
    metrics: dict[str, float] = {}
    for iou_type in iou_types:
        if not results:
            metrics.update({f"{iou_type}_{n}": 0.0 for n in _STAT_NAMES})
            continue
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables
            coco_dt = coco_gt.loadRes(results)
            evaluator = COCOeval(coco_gt, coco_dt, iou_type)
            if image_ids is not None:
                evaluator.params.imgIds = sorted(int(i) for i in image_ids)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        metrics.update({f"{iou_type}_{n}": float(v) for n, v in zip(_STAT_NAMES, evaluator.stats[:6])})
    return metrics


class ConfusionMatrix:
    """Accumulates ``(label, prediction)`` pixel counts over a whole dataset."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)  # [label, pred]

    def update(self, pred: Tensor, label: Tensor) -> None:
        """``pred`` and ``label``: class indices of the same shape (any batch layout)."""
        if pred.shape != label.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in shape")
        valid = label != self.ignore_index
        label, pred = label[valid].long().cpu(), pred[valid].long().cpu()
        if label.numel() and (label.max() >= self.num_classes or label.min() < 0):
            raise ValueError(f"labels must be in 0..{self.num_classes - 1} or {self.ignore_index}")
        idx = label * self.num_classes + pred
        self.matrix += torch.bincount(idx, minlength=self.num_classes**2).view(self.num_classes, self.num_classes)

    def iou(self) -> Tensor:
        """Per-class IoU (float64), NaN for classes absent from labels and predictions."""
        m = self.matrix.double()
        inter = m.diag()
        union = m.sum(0) + m.sum(1) - inter
        return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))

    def miou(self) -> float:
        """Mean IoU over classes present, in percent (MMSeg's ``mIoU`` x 100)."""
        return float(torch.nanmean(self.iou()) * 100)

    def pixel_accuracy(self) -> float:
        """All-pixel accuracy in percent (MMSeg's ``aAcc``)."""
        total = self.matrix.sum()
        return float(self.matrix.diag().sum().double() / total * 100) if total else float("nan")
