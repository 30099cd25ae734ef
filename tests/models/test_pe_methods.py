"""The methods beyond the paper: equations against independent transcriptions of the original
code, parameter counts from the original models' construction, refusals, keys and labels.

Transcribed (by reading, not copying) from:
- MAE ``util/pos_embed.py`` ``get_2d_sincos_pos_embed`` (facebookresearch/mae);
- RoPE-ViT ``models/vit_rope.py`` ``init_t_xy``, ``compute_axial_cis``, ``compute_mixed_cis``,
  ``apply_rotary_emb`` and ``RoPEAttention`` (naver-ai/rope-vit, arXiv 2403.13298);
- CPVT's PEG as ``PosCNN`` in the authors' Twins code (Meituan-AutoML/Twins ``gvt.py``; CPVT's
  own repository publishes no code): ``proj(cnn_feat) + cnn_feat`` with a depthwise 3x3 conv.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import mpvgbench.models as M
from mpvgbench.config import TrainConfig
from mpvgbench.errors import MethodError
from mpvgbench.methods import PRESETS, resolve_method
from mpvgbench.models.pe_methods import sincos2d_table

NEW = ("sincos2d", "rope_axial", "rope_mixed", "peg", "peg_gap")


def mae_sincos(dim: int, grid: int) -> np.ndarray:
    def one_axis(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    w, h = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))
    return np.concatenate([one_axis(dim // 2, w), one_axis(dim // 2, h)], axis=1)


def ropevit_t_xy(end_x: int, end_y: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.arange(end_x * end_y, dtype=torch.float32)
    return t % end_x, torch.div(t, end_x, rounding_mode="floor")


def ropevit_axial_cis(dim: int, end_x: int, end_y: int, theta: float) -> torch.Tensor:
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 4)[: dim // 4].float() / dim))
    t_x, t_y = ropevit_t_xy(end_x, end_y)
    fx, fy = torch.outer(t_x, freqs), torch.outer(t_y, freqs)
    return torch.cat([torch.polar(torch.ones_like(fx), fx), torch.polar(torch.ones_like(fy), fy)], dim=-1)


def ropevit_rotate(x: torch.Tensor, cis: torch.Tensor) -> torch.Tensor:
    z = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(z * cis).flatten(-2)


def test_sincos2d_is_maes_table_with_a_zero_class_row() -> None:
    torch.testing.assert_close(sincos2d_table((14, 14), 192), torch.from_numpy(mae_sincos(192, 14)).float(),
                               atol=1e-5, rtol=0)
    model = M.build_model("deit_tiny", "sincos2d")
    assert not model.pos_embed.requires_grad and model.pos_embed[0, 0].abs().sum() == 0
    torch.testing.assert_close(model.pos_embed[0, 1:], sincos2d_table((14, 14), 192))
    lite = M.build_model("vit_lite_7_4", {"base": "sincos2d", "pool": "avg"}, num_classes=100)
    torch.testing.assert_close(lite.pos_embed[0], sincos2d_table((8, 8), 256))  # after CCT's re-init


def test_rope_axial_rotates_patch_q_k_as_ropevit() -> None:
    model = M.build_model("vit_micro", "rope_axial", num_classes=10)  # 4x4 grid, head dim 16
    table = model.pe_encoding.rotary()[0]
    q = torch.randn(2, 4, 16, 16)
    from timm.layers import apply_rot_embed_cat

    expected = ropevit_rotate(q, ropevit_axial_cis(16, 4, 4, theta=100.0))
    torch.testing.assert_close(apply_rot_embed_cat(q, table), expected, atol=1e-5, rtol=1e-5)


def test_rope_mixed_tables_are_ropevits_compute_mixed_cis() -> None:
    model = M.build_model("vit_micro", "rope_mixed", num_classes=10)
    freqs = model.pe_encoding.rope.freqs  # (2, depth, heads, head_dim / 2)
    depth, heads = freqs.shape[1], freqs.shape[2]
    t_x, t_y = ropevit_t_xy(4, 4)
    flat = freqs.detach().reshape(2, depth, -1)  # RoPE-ViT's layout: (2, depth, heads * head_dim / 2)
    fx = (t_x.unsqueeze(-1) @ flat[0].unsqueeze(-2)).view(depth, 16, heads, -1).permute(0, 2, 1, 3)
    fy = (t_y.unsqueeze(-1) @ flat[1].unsqueeze(-2)).view(depth, 16, heads, -1).permute(0, 2, 1, 3)
    cis = torch.polar(torch.ones_like(fx), fx + fy)  # (depth, heads, N, head_dim / 2)
    from timm.layers import apply_rot_embed_cat

    q = torch.randn(2, heads, 16, 16)
    for block, table in enumerate(model.pe_encoding.rotary()):
        torch.testing.assert_close(apply_rot_embed_cat(q, table), ropevit_rotate(q, cis[block]), atol=1e-5, rtol=1e-5)


def test_rope_leaves_the_class_token_unrotated_and_attention_as_ropevit() -> None:
    model = M.build_model("vit_micro", "rope_axial", num_classes=10).eval()
    attn, table = model.blocks[0].attn, model.pe_encoding.rotary()[0]
    x = torch.randn(2, 17, 64)
    from mpvgbench.models.pe import rotary_attention

    qkv = attn.qkv(x).reshape(2, 17, 3, 4, 16).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0].clone(), qkv[1].clone(), qkv[2]
    cis = ropevit_axial_cis(16, 4, 4, theta=100.0)
    q[:, :, 1:], k[:, :, 1:] = ropevit_rotate(q[:, :, 1:], cis), ropevit_rotate(k[:, :, 1:], cis)
    weights = ((q * 16 ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 17, 64))
    torch.testing.assert_close(rotary_attention(attn, x, table), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["peg", "peg_gap"])
def test_peg_is_cpvts_poscnn_after_block_0(method: str) -> None:
    model = M.build_model("vit_micro", method, num_classes=10).eval()
    conv = model.pe_encoding.proj
    assert (conv.groups, conv.kernel_size, conv.padding, conv.bias is not None) == (64, (3, 3), (1, 1), True)
    prefix = model.num_prefix_tokens
    x = torch.randn(2, prefix + 16, 64)
    feat = x[:, prefix:].transpose(1, 2).reshape(2, 64, 4, 4)
    expected = torch.cat([x[:, :prefix], (conv(feat) + feat).flatten(2).transpose(1, 2)], dim=1)
    torch.testing.assert_close(model.pe_after_block(0, x), expected)
    assert model.pe_after_block(1, x) is x  # only after the first block


def test_parameter_counts_follow_the_original_models() -> None:
    """RoPE-ViT: no APE (``use_ape=False``), mixed adds ``freqs`` (2, depth, heads * head_dim / 2);
    CPVT: no APE, a depthwise 3x3 conv with bias; GAP drops the class token; sin-cos keeps a frozen
    (counted) pos_0 as MAE. Neither paper prints the counts of these exact models."""
    def count(name: str, method: str, classes: int = 1000) -> int:
        with torch.device("meta"):  # shapes only: no memory, no init work (DeiT-B six times)
            return sum(p.numel() for p in M.build_model(name, method, num_classes=classes).parameters())

    for name, dim, classes in (("deit_tiny", 192, 1000), ("deit_small", 384, 1000), ("deit_base", 768, 1000),
                               ("vit_lite_7_4", 256, 100)):
        default = count(name, "default", classes)
        depth = M.model_depth(name)
        rows = {"deit_tiny": 197, "deit_small": 197, "deit_base": 197, "vit_lite_7_4": 65}[name]
        no_ape = default - rows * dim
        assert count(name, "sincos2d", classes) == default
        assert count(name, "rope_axial", classes) == no_ape
        assert count(name, "rope_mixed", classes) == no_ape + 2 * depth * (dim // 2)
        assert count(name, "peg", classes) == no_ape + dim * 9 + dim
        assert count(name, "peg_gap", classes) == no_ape + dim * 9 + dim - dim
    assert count("deit_tiny", "rope_axial") == 5_679_592


@pytest.mark.parametrize("name,method", [(name, method) for name in ("swin_tiny", "ceit_tiny", "t2t_vit_7")
                                         for method in NEW if not (name == "swin_tiny" and method.startswith("rope"))])
def test_families_the_papers_do_not_define_are_refused_in_one_line(name: str, method: str) -> None:
    # RoPE-ViT defines RoPE for Swin (tests/models/test_swin_rope.py); nothing else here is defined
    with pytest.raises(MethodError, match=rf"'{PRESETS[method].encoding}' is not defined for .*runs on: deit"):
        M.build_model(name, method)


def test_combinations_with_the_knobs() -> None:
    rope_pvg = resolve_method({"base": "rope_mixed", "pool": "avg", "add_to_input": True, "layerwise_from": 1,
                               "last_ln_pe": 0})
    model = M.build_model("vit_micro", rope_pvg, num_classes=10)
    assert model.pos_embed is not None and len(model.pe_chain.pe_norms) == 3 and model.pe_chain.last_norm_pe is not None
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert resolve_method("peg[pool=avg]") == PRESETS["peg_gap"]
    assert resolve_method(rope_pvg.label) == rope_pvg


def test_new_methods_enter_the_key_and_round_trip() -> None:
    keys = set()
    for method in ("default", *NEW):
        config = TrainConfig(model="vit_micro", method=method, dataset="digits", img_size=8, num_classes=10)
        again = TrainConfig.model_validate_json(config.model_dump_json())
        assert again == config and again.key() == config.key()
        keys.add(config.key())
    assert len(keys) == 1 + len(NEW)
    dumped = TrainConfig(model="vit_micro", method="default", dataset="digits", img_size=8,
                         num_classes=10).model_dump(mode="json")["method"]
    assert "encoding" not in dumped and "plugin" not in dumped  # the paper's keys stay as they were


def test_rope_and_peg_parameters_get_no_weight_decay() -> None:
    for method, names in (("rope_mixed", {"pe_encoding.rope.freqs"}),
                          ("peg", {"pe_encoding.proj.weight", "pe_encoding.proj.bias"})):
        model = M.build_model("vit_micro", method, num_classes=10)
        assert names <= model.no_weight_decay() and "pos_embed" not in model.no_weight_decay()
        assert isinstance(model.pe_encoding, nn.Module)
