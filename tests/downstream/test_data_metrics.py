"""COCO / ADE20K loading from synthetic roots, transforms, AP and mIoU."""

from __future__ import annotations

import random
from unittest import mock

import pytest
import torch

from mpvgbench.data import DataError
from mpvgbench.downstream import data
from mpvgbench.downstream.data import (
    ADE20K,
    CocoInstances,
    DetectionTrainTransform,
    SegmentationTestTransform,
    SegmentationTrainTransform,
)
from mpvgbench.downstream.detection import build_mask_rcnn
from mpvgbench.downstream.metrics import ConfusionMatrix, coco_evaluate, detections_to_coco
from mpvgbench.downstream.steps import DenseLosses
from mpvgbench.downstream.synthetic import make_synthetic_ade20k, make_synthetic_coco
from tests.downstream.test_steps import TINY_ADAPTER


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


# the official pipeline's sizes / 4: branch 1 short side 120..200, branch 2 short 100..150 then a
# 96..150 crop, long side <= 333, final crop 256
SMALL = dict(scales=tuple(range(120, 201, 8)), max_size=333, crop=256, crop_scales=(100, 125, 150), crop_range=(96, 150))
# a nearest resize moves a mask edge by < 1 output px; policy 2's second resize magnifies the
# first one's error by up to 200 / 96: 1 + 200 / 96 px in all
NEAREST_TOL = 1 + 200 / 96


def test_detection_train_transform_keeps_boxes_and_masks_together(coco_root) -> None:
    tf = DetectionTrainTransform(**SMALL, seed=0)
    ds = CocoInstances(coco_root, "train", transforms=tf)
    for i in range(len(ds)):
        image, target = ds[i]
        assert max(image.shape[1:]) <= 256 and target["masks"].shape[1:] == image.shape[1:]
        assert len(target["boxes"]) == len(target["masks"]) == len(target["labels"])
        for box, mask in zip(target["boxes"], target["masks"]):
            if mask.any():  # the clipped box holds its (maybe occluded) mask up to NEAREST_TOL
                inner = mask_box(mask)
                assert (inner[:2] >= box[:2] - NEAREST_TOL).all() and (inner[2:] <= box[2:] + NEAREST_TOL).all()


def rectangles(h: int = 120, w: int = 160) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """An image with three rectangular instances (masks = their boxes), one near each corner."""
    boxes = torch.tensor([[4.0, 6.0, 40.0, 30.0], [100.0, 10.0, 156.0, 50.0], [30.0, 70.0, 90.0, 116.0]])
    masks = torch.zeros(3, h, w, dtype=torch.uint8)
    for m, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
        m[y1:y2, x1:x2] = 1
    target = {"boxes": boxes, "labels": torch.tensor([1, 2, 3]), "masks": masks, "image_id": torch.tensor(7)}
    return torch.rand(3, h, w), target


def run_recorded(tf: DetectionTrainTransform, image, target, seed: int):
    """The transform's output, how many resizes it made (policy 1: one, policy 2: two) and the
    image sizes its crops returned."""
    tf.rng = random.Random(seed)
    crops: list[tuple[int, int]] = []

    def crop(*args, **kwargs):
        out = real_crop(*args, **kwargs)
        crops.append(tuple(out[0].shape[1:]))
        return out

    real_crop = data._crop_detection
    with mock.patch.object(data, "_resize_detection", wraps=data._resize_detection) as resize, \
            mock.patch.object(data, "_crop_detection", side_effect=crop):
        out = tf(image, target)
    return out, resize.call_count, crops


def test_detection_autoaugment_takes_both_policies_with_official_sizes() -> None:
    tf = DetectionTrainTransform(**SMALL)
    image, target = rectangles()
    policies, first_crops = [], []
    for seed in range(40):
        (out, _), resizes, crops = run_recorded(tf, image, target, seed)
        policies.append(resizes)
        if resizes == 2:  # policy 2: crop h, w each in [96, 150], then the short side from scales
            assert len(crops) == 2
            first_crops.append(crops[0])
            assert all(96 <= side <= 150 for side in crops[0]), crops
        else:
            assert resizes == 1 and len(crops) == 1
        # both: aspect <= 150/96 (policy 2) or 4/3, so the 333 cap never binds: the short side is
        # a drawn scale (<= 200, so the final 256 crop only trims the long side)
        assert min(out.shape[1:]) in SMALL["scales"] and max(out.shape[1:]) <= 256, out.shape
    assert set(policies) == {1, 2} and 10 <= policies.count(2) <= 30  # uniform choice
    heights, widths = {h for h, _ in first_crops}, {w for _, w in first_crops}
    assert len(heights) > 3 and len(widths) > 3 and any(h != w for h, w in first_crops)  # independent draws


def test_detection_transform_boxes_stay_inside_and_match_the_masks() -> None:
    tf = DetectionTrainTransform(**SMALL)
    image, target = rectangles()
    for seed in range(30):
        tf.rng = random.Random(seed)
        out, t = tf(image, target)
        h, w = out.shape[1:]
        assert t["masks"].shape == (len(t["boxes"]), h, w) and len(t["labels"]) == len(t["boxes"])
        assert t["labels"].tolist() == sorted(t["labels"].tolist())  # dropped, never reordered
        boxes = t["boxes"]
        assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= w).all()
        assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= h).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        for box, mask in zip(boxes, t["masks"]):
            if mask.any():
                torch.testing.assert_close(mask_box(mask), box, atol=NEAREST_TOL, rtol=0.0)


def test_detection_transform_is_a_function_of_its_rng_only() -> None:
    tf = DetectionTrainTransform(**SMALL)
    image, target = rectangles()
    outs = []
    for seed, noise in ((3, 0), (3, 1), (4, 0)):
        random.seed(noise)  # global RNGs must not matter
        torch.manual_seed(noise)
        tf.rng = random.Random(seed)
        outs.append(tf(image, target))
    (a, ta), (b, tb), (c, _) = outs
    assert torch.equal(a, b) and all(torch.equal(ta[k], tb[k]) for k in ("boxes", "labels", "masks"))
    assert a.shape != c.shape or not torch.equal(a, c)
    with pytest.raises(ValueError, match="crop_range"):
        DetectionTrainTransform(crop_range=(600, 384))


def test_negative_crops_are_kept_and_train(tmp_path) -> None:
    image = torch.rand(3, 200, 200)
    mask = torch.zeros(1, 200, 200, dtype=torch.uint8)
    mask[0, :10, :10] = 1
    target = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([1]), "masks": mask}
    tf = DetectionTrainTransform(scales=(96,), max_size=160, crop=64, crop_scales=(96,), crop_range=(40, 60))
    empty = None
    for seed in range(20):
        tf.rng = random.Random(seed)
        out, t = tf(image, target)
        if len(t["boxes"]) == 0:
            empty = out, t
            break
    assert empty is not None, "some crop should miss the corner object"
    out, t = empty
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,) and t["masks"].shape == (0, *out.shape[1:])
    # torchvision's Mask R-CNN trains on an image without instances next to one with an instance
    images, targets = small_batch_with(out, t)
    model = build_mask_rcnn("gap", num_classes=3, fpn_channels=32, detector_kwargs=dict(box_batch_size_per_image=32), **TINY_ADAPTER)
    losses = DenseLosses(model.train(), "detection")(images, targets)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    assert model.backbone.body.spm.fc1.weight.grad is not None


def small_batch_with(image: torch.Tensor, target: dict[str, torch.Tensor]):
    other = torch.rand(3, 64, 64)
    mask = torch.zeros(1, 64, 64, dtype=torch.uint8)
    mask[0, 8:40, 16:48] = 1
    full = {"boxes": torch.tensor([[16.0, 8.0, 48.0, 40.0]]), "labels": torch.tensor([2]), "masks": mask}
    return [image, other], [target, full]


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


def test_crowd_only_images_stay_in_training_with_zero_instances(coco_root) -> None:
    import json

    ann_file = coco_root / "annotations" / "instances_train2017.json"
    content = json.loads(ann_file.read_text())
    crowd_image = content["images"][1]["id"]
    for ann in content["annotations"]:
        if ann["image_id"] == crowd_image:
            ann["iscrowd"] = 1
    content["annotations"] = [a for a in content["annotations"] if a["image_id"] != content["images"][2]["id"]]
    ann_file.write_text(json.dumps(content))
    ds = CocoInstances(coco_root, "train")
    # MMDet keeps images with any annotation (crowd-only too) and drops images with none
    assert [ds._coco.ids[i] for i in ds.indices] == [content["images"][i]["id"] for i in (0, 1, 3)]
    _, target = ds[1]
    assert int(target["image_id"]) == crowd_image and target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 96, 128)
    assert ds.landscape_flags() == [True, True, True]  # 128 wide, 96 high


def test_hue_is_drawn_on_opencvs_180_scale() -> None:
    transform = SegmentationTrainTransform(seed=0)
    factors = []
    with mock.patch.object(data.TF, "adjust_hue", side_effect=lambda img, f: factors.append(f) or img):
        for _ in range(400):
            transform._photometric(torch.rand(3, 4, 4))
    steps = sorted({round(f * 180) for f in factors})
    # integers -18..17 on OpenCV's 0-180 scale (numpy's randint excludes the top): +-36 degrees
    assert steps[0] == -18 and steps[-1] == 17 and all(abs(f * 180 - round(f * 180)) < 1e-9 for f in factors)


def test_masks_are_pasted_at_the_original_size() -> None:
    from mpvgbench.downstream.detection import detect_at_original_size

    torch.manual_seed(0)
    model = build_mask_rcnn("gap", num_classes=3, fpn_channels=32, **TINY_ADAPTER).eval()
    model.roi_heads.score_thresh = 0.0  # untrained: keep whatever it finds
    model.roi_heads.detections_per_img = 5
    image = torch.rand(3, 64, 96)
    with torch.no_grad():
        at_input = model([image])[0]
        out = detect_at_original_size(model, image, (150, 200))
    assert model.transform.paste_masks  # restored
    assert len(out["boxes"]) == len(at_input["boxes"]) > 0
    torch.testing.assert_close(out["boxes"], at_input["boxes"] * torch.tensor([200 / 96, 150 / 64] * 2))
    assert out["masks"].shape == (len(out["boxes"]), 1, 150, 200)
