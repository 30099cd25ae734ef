"""Mask R-CNN (torchvision) on an FPN over ViT-Adapter's four levels, set up as MMDetection's
``mask_rcnn_r50_fpn`` defaults where torchvision differs (see docs/downstream.md):

- RoIAlign with ``aligned=True`` and adaptive sampling (``sampling_ratio=0``) for boxes and masks;
- L1 box-regression loss in the RPN and the RoI head (torchvision: smooth L1, beta 1/9);
- RPN keeps 2000 boxes per level before NMS and 1000 after it in training (1000/1000 at test);
- 80 object classes + background; no resizing inside the model (the data pipeline resizes),
  only ImageNet normalisation and padding to a multiple of 32.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

from mpvgbench.downstream.adapter import ViTAdapter, build_vit_adapter
from mpvgbench.methods import MethodLike

__all__ = ["AdapterFPN", "AlignedMultiScaleRoIAlign", "build_mask_rcnn"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # MMDet's (123.675, 116.28, 103.53) / 255
IMAGENET_STD = (0.229, 0.224, 0.225)  # MMDet's (58.395, 57.12, 57.375) / 255


class AdapterFPN(nn.Module):
    """The adapter's strides 4..32 -> FPN P2..P5 (256 channels) + P6 by max-pooling P5."""

    def __init__(self, adapter: ViTAdapter, out_channels: int = 256) -> None:
        super().__init__()
        self.body = adapter
        dim = adapter.vit.embed_dim
        self.fpn = FeaturePyramidNetwork([dim] * 4, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


class AlignedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's multi-level RoIAlign with ``aligned=True`` (MMDet/mmcv's default).

    The level of a box is torchvision's ``floor(4 + log2(sqrt(area) / 224))`` clamped to the
    levels, which gives the same boundaries as MMDet's ``floor(log2(sqrt(area) / 56))``.
    """

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:  # type: ignore[override]
        feats = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(feats, image_shapes, self.canonical_scale, self.canonical_level)
        assert self.scales is not None and self.map_levels is not None
        rois = _convert_to_roi_format(boxes)
        levels = self.map_levels(boxes)
        out = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], *self.output_size))
        for level, (feat, scale) in enumerate(zip(feats, self.scales)):
            idx = torch.where(levels == level)[0]
            if idx.numel():
                pooled = roi_align(feat, rois[idx], self.output_size, scale, self.sampling_ratio, aligned=True)
                out.index_put_((idx,), pooled.to(out.dtype))
        return out


class NoResizeTransform(GeneralizedRCNNTransform):
    """Normalise and pad to a multiple of 32 only: resizing belongs to the data pipeline."""

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor] | None]:  # type: ignore[override]
        return image, target


class L1RegionProposalNetwork(RegionProposalNetwork):
    """RPN with MMDet's L1 box loss (averaged over the sampled anchors, as torchvision's)."""

    def compute_loss(self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor], regression_targets: list[Tensor]) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        pos, neg = self.fg_bg_sampler(labels)
        pos_idx = torch.where(torch.cat(pos, dim=0))[0]
        sampled = torch.cat([pos_idx, torch.where(torch.cat(neg, dim=0))[0]])
        targets = torch.cat(regression_targets, dim=0)
        box_loss = F.l1_loss(pred_bbox_deltas[pos_idx], targets[pos_idx], reduction="sum") / sampled.numel()
        obj_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], torch.cat(labels, dim=0)[sampled])
        return obj_loss, box_loss


def fastrcnn_l1_loss(class_logits: Tensor, box_regression: Tensor, labels: list[Tensor], regression_targets: list[Tensor]) -> tuple[Tensor, Tensor]:
    """torchvision's ``fastrcnn_loss`` with MMDet's L1 box loss (averaged over sampled RoIs)."""
    all_labels = torch.cat(labels, dim=0)
    targets = torch.cat(regression_targets, dim=0)
    cls_loss = F.cross_entropy(class_logits, all_labels)
    pos = torch.where(all_labels > 0)[0]
    deltas = box_regression.reshape(class_logits.shape[0], -1, 4)[pos, all_labels[pos]]
    return cls_loss, F.l1_loss(deltas, targets[pos], reduction="sum") / all_labels.numel()


class L1RoIHeads(RoIHeads):
    """RoI heads whose box loss is L1. torchvision calls the module-level ``fastrcnn_loss``
    from ``forward``; it is swapped only for the duration of this call (not thread-safe against
    another torchvision RoIHeads running concurrently in the same process)."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with mock.patch.object(tv_roi_heads, "fastrcnn_loss", fastrcnn_l1_loss):
            return super().forward(*args, **kwargs)


def build_mask_rcnn(
    method: MethodLike,
    num_classes: int = 80,
    *,
    adapter: ViTAdapter | None = None,
    fpn_channels: int = 256,
    detector_kwargs: dict[str, Any] | None = None,
    **adapter_config: Any,
) -> MaskRCNN:
    """ViT-Adapter-Ti (official detection layout) + FPN + Mask R-CNN for ``num_classes`` objects.

    Inputs: a list of float images in [0, 1], ``(3, H, W)``, already resized; targets as
    torchvision's (``boxes`` xyxy, ``labels`` in 1..num_classes, ``masks`` (N, H, W) uint8).
    ``fpn_channels`` and ``detector_kwargs`` (to ``MaskRCNN``) exist for small test models.
    """
    backbone = AdapterFPN(
        adapter if adapter is not None else build_vit_adapter(method, "detection", **adapter_config), fpn_channels
    )
    names = ["0", "1", "2", "3"]
    settings: dict[str, Any] = dict(
        rpn_pre_nms_top_n_train=2000,
        rpn_post_nms_top_n_train=1000,
        rpn_pre_nms_top_n_test=1000,
        rpn_post_nms_top_n_test=1000,
        box_roi_pool=AlignedMultiScaleRoIAlign(names, 7, sampling_ratio=0),
        mask_roi_pool=AlignedMultiScaleRoIAlign(names, 14, sampling_ratio=0),
        box_score_thresh=0.05,
        box_nms_thresh=0.5,
        box_detections_per_img=100,
    )
    settings.update(detector_kwargs or {})
    # + background; custom predictors (small test models) carry their own class count
    classes = None if "box_predictor" in settings else num_classes + 1
    model = MaskRCNN(backbone, num_classes=classes, **settings)
    model.transform = NoResizeTransform(1, 1, list(IMAGENET_MEAN), list(IMAGENET_STD), size_divisible=32)
    # same state, MMDet's box loss: swap the classes of the already-built parts
    model.rpn.__class__ = L1RegionProposalNetwork
    model.roi_heads.__class__ = L1RoIHeads
    return model


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def downstream_param_counts(method: MethodLike = "mpvg") -> dict[str, int]:
    """Parameters of the whole detector (80 classes) and segmenter (150 classes), and of the
    adapter backbone alone (official ViT-Adapter-T: about 28M and 36M)."""
    from mpvgbench.downstream.upernet import build_upernet

    detector = build_mask_rcnn(method)
    segmenter = build_upernet(method)
    return {
        "backbone": _count(segmenter.backbone),
        "mask_rcnn": _count(detector),
        "upernet": _count(segmenter),
    }
