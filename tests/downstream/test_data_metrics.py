"""COCO / ADE20K loading from synthetic roots, transforms, AP and mIoU."""

from __future__ import annotations

import pytest
import torch

from mpvgbench.data import DataError
from mpvgbench.downstream.data import (
    ADE20K,
    CocoInstances,
    DetectionTrainTransform,
    SegmentationTestTransform,
    SegmentationTrainTransform,
)
from mpvgbench.downstream.metrics import ConfusionMatrix, coco_evaluate, detections_to_coco
from mpvgbench.downstream.synthetic import make_synthetic_ade20k, make_synthetic_coco


def mask_box(mask: torch.Tensor) -> torch.Tensor:
    ys, xs = torch.where(mask > 0)
    return torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()


@pytest.fixture
def coco_root(tmp_path):
    return make_synthetic_coco(tmp_path / "coco", n_images=4)


def test_coco_loader_maps_categories_and_masks(coco_root) -> None:
    ds = CocoInstances(coco_root, "train")
    assert len(ds) == 4
    assert ds.label_to_cat_id == {1: 1, 2: 3, 3: 7}  # COCO ids are not contiguous
    image, target = ds[0]
    assert image.shape == (3, 96, 128) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert target["masks"].shape == (len(target["boxes"]), 96, 128) and target["masks"].dtype == torch.uint8
    assert set(target["labels"].tolist()) <= {1, 2, 3}
    for box, mask in zip(target["boxes"], target["masks"]):
        torch.testing.assert_close(box, mask_box(mask))


def test_coco_loader_names_the_missing_folder(tmp_path) -> None:
    with pytest.raises(DataError, match="val2017"):
        CocoInstances(tmp_path, "val")


def perfect_outputs(ds: CocoInstances):
    outputs, ids = [], []
    for i in range(len(ds)):
        _, t = ds[i]
        n = len(t["boxes"])
        outputs.append({"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(n), "masks": t["masks"][:, None].float()})
        ids.append(int(t["image_id"]))
    return outputs, ids


def test_perfect_detections_score_ap_one_and_shifted_ones_less(coco_root) -> None:
    ds = CocoInstances(coco_root, "val")
    outputs, ids = perfect_outputs(ds)
    metrics = coco_evaluate(ds.coco, detections_to_coco(outputs, ids, ds.label_to_cat_id))
    assert metrics["bbox_AP"] == pytest.approx(1.0) and metrics["segm_AP"] == pytest.approx(1.0)
    for out in outputs:
        out["boxes"] = out["boxes"] + 6.0
        out["masks"] = out["masks"].roll(6, dims=-1)
    worse = coco_evaluate(ds.coco, detections_to_coco(outputs, ids, ds.label_to_cat_id))
    assert worse["bbox_AP"] < 0.9 and worse["segm_AP"] < 0.9
    assert coco_evaluate(ds.coco, [])["bbox_AP"] == 0.0


def test_detection_train_transform_keeps_boxes_and_masks_together(coco_root) -> None:
    ds = CocoInstances(coco_root, "train", transforms=DetectionTrainTransform(scales=(160, 200), crop=112, seed=0))
    for i in range(len(ds)):
        image, target = ds[i]
        assert max(image.shape[1:]) <= 112 and target["masks"].shape[1:] == image.shape[1:]
        assert len(target["boxes"]) == len(target["masks"]) == len(target["labels"])
        for box, mask in zip(target["boxes"], target["masks"]):
            if mask.any():  # the clipped box holds its mask (nearest resizing: +-1.5 px at the edges)
                inner = mask_box(mask)
                assert (inner[:2] >= box[:2] - 1.5).all() and (inner[2:] <= box[2:] + 1.5).all()


def test_ade20k_loader_reduces_zero_label(tmp_path) -> None:
    root = make_synthetic_ade20k(tmp_path, n_images=3)
    ds = ADE20K(root, "validation")
    image, label = ds[0]
    assert len(ds) == 3 and image.shape == (3, 96, 128) and label.shape == (96, 128)
    assert set(label.unique().tolist()) <= {0, 1, 2, 255} and (label == 255).any()
    with pytest.raises(DataError, match="ADEChallengeData2016"):
        ADE20K(tmp_path / "nowhere")


def test_segmentation_transforms_crop_pad_and_keep_ignore(tmp_path) -> None:
    ds = ADE20K(make_synthetic_ade20k(tmp_path, n_images=2), "training", SegmentationTrainTransform(crop=160, scale=(256, 64), seed=0))
    image, label = ds[0]
    assert image.shape == (3, 160, 160) and label.shape == (160, 160)
    assert (label == 255).any()  # the 64-px short side needed padding
    test = SegmentationTestTransform()(torch.rand(3, 96, 128), torch.zeros(96, 128, dtype=torch.long))
    assert test[0].shape == (3, 512, 704) and test[1].shape == (96, 128)  # 512 x 682.7 -> multiple of 32


def test_miou_by_hand_and_ignore() -> None:
    cm = ConfusionMatrix(num_classes=3)
    label = torch.tensor([[0, 0], [1, 255]])
    pred = torch.tensor([[0, 1], [1, 2]])  # the ignored pixel's prediction does not count
    cm.update(pred, label)
    # class 0: inter 1, union 2 + 1 - 1 = 2; class 1: inter 1, union 1 + 2 - 1 = 2; class 2 absent
    iou = cm.iou()
    assert iou[0].item() == 0.5 and iou[1].item() == 0.5 and torch.isnan(iou[2])
    assert cm.miou() == pytest.approx(50.0)
    assert cm.pixel_accuracy() == pytest.approx(200 / 3)


def test_miou_is_over_the_whole_set_not_a_mean_of_images() -> None:
    cm = ConfusionMatrix(num_classes=2)
    cm.update(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 0, 1]))  # image 1: IoU0 3/4, IoU1 0
    cm.update(torch.tensor([1]), torch.tensor([1]))  # image 2: IoU1 1
    # whole set: class 0 inter 3 union 4 -> 0.75; class 1 inter 1 union 2 -> 0.5
    assert cm.miou() == pytest.approx(62.5)


def test_perfect_segmentation_is_100(tmp_path) -> None:
    ds = ADE20K(make_synthetic_ade20k(tmp_path, n_images=3), "validation")
    cm = ConfusionMatrix(num_classes=150)
    for _, label in ds:
        cm.update(torch.where(label == 255, 0, label), label)
    assert cm.miou() == 100.0
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2, 2), torch.zeros(3, 3))
