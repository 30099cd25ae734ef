"""UperNet, Mask R-CNN set-up, parameter counts."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from torchvision.ops import roi_align

from mpvgbench.downstream import detection
from mpvgbench.downstream.detection import (
    AlignedMultiScaleRoIAlign,
    build_mask_rcnn,
    downstream_param_counts,
    fastrcnn_l1_loss,
)
from mpvgbench.downstream.upernet import UPerHead, build_upernet


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_param_counts_match_the_official_vit_adapter_t() -> None:
    counts = downstream_param_counts("mpvg")
    # official ViT-Adapter-T: 28.1M with Mask R-CNN, 36.1M with UperNet (their README)
    assert round(counts["mask_rcnn"] / 1e6, 1) == 28.1 and round(counts["upernet"] / 1e6, 1) == 36.1, counts
    # the exact numbers docs/downstream.md states (incl. 12 x 2 x 192 layer-scale gammas); Mask
    # R-CNN regresses boxes and predicts masks for the 80 objects only: 4,357 fewer than
    # torchvision's 81-class predictors (1024 x 4 + 4 box, 256 + 1 mask) gave (28,077,669)
    assert counts == {"backbone": 7_971_440, "mask_rcnn": 28_073_312, "upernet": 36_067_228}


def test_heads_predict_80_objects_and_are_initialised_as_mmdetection() -> None:
    model = build_mask_rcnn("gap", num_classes=80)
    box, mask = model.roi_heads.box_predictor, model.roi_heads.mask_predictor
    assert box.cls_score.out_features == 81 and box.bbox_pred.out_features == 320
    assert mask.mask_fcn_logits.out_channels == 80
    assert box.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert box.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert (box.cls_score.bias == 0).all() and (mask.mask_fcn_logits.bias == 0).all()
    fc6 = model.roi_heads.box_head.fc6.weight  # Xavier-uniform: bound sqrt(6 / (fan_in + fan_out))
    assert fc6.abs().max().item() == pytest.approx((6 / sum(fc6.shape)) ** 0.5, rel=0.01)
    layer = model.backbone.fpn.layer_blocks[0][0].weight  # 3x3, 256 -> 256
    assert layer.abs().max().item() == pytest.approx((6 / (2 * 256 * 9)) ** 0.5, rel=0.01)
    # the background block is constant zeros in front of the 80 object blocks
    scores, deltas = box(torch.randn(5, 1024))
    assert scores.shape == (5, 81) and deltas.shape == (5, 324) and (deltas[:, :4] == 0).all()
    logits = mask(torch.randn(2, 256, 14, 14))
    assert logits.shape == (2, 81, 28, 28) and (logits[:, 0] == 0).all()


def test_uper_convs_are_kaiming_normal_fan_out_as_mmcv_conv_module() -> None:
    head = build_upernet("gap", num_classes=150).decode_head
    conv = head.bottleneck[0].weight  # 3x3, 960 -> 512: std sqrt(2 / (512 * 9))
    assert conv.std().item() == pytest.approx((2 / (512 * 9)) ** 0.5, rel=0.02)
    lateral = head.lateral_convs[0][0].weight  # 1x1, 192 -> 512
    assert lateral.std().item() == pytest.approx((2 / 512) ** 0.5, rel=0.02)


def test_upernet_shapes_and_losses_at_a_non_square_input() -> None:
    model = build_upernet("pvg", num_classes=7)
    img = torch.randn(2, 3, 64, 96)
    main, aux = model(img)
    assert main.shape == (2, 7, 16, 24) and aux.shape == (2, 7, 4, 6)
    labels = torch.randint(0, 7, (2, 64, 96))
    labels[:, :10] = 255
    losses = model.losses(img, labels)
    assert set(losses) == {"loss_seg", "loss_aux"}
    sum(losses.values()).backward()
    assert model.backbone.spm.fc1.weight.grad is not None
    assert model.predict_logits(img).shape == (2, 7, 64, 96)


def test_uper_head_fuses_every_level() -> None:
    head = UPerHead([8, 8, 8, 8], num_classes=3, channels=16).eval()
    feats = [torch.randn(1, 8, 16 // 2**i, 16 // 2**i) for i in range(4)]
    base = head(feats)
    for level in range(4):
        changed = [f.clone() for f in feats]
        changed[level] += 1.0
        assert not torch.allclose(head(changed), base), level


def test_aligned_roi_align_matches_torchvision_aligned_per_level() -> None:
    pool = AlignedMultiScaleRoIAlign(["0", "1"], 7, sampling_ratio=0)
    feats = {"0": torch.randn(1, 4, 32, 32), "1": torch.randn(1, 4, 16, 16)}
    small, large = torch.tensor([[4.0, 4.0, 40.0, 40.0]]), torch.tensor([[0.0, 0.0, 120.0, 120.0]])
    out = pool(feats, [torch.cat([small, large])], [(128, 128)])
    rois = lambda b: torch.cat([torch.zeros(1, 1), b], 1)  # noqa: E731
    torch.testing.assert_close(out[0:1], roi_align(feats["0"], rois(small), 7, 0.25, 0, aligned=True))
    torch.testing.assert_close(out[1:2], roi_align(feats["1"], rois(large), 7, 0.125, 0, aligned=True))
    assert not torch.allclose(out[0:1], roi_align(feats["0"], rois(small), 7, 0.25, 0, aligned=False))


def test_fastrcnn_l1_loss_by_hand() -> None:
    logits = torch.zeros(3, 3)
    deltas = torch.zeros(3, 12)
    deltas[0, 4:8] = torch.tensor([1.0, -2.0, 0.5, 0.0])  # RoI 0, class 1
    labels = [torch.tensor([1, 0, 0])]
    targets = [torch.zeros(3, 4)]
    cls_loss, box_loss = fastrcnn_l1_loss(logits, deltas, labels, targets)
    torch.testing.assert_close(box_loss, torch.tensor(3.5 / 3))  # summed L1 over positives / sampled
    torch.testing.assert_close(cls_loss, torch.log(torch.tensor(3.0)))


def small_batch():
    images = [torch.rand(3, 128, 160), torch.rand(3, 96, 128)]
    targets = []
    for img, box in zip(images, ([16, 16, 80, 72], [8, 24, 60, 90])):
        m = torch.zeros(1, *img.shape[1:], dtype=torch.uint8)
        m[0, box[1] : box[3], box[0] : box[2]] = 1
        targets.append({"boxes": torch.tensor([box], dtype=torch.float32), "labels": torch.tensor([2]), "masks": m})
    return images, targets


def test_mask_rcnn_trains_with_mmdet_settings_and_predicts() -> None:
    model = build_mask_rcnn("mpvg", num_classes=3)
    assert model.rpn._post_nms_top_n == {"training": 1000, "testing": 1000}
    assert model.rpn._pre_nms_top_n == {"training": 2000, "testing": 1000}
    assert isinstance(model.roi_heads.box_roi_pool, AlignedMultiScaleRoIAlign)
    # fewer proposals and RoIs than MMDet's 1000 / 512 keep this test quick on CPU
    model.rpn._post_nms_top_n["training"] = 100
    model.roi_heads.fg_bg_sampler.batch_size_per_image = 64
    images, targets = small_batch()
    with mock.patch.object(detection, "fastrcnn_l1_loss", wraps=fastrcnn_l1_loss) as spy:
        losses = model(images, targets)
    assert spy.called  # the RoI head's box loss is L1
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    model.eval()
    model.roi_heads.detections_per_img = 3  # pasting 100 masks is the slow part on CPU
    model.rpn._post_nms_top_n["testing"] = 50
    with torch.no_grad():
        out = model(images)
    assert out[1]["masks"].shape[-2:] == (96, 128)  # no resizing inside the model


def test_anchors_in_the_batch_padding_are_left_out_of_the_rpn_targets() -> None:
    from torchvision.models.detection.rpn import RegionProposalNetwork

    from tests.downstream.tiny import TINY_ADAPTER

    model = build_mask_rcnn("gap", num_classes=3, fpn_channels=32, conv_inplane=16, **TINY_ADAPTER)
    images = [torch.rand(3, 64, 64), torch.rand(3, 128, 192)]  # the first is padded to 128x192
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 48.0]]), "labels": torch.tensor([1]),
                "masks": torch.zeros(1, *img.shape[1:], dtype=torch.uint8)} for img in images]
    image_list, targets = model.transform(images, targets)
    assert [t["pad_shape"].tolist() for t in targets] == [[64, 64], [128, 192]]
    features = list(model.backbone(image_list.tensors).values())
    anchors = model.rpn.anchor_generator(image_list, features)
    labels, matched = model.rpn.assign_targets_to_anchors(anchors, targets)
    plain_labels, _ = RegionProposalNetwork.assign_targets_to_anchors(model.rpn, anchors, targets)
    centres = (anchors[0][:, :2] + anchors[0][:, 2:]) / 2
    padding = (centres[:, 0] >= 64) | (centres[:, 1] >= 64)
    assert padding.any() and (labels[0][padding] == -1).all()  # torchvision: easy negatives
    assert (plain_labels[0][padding] == 0).all()
    torch.testing.assert_close(labels[0][~padding], plain_labels[0][~padding])
    torch.testing.assert_close(labels[1], plain_labels[1])  # the largest image has no batch padding
    assert all(torch.isfinite(model.rpn.box_coder.encode(matched, anchors)[i]).all() for i in range(2))
