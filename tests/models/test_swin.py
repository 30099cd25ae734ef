"""Swin-Ti with every method: counts, per-stage PE chain, delivery through shifted windows, GAP."""

from __future__ import annotations

from typing import Any

import pytest
import timm
import torch
from timm.models.swin_transformer import window_partition
from torch import Tensor, nn

import mpvgbench.models as M
from mpvgbench.models.pe import fold_last_ln_pe
from mpvgbench.models.swin import MPVGSwinTransformer, default_window_size

from .conftest import (
    PRESET_NAMES,
    assert_mpvg_minus_pvg_is_input_free,
    assert_trains,
    count_params_of,
    randomize_pe_norms,
    share_pvg_weights,
)

IMG = 32  # 8x8 patch grid -> stages 8, 4, 2, 1; window 2 (stage 0 and 1 shift by 1)
WIDTH = 24  # narrow Swin (heads 3/6/12/24 -> head dim 8) keeps the forward tests fast


def _small(method: Any, seed: int = 0, **kw: Any) -> MPVGSwinTransformer:
    torch.manual_seed(seed)
    kw.setdefault("embed_dim", WIDTH)
    img_size = kw.pop("img_size", IMG)
    model = M.build_model("swin_tiny", method, num_classes=10, img_size=img_size, **kw)
    assert isinstance(model, MPVGSwinTransformer)
    return model


def _input(batch: int = 2, seed: int = 1) -> Tensor:
    return torch.randn(batch, 3, IMG, IMG, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "method,expected", [("default", 28_589_410), ("lape", 28_598_242), ("pvg", 28_598_242), ("mpvg", 28_599_778)]
)
def test_parameter_counts(method: str, expected: int) -> None:
    assert count_params_of("swin_tiny", method) == expected


def test_full_size_layout() -> None:
    with torch.device("meta"):
        model = M.build_model("swin_tiny", "mpvg")
    assert model.absolute_pos_embed.shape == (1, 3136, 96)
    assert [blk.window_size for s in model.layers for blk in s.blocks][0] == (7, 7)
    assert model.pe_chain.last_norm_pe.normalized_shape == (768,)
    dims = [model.pe_chain.norm_for(i).normalized_shape[0] for i in range(12)]
    assert dims == [96] * 2 + [192] * 2 + [384] * 6 + [768] * 2


@pytest.mark.parametrize("method", ["pvg", "mpvg", "pvg_cls"])
def test_layer_0_is_included(method: str) -> None:
    model = _small(method)
    assert model.pe_method.layerwise_from == 1  # what was asked ...
    assert model.pe_method_effective.layerwise_from == 0  # ... what Swin runs (paper)
    assert list(model.pe_chain.pe_norms) == [str(i) for i in range(12)]


def test_default_window_rule() -> None:
    assert [default_window_size(s) for s in (224, 64, 32, 16)] == [7, 4, 2, 1]
    model = _small("default")
    assert [blk.window_size for blk in model.layers[0].blocks] == [(2, 2), (2, 2)]
    assert model.layers[0].blocks[1].shift_size == (1, 1)
    explicit = _small("default", window_size=4)
    assert explicit.layers[0].blocks[0].window_size == (4, 4)


def test_chain_crosses_stages_through_patch_merging() -> None:
    model = _small({"base": "mpvg", "hierarchical": True}).eval()
    randomize_pe_norms(model)
    with torch.no_grad():
        pe = model.pe_chain.compute(model.pe_pos0(), model.pe_transform())
        pos0 = model.absolute_pos_embed.view(1, 8, 8, WIDTH)
        p0 = model.pe_chain.pe_norms["0"](pos0)
        p1 = model.pe_chain.pe_norms["1"](p0)
        p2 = model.pe_chain.pe_norms["2"](model.layers[1].downsample(p1))  # same PatchMerging as x
        torch.testing.assert_close(pe.blocks[0], p0)
        torch.testing.assert_close(pe.blocks[1], p1)
        torch.testing.assert_close(pe.blocks[2], p2)
        merged = pos0
        for stage in model.layers[1:]:
            merged = stage.downsample(merged)
        assert merged.shape == (1, 1, 1, 8 * WIDTH)
        torch.testing.assert_close(pe.last, model.pe_chain.last_norm_pe(merged))  # LN''(pos_0 merged x3)


def test_pe_is_shifted_and_partitioned_like_the_tokens() -> None:
    model = _small("pvg").eval()
    randomize_pe_norms(model)
    blk = model.layers[0].blocks[1]  # shifted-window block
    assert any(blk.shift_size)
    seen: list[Tensor] = []
    blk.attn.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    tokens: list[Tensor] = []
    blk.register_forward_pre_hook(lambda m, a: tokens.append(a[0]))
    with torch.no_grad():
        model(_input())
        pe = model.pe_chain.compute(model.pe_pos0(), model.pe_transform()).blocks[1]
        h = blk.norm1(tokens[0]) + pe
        shifted = torch.roll(h, shifts=(-blk.shift_size[0], -blk.shift_size[1]), dims=(1, 2))
        expected = window_partition(shifted, blk.window_size).reshape(-1, blk.window_area, WIDTH)
    torch.testing.assert_close(seen[0], expected)


def test_lape_adds_nothing_to_the_input_and_default_does() -> None:
    x = _input()
    for method, added in (("lape", False), ("default", True), ("pvg", True)):
        model = _small(method).eval()
        seen: list[Tensor] = []
        model.layers[0].blocks[0].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
        with torch.no_grad():
            model(x)
            patches = model.patch_embed(x)
        expected = patches + model.pe_pos0() if added else patches
        torch.testing.assert_close(seen[0], expected, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["default", "lape", "mpvg"])
def test_pool_is_always_gap_after_the_last_ln(method: str) -> None:
    model = _small(method).eval()
    randomize_pe_norms(model)
    x = _input()
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 1, 1, 8 * WIDTH)  # NHWC tokens, no class token anywhere
        torch.testing.assert_close(model(x), model.head.fc(feats.mean(dim=(1, 2))))


def test_mpvg_minus_pvg_is_the_same_for_every_sample() -> None:
    # img 64: a 2x2 last stage, so the Last-LN term is a mean over 4 tokens
    pvg = _small("pvg", img_size=64).eval()
    mpvg = _small("mpvg", seed=5, img_size=64).eval()
    share_pvg_weights(pvg, mpvg)
    x = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    assert_mpvg_minus_pvg_is_input_free(pvg, mpvg, x)
    with torch.no_grad():
        torch.testing.assert_close(fold_last_ln_pe(mpvg)(x), mpvg(x), rtol=0, atol=1e-5)


def _fwd_bwd(method: Any) -> None:
    model = _small(method).train()
    assert_trains(model, _input(), model.absolute_pos_embed)


@pytest.mark.parametrize("method", PRESET_NAMES)
def test_forward_backward_every_preset(method: str) -> None:
    _fwd_bwd(method)


@pytest.mark.parametrize(
    "method", [{"base": "mpvg", "hierarchical": False}, {"base": "mpvg", "last_ln_pe": 5}]
)
def test_forward_backward_ablations(method: Any) -> None:
    _fwd_bwd(method)


def test_no_weight_decay() -> None:
    model = _small("mpvg")
    nwd = model.no_weight_decay()
    pe_names = {n for n, _ in model.named_parameters() if n.startswith("pe_chain.")}
    assert len(pe_names) == 2 * 12 + 2 and pe_names <= nwd
    assert "absolute_pos_embed" in nwd
    assert sum("relative_position_bias_table" in n for n in nwd) == 12
    names = {n for n, _ in model.named_parameters()}
    assert nwd <= names


def test_timm_create_model() -> None:
    model = timm.create_model("mpvg_swin_tiny_patch4_window7_224", pe_method="mpvg", img_size=32, num_classes=7)
    assert isinstance(model, MPVGSwinTransformer)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    assert isinstance(model.pe_chain.pe_norms["0"], nn.LayerNorm) and model.pe_chain.pe_norms["0"].eps == 1e-5
    with pytest.raises(ValueError, match="global_pool"):
        timm.create_model("mpvg_swin_tiny_patch4_window7_224", pe_method="pvg", global_pool="max")
