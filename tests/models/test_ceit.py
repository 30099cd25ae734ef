"""CeiT-Ti with every method: counts, I2T / LeFF / LCA, class token kept, GAP over patches."""

from __future__ import annotations

from typing import Any

import pytest
import timm
import torch
from torch import Tensor

import mpvgbench.models as M
from mpvgbench.models.ceit import LeFF, MPVGCeiT
from mpvgbench.models.pe import fold_last_ln_pe

from .conftest import (
    PRESET_NAMES,
    assert_mpvg_minus_pvg_is_input_free,
    assert_trains,
    count_params_of,
    randomize_pe_norms,
    share_pvg_weights,
)

IMG = 32  # I2T: 32 -> 16 -> 8 -> 2x2 patch tokens (+ class token)
LCA_PARAMS = ("lca.", "pos_layer_embed")


def _small(method: Any, seed: int = 0, **kw: Any) -> MPVGCeiT:
    torch.manual_seed(seed)
    model = M.build_model("ceit_tiny", method, num_classes=10, img_size=kw.pop("img_size", IMG), **kw)
    assert isinstance(model, MPVGCeiT)
    return model


def _input(batch: int = 2, seed: int = 1, size: int = IMG) -> Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "method,expected", [("default", 6_356_904), ("lape", 6_361_512), ("pvg", 6_361_128), ("mpvg", 6_361_512)]
)
def test_parameter_counts(method: str, expected: int) -> None:
    assert count_params_of("ceit_tiny", method) == expected


@pytest.mark.parametrize("method", ["default", "lape", "pvg", "mpvg", "gap"])
def test_class_token_pe_row_and_lca_are_kept(method: str) -> None:
    with torch.device("meta"):
        model = M.build_model("ceit_tiny", method)
    assert model.patch_embed.num_patches == 196
    assert model.cls_token.shape == (1, 1, 192) and model.pos_embed.shape == (1, 197, 192)
    assert model.pos_layer_embed.shape == (1, 12, 192)
    assert model.global_pool == ("token" if method in ("default", "lape") else "avg")


def test_leff_passes_the_class_token_through() -> None:
    torch.manual_seed(0)
    leff = LeFF(8, 32, grid_size=(3, 3), num_prefix_tokens=1).eval()
    x = torch.randn(2, 10, 8)
    out = leff(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out[:, 0], x[:, 0], rtol=0, atol=0)
    # patch tokens are mixed spatially: changing one patch changes its neighbours' outputs
    y = x.clone()
    y[:, 5] += 1.0  # centre of the 3x3 grid
    assert not torch.allclose(leff(y)[:, 1:], out[:, 1:])


def test_token_pool_reads_the_lca_output() -> None:
    model = _small("default").eval()
    x = _input()
    cls_tokens: list[Tensor] = []
    for blk in model.blocks:
        blk.register_forward_hook(lambda m, a, out: cls_tokens.append(out[:, 0]))
    with torch.no_grad():
        logits = model(x)
        layers = torch.stack(cls_tokens, dim=1) + model.pos_layer_embed
        h = model.lca.norm1(layers)
        last = layers[:, -1:] + model.lca.attn(h)[:, -1:]  # full attention, last token kept
        last = last + model.lca.mlp(model.lca.norm2(last))
        torch.testing.assert_close(logits, model.head(model.norm(last)[:, 0]))


def test_gap_is_last_ln_on_patch_tokens_then_mean_then_head() -> None:
    model = _small("mpvg").eval()
    randomize_pe_norms(model)
    x = _input()
    with torch.no_grad():
        tokens = torch.cat([model.cls_token.expand(2, -1, -1), model.patch_embed(x)], dim=1) + model.pos_embed
        pe = model.pe_chain.compute(model.pos_embed)
        assert pe.blocks[0] is None and pe.blocks[1].shape == (1, 5, 192)  # class-token row included
        for blk, p in zip(model.blocks, pe.blocks):
            tokens = blk(tokens, p)
        last = model.pe_chain.last_norm_pe(model.pos_embed)[:, 1:]  # LN''(pos_0), patch rows
        torch.testing.assert_close(pe.last, last)
        pooled = (model.norm(tokens[:, 1:]) + last).mean(dim=1)
        torch.testing.assert_close(model(x), model.head(pooled))


def test_mpvg_minus_pvg_is_the_same_for_every_sample() -> None:
    pvg = _small("pvg")
    pvg.train()
    with torch.no_grad():
        pvg(_input(batch=4, seed=9))  # non-trivial BN running statistics
    pvg.eval()
    mpvg = _small("mpvg", seed=5).eval()
    share_pvg_weights(pvg, mpvg)
    x = _input(batch=6)
    assert_mpvg_minus_pvg_is_input_free(pvg, mpvg, x)
    with torch.no_grad():
        # the fold averages patch rows only, as GAP does (the class-token row is left out)
        torch.testing.assert_close(fold_last_ln_pe(mpvg)(x), mpvg(x), rtol=0, atol=1e-5)


def _fwd_bwd(method: Any) -> None:
    model = _small(method).train()
    assert_trains(model, _input(), model.pos_embed)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    if model.global_pool == "token":
        assert not frozen
    else:  # GAP over patch tokens: the LCA is kept (counts) but unused, hence frozen
        assert frozen and all(n.startswith(LCA_PARAMS) for n in frozen)


@pytest.mark.parametrize("method", PRESET_NAMES)
def test_forward_backward_every_preset(method: str) -> None:
    _fwd_bwd(method)


def test_no_weight_decay() -> None:
    model = _small("mpvg")
    nwd = model.no_weight_decay()
    pe_names = {n for n, _ in model.named_parameters() if n.startswith("pe_chain.")}
    assert len(pe_names) == 2 * 11 + 2
    assert nwd == {"pos_embed", "cls_token", "pos_layer_embed"} | pe_names


def test_timm_create_model() -> None:
    model = timm.create_model("mpvg_ceit_tiny_patch16_224", pe_method="pvg", img_size=IMG, num_classes=7)
    assert isinstance(model, MPVGCeiT)
    assert model(_input(batch=1)).shape == (1, 7)
    assert model.norm.eps == 1e-6 and model.pe_chain.pe_norms["1"].eps == 1e-6
