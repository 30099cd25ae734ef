"""ViT-Lite-7/4: the Compact-Transformers architecture, details checked one by one."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from mpvgbench.models.vit_lite import CCTBlock


@pytest.fixture(scope="module")
def lite() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("mpvg_vit_lite_7_4_32", pe_method="default")


def test_architecture(lite: nn.Module) -> None:
    conv = lite.patch_embed.proj
    assert (conv.kernel_size, conv.stride, conv.bias is not None) == ((4, 4), (4, 4), True)
    assert lite.patch_embed.num_patches == 64 and lite.pos_embed.shape == (1, 65, 256)
    assert lite.num_classes == 100 and lite.head.in_features == 256
    assert len(lite.blocks) == 7 and all(isinstance(b, CCTBlock) for b in lite.blocks)
    blk = lite.blocks[0]
    assert blk.attn.num_heads == 4 and blk.attn.qkv.bias is None and blk.attn.proj.bias is not None
    assert blk.attn.attn_drop.p == pytest.approx(0.1)
    assert blk.mlp.fc1.out_features == 512
    assert isinstance(lite.blocks[0].drop_path1, nn.Identity)  # linspace(0, 0.1, 7)
    assert lite.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert type(lite.norm) is nn.LayerNorm and lite.norm.eps == 1e-5


def test_init(lite: nn.Module) -> None:
    assert torch.count_nonzero(lite.cls_token) == 0
    assert lite.pos_embed.std().item() == pytest.approx(0.2, rel=0.05)
    assert lite.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.1)
    # kaiming normal, fan_in = 3*4*4: std = sqrt(2 / 48)
    assert lite.patch_embed.proj.weight.std().item() == pytest.approx((2 / 48) ** 0.5, rel=0.1)


def test_cct_block_ordering(lite: nn.Module) -> None:
    blk = lite.blocks[2].eval()
    x, pe = torch.randn(2, 65, 256), torch.randn(1, 65, 256)
    with torch.no_grad():
        h = x + blk.attn(blk.norm1(x) + pe)
        h = blk.norm2(h)  # CCT normalises the residual stream itself before the MLP
        torch.testing.assert_close(blk(x, pe), h + blk.mlp(h))


def test_pvg_has_no_class_token_and_64_pe_rows() -> None:
    model = timm.create_model("mpvg_vit_lite_7_4_32", pe_method="mpvg")
    assert model.cls_token is None and model.pos_embed.shape == (1, 64, 256)
    assert model.pe_chain.last_norm_pe.eps == 1e-5 and list(model.pe_chain.pe_norms) == list("123456")
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
