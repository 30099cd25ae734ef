"""The cost estimate of `run --dry-run` (mpvgbench.cost): FLOPs counted as by hand, images from
the catalog and the recipe, a measured throughput preferred to the stated assumption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from mpvgbench.config import Recipe, TrainConfig
from mpvgbench.cost import (ASSUMED_UTILISATION, PEAK_BF16_TFLOPS, ThroughputFileError, assumption_for,
                            count_train_flops, estimate, read_throughputs, train_flops_per_image,
                            training_images, write_throughputs)
from mpvgbench.matrix import Job


def test_an_mlp_counts_as_by_hand() -> None:
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    forward = 2 * 16 * 32 + 2 * 32 * 4  # multiply-adds x 2
    # backward: both weight gradients, and the input gradient of the second layer only (the
    # input needs none)
    backward = 2 * 16 * 32 + 2 * 32 * 4 + 2 * 32 * 4
    assert count_train_flops(model, (1, 16)) == pytest.approx(forward + backward, rel=0.02)


def test_a_depthwise_convolution_is_not_counted_as_dense() -> None:
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    forward = 2 * 8 * 9 * 6 * 6  # each output: 9 multiply-adds over its own channel
    counted = count_train_flops(nn.Sequential(nn.Identity(), conv), (1, 8, 6, 6))
    assert counted == pytest.approx(3 * forward, rel=0.02)  # torch alone says 8x more backward


def _config(dataset: str = "imagenet", **recipe: object) -> TrainConfig:
    return TrainConfig(model="deit_tiny", method="mpvg", dataset=dataset, img_size=224,
                       num_classes=1000, recipe=Recipe(**recipe))  # type: ignore[arg-type]


def test_training_images_from_the_catalog_and_the_recipe() -> None:
    assert training_images(_config(epochs=300, batch_size=1024)) == 1_281_167 // 1024 * 1024 * 300
    assert training_images(_config(epochs=2, batch_size=8, max_steps_per_epoch=3)) == 2 * 3 * 8
    assert training_images(_config("cifar100", epochs=1, batch_size=128)) == 50_000 // 128 * 128
    assert training_images(_config("imagefolder", epochs=1)) is None  # size unknown


def test_the_estimate_uses_a_measured_throughput_when_there_is_one(tmp_path: Path) -> None:
    config = _config(epochs=1, batch_size=1024)
    job = Job(key=config.key(), spec_name="t", config=config)
    images = 1_281_167 // 1024 * 1024
    # no measurement: the stated assumption, FLOPs / (peak x utilisation)
    (assumed,) = estimate([job], None, {})
    assert not assumed.measured and assumed.flops_per_image is not None
    rate = PEAK_BF16_TFLOPS["H100"] * 1e12 * ASSUMED_UTILISATION
    assert assumed.gpu_hours == pytest.approx(assumed.flops_per_image * images / rate / 3600)
    assert "989 TFLOP/s x 40% utilisation (assumed)" in assumption_for(None).describe()
    # a measurement gpu_check wrote for this GPU, model, method and size wins
    path = tmp_path / "throughput.json"
    write_throughputs(path, "NVIDIA H100 80GB HBM3", [
        {"model": "deit_tiny", "method": "mpvg", "img_size": 224, "train_img_s": 2000.0, "eval_img_s": 1.0}])
    write_throughputs(path, "NVIDIA A100", [
        {"model": "deit_tiny", "method": "mpvg", "img_size": 224, "train_img_s": 900.0}])
    (measured,) = estimate([job], "NVIDIA H100 80GB HBM3", read_throughputs(path, "NVIDIA H100 80GB HBM3"))
    assert measured.measured and measured.gpu_hours == pytest.approx(images / 2000.0 / 3600)
    # another size or another GPU has no measurement: the assumption again
    assert read_throughputs(path, "NVIDIA L4") == {}
    assert not estimate([job], "NVIDIA H100", {("deit_tiny", "mpvg", 32): 1e5})[0].measured
    (path.parent / "bad.json").write_text(json.dumps({"NVIDIA L4": [{"model": "x"}]}))
    with pytest.raises(ThroughputFileError, match="rewrite or remove it"):
        read_throughputs(path.parent / "bad.json", "NVIDIA L4")


def test_flops_do_not_depend_on_the_device_they_are_counted_on() -> None:
    with torch.device("meta"):
        on_meta = count_train_flops(nn.Linear(4, 4), (2, 4))
    assert on_meta == count_train_flops(nn.Linear(4, 4), (2, 4))


def test_models_with_float32_regions_and_dense_models_are_counted_on_meta() -> None:
    """T2T's Performer and the adapter's deformable attention turn autocast off, which torch
    refuses on the meta device: counted anyway, and torch.autocast is torch's again after."""
    real_autocast = torch.autocast
    t2t = train_flops_per_image(TrainConfig(model="t2t_vit_7", method="mpvg", dataset="imagenet",
                                            img_size=32, num_classes=10))
    ade = train_flops_per_image(TrainConfig(model="deit_tiny", method="mpvg", dataset="ade20k",
                                            img_size=64, num_classes=3))
    assert t2t > 0 and ade > t2t
    assert torch.autocast is real_autocast
