"""Mask R-CNN (torchvision) on an FPN over ViT-Adapter's four levels, set up as MMDetection's
``mask_rcnn_r50_fpn`` defaults where torchvision differs (see docs/downstream.md):

- RoIAlign with ``aligned=True`` and adaptive sampling (``sampling_ratio=0``) for boxes and masks;
- L1 box-regression loss in the RPN and the RoI head (torchvision: smooth L1, beta 1/9);
- RPN keeps 2000 boxes per level before NMS and 1000 after it in training (1000/1000 at test);
- 80 object classes: a classifier over 80 + background, box regression and mask logits for the
  80 objects only (:class:`ObjectBoxPredictor`, :class:`ObjectMaskPredictor`; torchvision
  predicts them for background too);
- MMDetection's initialisation: FPN convs Xavier-uniform, the shared FCs Xavier-uniform,
  ``fc_cls`` normal(0, 0.01), ``fc_reg`` normal(0, 0.001), mask upsampling and logits
  Kaiming-normal (fan_out, ReLU), biases 0;
- no resizing inside the model (the data pipeline resizes), only ImageNet normalisation and
  padding to a multiple of 32; :func:`detect_at_original_size` pastes masks at the original
  image size (MMDet's ``rescale=True``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

from mpvgbench.downstream.adapter import ViTAdapter, build_vit_adapter
from mpvgbench.methods import MethodLike

__all__ = [
    "AdapterFPN", "AlignedMultiScaleRoIAlign", "ObjectBoxPredictor", "ObjectMaskPredictor", "build_mask_rcnn",
    "detect_at_original_size",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # MMDet's (123.675, 116.28, 103.53) / 255
IMAGENET_STD = (0.229, 0.224, 0.225)  # MMDet's (58.395, 57.12, 57.375) / 255


class AdapterFPN(nn.Module):
    """The adapter's strides 4..32 -> FPN P2..P5 (256 channels) + P6 by max-pooling P5."""

    def __init__(self, adapter: ViTAdapter, out_channels: int = 256) -> None:
        super().__init__()
        self.body = adapter
        dim = adapter.vit.embed_dim
        self.fpn = FeaturePyramidNetwork([dim] * 4, out_channels, extra_blocks=LastLevelMaxPool())
        for m in self.fpn.modules():  # MMDet FPN init_cfg: Xavier-uniform (torchvision: Kaiming-uniform, a=1)
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
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


class ObjectBoxPredictor(nn.Module):
    """MMDet's ``Shared2FCBBoxHead`` outputs: ``fc_cls`` over ``num_classes`` + background,
    ``fc_reg`` with 4 deltas per OBJECT class (MMDet: 80 x 4; torchvision: 81 x 4).

    ``forward`` puts a constant zero block in front of the deltas, so torchvision's RoI heads
    (which index deltas by label 1..K and drop column 0 at test) see their usual layout; the
    zeros are no parameters and get no gradient."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, 0.0, 0.01)  # MMDet BBoxHead init_cfg
        nn.init.normal_(self.bbox_pred.weight, 0.0, 0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(start_dim=1)
        deltas = self.bbox_pred(x)
        return self.cls_score(x), torch.cat([deltas.new_zeros(deltas.shape[0], 4), deltas], dim=1)


class ObjectMaskPredictor(nn.Module):
    """MMDet ``FCNMaskHead``'s upsampling and logits: 2x deconvolution, ReLU, one 1x1 logit map
    per OBJECT class (MMDet: 80; torchvision: 81), Kaiming-normal fan_out, biases 0. A constant
    zero map is put in front (index 0) so torchvision's mask loss and inference, which index
    the logits by label 1..K, work unchanged."""

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int) -> None:
        super().__init__()
        self.conv5_mask = nn.ConvTranspose2d(in_channels, dim_reduced, 2, 2)
        self.relu = nn.ReLU(inplace=True)
        self.mask_fcn_logits = nn.Conv2d(dim_reduced, num_classes, 1)
        for layer in (self.conv5_mask, self.mask_fcn_logits):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.mask_fcn_logits(self.relu(self.conv5_mask(x)))
        return torch.cat([logits.new_zeros(logits.shape[0], 1, *logits.shape[2:]), logits], dim=1)


class NoResizeTransform(GeneralizedRCNNTransform):
    """Normalise and pad to a multiple of 32 only: resizing belongs to the data pipeline.
    ``paste_masks=False`` leaves the masks as the heads' 28x28 probabilities (for pasting at
    another size, :func:`detect_at_original_size`)."""

    paste_masks = True

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor] | None]:  # type: ignore[override]
        if target is not None:  # MMDet's img_meta["pad_shape"]: this image alone padded to 32
            d = self.size_divisible
            h, w = image.shape[-2:]
            target = {**target, "pad_shape": torch.tensor([-(-h // d) * d, -(-w // d) * d], device=image.device)}
        return image, target

    def postprocess(self, result: list[dict[str, Tensor]], image_shapes: Any, original_image_sizes: Any) -> list[dict[str, Tensor]]:  # type: ignore[override]
        if self.training or self.paste_masks:
            return super().postprocess(result, image_shapes, original_image_sizes)
        return result  # boxes stay at the input size (nothing was resized)


@torch.no_grad()
def detect_at_original_size(model: MaskRCNN, image: Tensor, original_hw: tuple[int, int]) -> dict[str, Tensor]:
    """Detections for one test-scale ``image`` mapped to the ORIGINAL image size: boxes scaled,
    masks pasted from the 28x28 probabilities straight at ``original_hw`` (MMDet's
    ``rescale=True``), not pasted at the test size and resized. Outputs on the CPU, float32."""
    transform = model.transform
    transform.paste_masks = False
    try:
        (out,) = model([image])
    finally:
        transform.paste_masks = True
    out = {k: v.cpu().float() if v.is_floating_point() else v.cpu() for k, v in out.items()}
    (h, w), (ih, iw) = original_hw, image.shape[-2:]
    out["boxes"] = out["boxes"] * torch.tensor([w / iw, h / ih, w / iw, h / ih])
    if "masks" in out:
        out["masks"] = paste_masks_in_image(out["masks"], out["boxes"], (h, w))
    return out


class L1RegionProposalNetwork(RegionProposalNetwork):
    """RPN with MMDet's L1 box loss (averaged over the sampled anchors, as torchvision's) and
    MMDet's valid anchors: an anchor whose location (its centre) lies outside its image's own
    ``pad_shape`` (in the padding a larger image of the batch needed) is left out of the
    matching and the sampling (label -1), as MMDet's ``valid_flags`` with ``allowed_border=-1``."""

    def assign_targets_to_anchors(self, anchors: list[Tensor], targets: list[dict[str, Tensor]]) -> tuple[list[Tensor], list[Tensor]]:  # type: ignore[override]
        labels, matched = [], []
        for anchors_i, target in zip(anchors, targets):
            centres = (anchors_i[:, :2] + anchors_i[:, 2:]) / 2  # (x, y)
            pad_h, pad_w = target.get("pad_shape", (math.inf, math.inf))  # absent: every anchor valid
            valid = (centres[:, 0] < pad_w) & (centres[:, 1] < pad_h)
            (label_valid,), (boxes_valid,) = super().assign_targets_to_anchors([anchors_i[valid]], [target])
            label = label_valid.new_full((anchors_i.shape[0],), -1.0)
            label[valid] = label_valid
            boxes = anchors_i.to(boxes_valid.dtype, copy=True)  # the ignored regress onto themselves (finite)
            boxes[valid] = boxes_valid
            labels.append(label)
            matched.append(boxes)
        return labels, matched

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
        # torchvision's defaults: TwoMLPHead 1024 wide, mask head 4 convs of 256
        box_predictor=ObjectBoxPredictor(1024, num_classes),
        mask_predictor=ObjectMaskPredictor(256, 256, num_classes),
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
    model = MaskRCNN(backbone, num_classes=None, **settings)
    box_head = model.roi_heads.box_head
    for fc in (box_head.fc6, box_head.fc7):  # MMDet shared_fcs: Xavier-uniform, bias 0
        nn.init.xavier_uniform_(fc.weight)
        nn.init.zeros_(fc.bias)
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
