"""T2T-ViT-7 with every method: counts (1000 / 100 classes), T2T module, fixed sinusoidal PE."""

from __future__ import annotations

from typing import Any

import pytest
import timm
import torch
from torch import Tensor

import mpvgbench.models as M
from mpvgbench.models.t2t import MPVGT2TViT, T2TModule, sinusoid_table

from .conftest import (
    PRESET_NAMES,
    assert_mpvg_minus_pvg_is_input_free,
    assert_trains,
    count_params_of,
    randomize_pe_norms,
    share_pvg_weights,
)

IMG = 32  # soft splits: 32 -> 8 -> 4 -> 2x2 tokens


def _small(method: Any, seed: int = 0, **kw: Any) -> MPVGT2TViT:
    torch.manual_seed(seed)
    model = M.build_model("t2t_vit_7", method, num_classes=10, img_size=IMG, **kw)
    assert isinstance(model, MPVGT2TViT)
    return model


def _input(batch: int = 2, seed: int = 1) -> Tensor:
    return torch.randn(batch, 3, IMG, IMG, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "num_classes,method,expected",
    [
        (1000, "default", 4_310_222), (1000, "lape", 4_313_806), (1000, "pvg", 4_312_782), (1000, "mpvg", 4_313_294),
        (100, "default", 4_078_922), (100, "lape", 4_082_506), (100, "pvg", 4_081_482), (100, "mpvg", 4_081_994),
    ],
)
def test_parameter_counts(num_classes: int, method: str, expected: int) -> None:
    assert count_params_of("t2t_vit_7", method, num_classes=num_classes) == expected


def test_t2t_module_geometry() -> None:
    with torch.device("meta"):
        t2t = T2TModule(img_size=224, embed_dim=256)
    assert t2t.grids == [(56, 56), (28, 28), (14, 14)] and t2t.num_patches == 196
    assert t2t.attention1.w.shape == (32, 64) and not t2t.attention1.w.requires_grad
    assert t2t.attention2.kqv.in_features == 576 and t2t.project.in_features == 576


@pytest.mark.parametrize("method,rows", [("default", 5), ("lape", 5), ("pvg", 4), ("mpvg", 4)])
def test_fixed_sinusoidal_pe(method: str, rows: int) -> None:
    model = _small(method)
    assert model.pos_embed.shape == (1, rows, 256) and not model.pos_embed.requires_grad
    torch.testing.assert_close(model.pos_embed.detach(), sinusoid_table(rows, 256), rtol=0, atol=0)
    assert (model.cls_token is not None) == (method in ("default", "lape"))


def test_sinusoid_table_formula() -> None:
    # position 2, dim 4: angles 2 / 10000^(2*(j//2)/4) = (2, 2, 0.02, 0.02); sin on even j, cos on odd
    row = sinusoid_table(3, 4)[0, 2]
    expected = torch.tensor([2.0, 2.0, 0.02, 0.02])
    torch.testing.assert_close(row[0::2], expected[0::2].sin())
    torch.testing.assert_close(row[1::2], expected[1::2].cos())


def test_gap_is_last_ln_per_token_then_mean_then_head() -> None:
    model = _small("mpvg").eval()
    randomize_pe_norms(model)
    x = _input()
    with torch.no_grad():
        tokens = model.patch_embed(x) + model.pos_embed
        pe = model.pe_chain.compute(model.pos_embed)
        for blk, p in zip(model.blocks, pe.blocks):
            tokens = blk(tokens, p)
        pooled = (model.norm(tokens) + pe.last).mean(dim=1)
        torch.testing.assert_close(model(x), model.head(pooled))


def test_mpvg_minus_pvg_is_the_same_for_every_sample() -> None:
    pvg = _small("pvg").eval()
    mpvg = _small("mpvg", seed=5).eval()
    share_pvg_weights(pvg, mpvg)
    x = _input(batch=6)
    assert_mpvg_minus_pvg_is_input_free(pvg, mpvg, x)


def _fwd_bwd(method: Any) -> None:
    model = _small(method).train()
    assert_trains(model, _input(), None)  # fixed sinusoidal PE: no gradient
    assert model.pos_embed.grad is None


@pytest.mark.parametrize("method", PRESET_NAMES)
def test_forward_backward_every_preset(method: str) -> None:
    _fwd_bwd(method)


def test_performer_is_float32_under_autocast() -> None:
    model = _small("mpvg").eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(_input())
    assert torch.isfinite(out).all()


def test_no_weight_decay_and_norms() -> None:
    model = _small("mpvg")
    pe_names = {n for n, _ in model.named_parameters() if n.startswith("pe_chain.")}
    assert len(pe_names) == 2 * 6 + 2
    assert model.no_weight_decay() == {"pos_embed"} | pe_names
    assert "cls_token" in _small("lape").no_weight_decay()
    assert model.norm.eps == 1e-5 and model.pe_chain.pe_norms["1"].eps == 1e-5
    assert model.blocks[0].attn.qkv.bias is None


def test_timm_create_model() -> None:
    model = timm.create_model("mpvg_t2t_vit_7", pe_method="pvg", img_size=IMG, num_classes=7)
    assert isinstance(model, MPVGT2TViT)
    assert model(_input(batch=1)).shape == (1, 7)
