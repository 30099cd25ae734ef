"""The training forward (DenseLosses), sliding-window inference, and a tiny Mask R-CNN overfitting
4 images."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

from mpvgbench.downstream.data import ADE20K, CocoInstances, SegmentationTestTransform, collate_detection
from mpvgbench.downstream.detection import build_mask_rcnn
from mpvgbench.downstream.steps import DenseLosses, evaluate_detection, evaluate_segmentation, slide_inference
from mpvgbench.downstream.synthetic import make_synthetic_ade20k, make_synthetic_coco
from mpvgbench.downstream.upernet import UperNetSegmenter, build_upernet

def train_step(model: torch.nn.Module, task: str, images, targets, optimizer=None) -> dict[str, torch.Tensor]:
    """The losses of one training forward and their sum ``loss``; with an optimizer, one update
    (what the training loop does, without it)."""
    losses = DenseLosses(model.train(), task)(images, targets)
    losses["loss"] = sum(losses.values())
    if optimizer is None:
        return losses
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    optimizer.step()
    return {k: v.detach() for k, v in losses.items()}


TINY_ADAPTER = dict(
    vit_kwargs=dict(depth=4, embed_dim=64, num_heads=2),
    interaction_indexes=((0, 0), (1, 1), (2, 2), (3, 3)),
    window_sizes=(None,) * 4,
    deform_heads=4,
    conv_inplane=16,
    drop_path_rate=0.0,
)


class Recorder(UperNetSegmenter):
    """Logits = a fixed per-pixel function of the input, to check window averaging exactly."""

    def predict_logits(self, img, size=None):  # type: ignore[override]
        self.calls.append(tuple(img.shape[-2:]))
        return img[:, :1].expand(-1, self.num_classes, -1, -1) * torch.arange(1.0, self.num_classes + 1).view(1, -1, 1, 1)


def test_slide_inference_covers_the_image_with_mmseg_windows() -> None:
    model = Recorder(build_upernet("gap", num_classes=2, head_channels=8, **TINY_ADAPTER).backbone, num_classes=2)
    model.calls = []
    img = torch.rand(1, 3, 512, 683)
    out = slide_inference(model, img)
    assert model.calls == [(512, 512), (512, 512)]  # 683 wide: windows at x 0 and 171 (flush right)
    torch.testing.assert_close(out[:, 1], 2 * img[:, 0])  # overlapping windows average to the same value


def test_segmentation_losses_train_and_evaluation_runs(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_upernet("mpvg", num_classes=3, head_channels=32, aux_channels=16, **TINY_ADAPTER)
    root = make_synthetic_ade20k(tmp_path, n_images=2, size=(64, 96))
    ds = ADE20K(root, "training")
    images = torch.stack([ds[i][0] for i in range(2)])
    labels = torch.stack([ds[i][1] for i in range(2)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = train_step(model, "segmentation", images, labels, opt)
    for _ in range(4):
        last = train_step(model, "segmentation", images, labels, opt)
    assert set(first) == {"loss_seg", "loss_aux", "loss"} and not first["loss"].requires_grad
    assert last["loss"] < first["loss"]
    metrics = evaluate_segmentation(model, ADE20K(root, "validation", SegmentationTestTransform(scale=(96, 64))), crop=64, stride=43)
    assert 0.0 <= metrics["mIoU"] <= 100.0 and 0.0 <= metrics["aAcc"] <= 100.0


def test_detection_losses_keep_the_graph(tmp_path) -> None:
    root = make_synthetic_coco(tmp_path, n_images=2, size=(64, 96))
    images, targets = collate_detection([CocoInstances(root, "train")[i] for i in range(2)])
    model = build_mask_rcnn("pvg", num_classes=3, fpn_channels=32, detector_kwargs=dict(box_batch_size_per_image=32), **TINY_ADAPTER)
    losses = train_step(model, "detection", images, targets)
    assert losses["loss"].requires_grad
    torch.testing.assert_close(losses["loss"], sum(v for k, v in losses.items() if k != "loss"))


@pytest.mark.slow
def test_tiny_mask_rcnn_overfits_four_images(tmp_path) -> None:
    torch.manual_seed(0)
    root = make_synthetic_coco(tmp_path, n_images=4, size=(64, 96))
    images, targets = collate_detection([CocoInstances(root, "train")[i] for i in range(4)])
    small = dict(  # small heads and samples: ~0.5 CPU-s a step
        mask_head=MaskRCNNHeads(64, [64, 64], 1), mask_predictor=MaskRCNNPredictor(64, 64, 4),
        box_head=TwoMLPHead(64 * 7 * 7, 256), box_predictor=FastRCNNPredictor(256, 4),
        rpn_batch_size_per_image=64, box_batch_size_per_image=64, rpn_pre_nms_top_n_train=200,
        rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=50, box_detections_per_img=10,
    )
    model = build_mask_rcnn("mpvg", num_classes=3, fpn_channels=64, detector_kwargs=small, **TINY_ADAPTER)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    losses = [float(train_step(model, "detection", images, targets, opt)["loss"]) for _ in range(50)]
    assert sum(losses[-5:]) / 5 < 0.3 * losses[0], losses
    metrics = evaluate_detection(model, CocoInstances(root, "val"))
    assert metrics["bbox_AP50"] > 0.6 and metrics["segm_AP50"] > 0.5, metrics
