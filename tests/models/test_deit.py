"""DeiT with every method: structure, delivery, the MPVG invariant, training signal."""

from __future__ import annotations

from typing import Any

import pytest
import timm
import timm.optim
import torch
from torch import Tensor

import mpvgbench.models as M

from .conftest import (
    OUR_MODELS,
    PRESET_NAMES,
    assert_mpvg_minus_pvg_is_input_free,
    assert_trains,
    build_small,
    randomize_pe_norms,
    share_pvg_weights,
    small_input,
)


def _capture_attn_inputs(model: torch.nn.Module) -> list[Tensor]:
    seen: list[Tensor] = []
    for blk in model.blocks:
        blk.attn.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    return seen


@pytest.mark.parametrize(
    "method,tokens,pe_rows", [("default", 5, 5), ("lape", 5, 5), ("pvg_cls", 5, 5), ("pvg", 4, 4), ("mpvg", 4, 4)]
)
def test_class_token_and_pe_rows_follow_pool(method: str, tokens: int, pe_rows: int) -> None:
    model = build_small("deit_tiny", method)
    assert model.pos_embed.shape == (1, pe_rows, 192)
    assert (model.cls_token is not None) == (method in ("default", "lape", "pvg_cls"))
    assert model.global_pool == ("token" if model.cls_token is not None else "avg")
    assert model.forward_features(small_input("deit_tiny")).shape == (2, tokens, 192)
    assert isinstance(model.fc_norm, torch.nn.Identity) and not isinstance(model.norm, torch.nn.Identity)


def test_gap_is_last_ln_per_token_then_mean_then_head() -> None:
    model = build_small("deit_tiny", "mpvg").eval()
    randomize_pe_norms(model)
    x = small_input("deit_tiny")
    with torch.no_grad():
        tokens = model.norm_pre(model.patch_drop(model.patch_embed(x) + model.pos_embed))
        pe = model.pe_chain.compute(model.pos_embed)
        for blk, p in zip(model.blocks, pe.blocks):
            tokens = blk(tokens, p)
        pooled = (model.norm(tokens) + pe.last).mean(dim=1)
        torch.testing.assert_close(model(x), model.head(pooled))


def test_mpvg_minus_pvg_is_the_same_for_every_sample() -> None:
    pvg = build_small("deit_tiny", "pvg").eval()
    mpvg = build_small("deit_tiny", "mpvg", seed=5).eval()
    share_pvg_weights(pvg, mpvg)
    x = small_input("deit_tiny", batch=6)
    assert_mpvg_minus_pvg_is_input_free(pvg, mpvg, x)


def test_pvg_delivery_skips_block_0() -> None:
    model = build_small("deit_tiny", "pvg").eval()
    x = small_input("deit_tiny")
    seen = _capture_attn_inputs(model)
    with torch.no_grad():
        model(x)
        randomize_pe_norms(model)
        model(x)
    first, second = seen[: len(model.blocks)], seen[len(model.blocks):]
    torch.testing.assert_close(first[0], second[0], rtol=0, atol=0)  # block 0: norm1(x_0) only
    assert not torch.allclose(first[1], second[1])  # block 1: norm1(x_1) + LN'_1(pos_0)


def test_lape_adds_nothing_to_the_input_tokens() -> None:
    model = build_small("deit_tiny", "lape").eval()
    x = small_input("deit_tiny")
    seen: list[Tensor] = []
    model.blocks[0].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        model(x)
        patches = model.patch_embed(x)
        expected = torch.cat([model.cls_token.expand(2, -1, -1), patches], dim=1)
    torch.testing.assert_close(seen[0], expected, rtol=0, atol=0)
    # ... while block 0's attention gets LN'_0(pos_0) on all tokens, class token row included
    attn_in: list[Tensor] = []
    model.blocks[0].attn.register_forward_pre_hook(lambda m, a: attn_in.append(a[0]))
    with torch.no_grad():
        model(x)
        pe0 = model.pe_chain.pe_norms["0"](model.pos_embed)
        torch.testing.assert_close(attn_in[0], model.blocks[0].norm1(expected) + pe0)


def test_default_adds_pe_to_input() -> None:
    model = build_small("deit_tiny", "default").eval()
    x = small_input("deit_tiny")
    seen: list[Tensor] = []
    model.blocks[0].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        model(x)
        expected = torch.cat([model.cls_token.expand(2, -1, -1), model.patch_embed(x)], 1) + model.pos_embed
    torch.testing.assert_close(seen[0], expected)


def _fwd_bwd(name: str, method: Any) -> None:
    model = build_small(name, method).train()
    assert_trains(model, small_input(name), model.pos_embed)


@pytest.mark.parametrize("method", PRESET_NAMES)
@pytest.mark.parametrize("name", ["deit_tiny", "vit_lite_7_4", "vit_micro"])
def test_forward_backward_every_preset(name: str, method: str) -> None:
    _fwd_bwd(name, method)


@pytest.mark.parametrize("name", ["deit_small", "deit_base"])
@pytest.mark.parametrize("method", ["lape", "mpvg"])
def test_forward_backward_larger_deit(name: str, method: str) -> None:
    _fwd_bwd(name, method)


@pytest.mark.parametrize(
    "method",
    [{"base": "mpvg", "layerwise_from": 0}, {"base": "mpvg", "hierarchical": False},
     {"base": "mpvg", "add_to_input": False}, {"base": "mpvg", "last_ln_pe": 11}],
)
def test_forward_backward_ablations(method: Any) -> None:
    _fwd_bwd("deit_tiny", method)


def test_no_weight_decay_and_optimizer_groups() -> None:
    model = build_small("deit_tiny", "mpvg")
    nwd = model.no_weight_decay()
    expected = {"pos_embed"} | {n for n, _ in model.named_parameters() if n.startswith("pe_chain.")}
    assert nwd == expected and len(expected) == 1 + 2 * 11 + 2
    assert "cls_token" in build_small("deit_tiny", "lape").no_weight_decay()
    opt = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert not any(id(p) in decayed for n, p in model.named_parameters() if n in nwd)


def test_timm_create_model_and_fixed_kwargs() -> None:
    model = timm.create_model("mpvg_deit_tiny_patch16_224", pe_method="mpvg", img_size=32, num_classes=7)
    assert model.pe_method == M.build_model("deit_tiny", "mpvg").pe_method
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    assert model.norm.eps == 1e-6 and model.pe_chain.pe_norms["1"].eps == 1e-6
    with pytest.raises(ValueError, match="follow"):
        timm.create_model("mpvg_deit_tiny_patch16_224", pe_method="mpvg", class_token=True)
    with pytest.raises(ValueError, match="not supported"):
        M.build_model("deit_tiny", "pvg", img_size=32, patch_drop_rate=0.5)
    with pytest.raises(NotImplementedError, match="hooks"):
        model.forward_intermediates(torch.randn(1, 3, 32, 32))


def test_our_models_are_all_covered() -> None:
    assert set(OUR_MODELS) <= set(M.list_models())
