"""Official parameter groups: no-decay names for detection, layer-wise lr decay for segmentation."""

from __future__ import annotations

import pytest
import torch

from mpvgbench.downstream.optim import (
    detection_param_groups,
    poly_schedule,
    segmentation_layer_id,
    segmentation_param_groups,
    step_schedule,
)
from mpvgbench.downstream.upernet import build_upernet


@pytest.fixture(scope="module")
def segmenter():
    return build_upernet("mpvg")


def test_detection_groups_follow_mmdet_custom_keys(segmenter) -> None:
    decay, no_decay = detection_param_groups(segmenter, lr=1e-4, weight_decay=0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    for name in ("backbone.level_embed", "backbone.vit.pos_embed", "backbone.vit.blocks.0.norm1.weight",
                 "backbone.vit.pe_chain.pe_norms.3.weight", "backbone.norm4.weight", "decode_head.conv_seg.bias"):
        assert name in no_decay["names"], name
    # the SPM's BatchNorm is "spm.stem.1": no "norm" in its name, so it is decayed (as official)
    assert "backbone.spm.stem.1.weight" in decay["names"]
    assert "backbone.vit.blocks.0.attn.qkv.weight" in decay["names"]
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(segmenter.parameters()))


def test_segmentation_layer_ids_and_scales(segmenter) -> None:
    assert segmentation_layer_id("backbone.vit.pos_embed") == 0
    assert segmentation_layer_id("backbone.vit.patch_embed.proj.weight") == 0
    assert segmentation_layer_id("backbone.vit.blocks.0.mlp.fc1.weight") == 1
    assert segmentation_layer_id("backbone.vit.blocks.11.attn.qkv.bias") == 12
    assert segmentation_layer_id("backbone.vit.pe_chain.pe_norms.5.weight") == 6
    assert segmentation_layer_id("backbone.level_embed") == 13
    assert segmentation_layer_id("decode_head.conv_seg.weight") == 13
    groups = segmentation_param_groups(segmenter, lr=1.0)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["decode_head.conv_seg.weight"]["lr"] == 1.0
    assert by_name["backbone.vit.blocks.11.attn.qkv.weight"]["lr"] == pytest.approx(0.95)
    assert by_name["backbone.vit.pos_embed"]["lr"] == pytest.approx(0.95**13)
    # official quirk: pos_embed and level_embed are decayed, 1-d params and biases are not
    assert by_name["backbone.vit.pos_embed"]["weight_decay"] == 0.01
    assert by_name["backbone.level_embed"]["weight_decay"] == 0.01
    assert by_name["backbone.vit.blocks.3.norm1.weight"]["weight_decay"] == 0.0
    torch.optim.AdamW(groups)  # groups are accepted as they are


def _lrs(scheduler, iters):
    out = []
    for _ in range(iters):
        out.append([g["lr"] for g in scheduler.optimizer.param_groups])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def test_step_schedule_warmup_and_steps() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    sched = step_schedule(torch.optim.SGD([p], lr=1.0), iters_per_epoch=10, steps=(2, 3), warmup_iters=5, warmup_ratio=0.001)
    lrs = [x[0] for x in _lrs(sched, 40)]
    assert lrs[0] == pytest.approx(0.001) and lrs[5] == 1.0 and lrs[19] == 1.0
    assert lrs[20] == pytest.approx(0.1) and lrs[30] == pytest.approx(0.01)


def test_poly_schedule_keeps_group_scales() -> None:
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.5}])
    lrs = _lrs(poly_schedule(opt, max_iters=100, warmup_iters=10, warmup_ratio=1e-6), 101)
    assert lrs[0][0] == pytest.approx(1e-6)
    assert lrs[50] == pytest.approx([0.5, 0.25]) and lrs[100] == pytest.approx([0.0, 0.0])
