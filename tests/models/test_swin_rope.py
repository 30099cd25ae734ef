"""RoPE on Swin (RoPE-ViT's RoPE-Swin): window rotary against an independent transcription of the
original code, the parameter count from the original construction, what stays refused.

Transcribed (by reading, not copying) from naver-ai/rope-vit ``SwinTransformer/models/
swin_transformer_rope.py`` (``init_t_xy``, ``init_random_2d_freqs``, ``compute_cis``,
``apply_rotary_emb``, ``RoPEWindowAttention.forward``) and its ``configs/swinrope/*tiny*.yaml``
(axial: THETA 50, MIXED False, RPB False; mixed: THETA 10, MIXED True, RPB False).
"""

from __future__ import annotations

import math

import pytest
import torch
from timm.layers import apply_rot_embed_cat

import mpvgbench.models as M
from mpvgbench.errors import MethodError
from mpvgbench.models.swin import PESwinBlock

SWIN_T_DEPTHS, SWIN_T_HEADS, SWIN_T_DIM = (2, 2, 6, 2), (3, 6, 12, 24), 96


# --- the original code, transcribed -------------------------------------------------------------
def original_t_xy(end_x: int, end_y: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.arange(end_x * end_y, dtype=torch.float32)
    return t % end_x, torch.div(t, end_x, rounding_mode="floor")


def original_freqs(head_dim: int, angles: torch.Tensor, theta: float) -> torch.Tensor:
    """``init_random_2d_freqs`` with the per-head angles given (``rotate=False``: zeros)."""
    mag = 1 / (theta ** (torch.arange(0, head_dim, 4)[: head_dim // 4].float() / head_dim))
    fx = [torch.cat([mag * torch.cos(a), mag * torch.cos(torch.pi / 2 + a)]) for a in angles]
    fy = [torch.cat([mag * torch.sin(a), mag * torch.sin(torch.pi / 2 + a)]) for a in angles]
    return torch.stack([torch.stack(fx), torch.stack(fy)])


def original_cis(freqs: torch.Tensor, t_x: torch.Tensor, t_y: torch.Tensor) -> torch.Tensor:
    angle_x = t_x.unsqueeze(-1) @ freqs[0].unsqueeze(-2)
    angle_y = t_y.unsqueeze(-1) @ freqs[1].unsqueeze(-2)
    return torch.polar(torch.ones_like(angle_x), angle_x + angle_y)  # (heads, N, head_dim / 2)


def original_rotate(x: torch.Tensor, cis: torch.Tensor) -> torch.Tensor:
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * cis.view(1, *cis.shape)).flatten(3)


def original_window_attention(attn: torch.nn.Module, x: torch.Tensor, cis: torch.Tensor,
                              mask: torch.Tensor | None) -> torch.Tensor:
    """``RoPEWindowAttention.forward`` with ``use_rpb=False``."""
    B_, N, C = x.shape
    qkv = attn.qkv(x).reshape(B_, N, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * attn.scale, qkv[1], qkv[2]
    q, k = original_rotate(q, cis), original_rotate(k, cis)
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        nW = mask.shape[0]
        scores = scores.view(B_ // nW, nW, attn.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
        scores = scores.view(-1, attn.num_heads, N, N)
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B_, N, C)
    return attn.proj(out)


# --- tests -------------------------------------------------------------------------------------
def _blocks(model: torch.nn.Module) -> list[PESwinBlock]:
    return [blk for stage in model.layers for blk in stage.blocks]


def _angles(freqs: torch.Tensor) -> torch.Tensor:
    """The per-head angle a mixed frequency parameter was drawn with (fx = mag cos a, fy = mag sin a)."""
    return torch.atan2(freqs[1, :, 0], freqs[0, :, 0]).unsqueeze(-1)


@pytest.mark.parametrize("method", ["rope_axial", "rope_mixed"])
def test_window_rotary_matches_the_original_code(method: str) -> None:
    torch.manual_seed(0)
    model = M.build_model("swin_tiny", method, num_classes=10, img_size=64).eval()  # window 4, shifted
    tables = model.pe_encoding.rotary()
    checked = 0
    for i, blk in enumerate(_blocks(model)):
        head_dim = blk.dim // blk.attn.num_heads
        if method == "rope_mixed":
            freqs = model.pe_encoding.freqs[i].detach()
            angles, theta = _angles(freqs), 10.0
            # the parameter is the original's init for these angles, not just any frequencies
            assert torch.allclose(freqs, original_freqs(head_dim, angles, theta), atol=1e-6)
        else:
            angles, theta = torch.zeros(blk.attn.num_heads, 1), 50.0
        t_xy = original_t_xy(end_x=blk.window_size[1], end_y=blk.window_size[0])
        cis = original_cis(original_freqs(head_dim, angles, theta), *t_xy)
        q = torch.randn(2, blk.attn.num_heads, blk.window_area, head_dim)
        assert (apply_rot_embed_cat(q, tables[i]) - original_rotate(q, cis)).abs().max() <= 1e-5
        mask = blk.attn_mask  # the shifted blocks' (nW, N, N) mask, else None
        windows = torch.randn(2 * (mask.shape[0] if mask is not None else 4), blk.window_area, blk.dim)
        with torch.no_grad():
            ours = blk.attn(windows, mask=mask, rope=tables[i])
            theirs = original_window_attention(blk.attn, windows, cis, mask)
        assert (ours - theirs).abs().max() <= 1e-5
        checked += mask is not None
    assert checked >= 2  # shifted windows (with the original's mask) were among those compared


def test_rotary_path_partitions_and_shifts_like_timm() -> None:
    torch.manual_seed(0)
    model = M.build_model("swin_tiny", "default", num_classes=10, img_size=64).eval()
    blk = _blocks(model)[1]  # a shifted block
    assert any(blk.shift_size)
    head_dim = blk.dim // blk.attn.num_heads
    identity = torch.cat([torch.zeros(blk.window_area, head_dim), torch.ones(blk.window_area, head_dim)], -1)
    x = torch.randn(2, *blk.input_resolution, blk.dim)
    with torch.no_grad():  # a rotation by 0 must give timm's own shifted-window attention
        assert torch.allclose(blk._rotary_attn(x, identity), blk._attn(x), atol=1e-5)


def _count(method: str) -> int:
    return sum(p.numel() for p in M.build_model("swin_tiny", method).parameters())


def test_parameter_counts_follow_the_original_construction() -> None:
    heads_per_block = [h for d, h in zip(SWIN_T_DEPTHS, SWIN_T_HEADS) for _ in range(d)]
    dims_per_block = [SWIN_T_DIM * 2**s for s, d in enumerate(SWIN_T_DEPTHS) for _ in range(d)]
    ape = (224 // 4) ** 2 * SWIN_T_DIM  # ape=False in RoPE-Swin
    rpb = sum((2 * 7 - 1) ** 2 * h for h in heads_per_block)  # use_rpb=False: every table goes
    # mixed: rope_freqs (2, heads, head_dim / 2) per block = that block's dim
    freqs = sum(2 * h * (dim // h // 2) for h, dim in zip(heads_per_block, dims_per_block))
    default = _count("default")
    assert default == 28_589_410  # as pinned in test_swin.py
    assert (ape, rpb, freqs) == (301_056, 23_322, 4_416)
    assert _count("rope_axial") == default - ape - rpb == 28_265_032
    assert _count("rope_mixed") == default - ape - rpb + freqs == 28_269_448


def test_rope_swin_has_neither_ape_nor_relative_position_bias() -> None:
    for method in ("rope_axial", "rope_mixed"):
        model = M.build_model("swin_tiny", method, num_classes=10, img_size=32)
        names = set(model.state_dict())
        assert model.absolute_pos_embed is None
        assert not any("relative_position" in n or "absolute_pos_embed" in n for n in names)
    kept = M.build_model("swin_tiny", "mpvg", num_classes=10, img_size=32)
    assert any("relative_position_bias_table" in n for n in kept.state_dict())


def test_mixed_frequencies_are_learned_without_weight_decay() -> None:
    # 64 px: the last stage's window is 2 x 2 (at 32 px it is one token, where rotation is moot)
    # no stochastic depth: a dropped block would get no gradient by chance
    model = M.build_model("swin_tiny", "rope_mixed", num_classes=10, img_size=64, drop_path_rate=0.0)
    model(torch.randn(2, 3, 64, 64)).square().mean().backward()
    freqs = list(model.pe_encoding.freqs)
    assert len(freqs) == sum(SWIN_T_DEPTHS) and all(f.grad is not None and f.grad.abs().sum() > 0 for f in freqs)
    assert {f"pe_encoding.freqs.{i}" for i in range(len(freqs))} <= model.no_weight_decay()
    shapes = [tuple(f.shape) for f in freqs][::2]  # one per block: (2, its stage's heads, head_dim / 2)
    assert shapes == [(2, 3, 16), (2, 6, 16), (2, 12, 16), (2, 12, 16), (2, 12, 16), (2, 24, 16)]


def test_rope_with_the_apes_knobs_keeps_the_ape() -> None:
    model = M.build_model("swin_tiny", {"base": "rope_axial", "add_to_input": True}, num_classes=10, img_size=32)
    assert model.absolute_pos_embed is not None
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("method", ["sincos2d", "peg", "peg_gap"])
def test_methods_not_defined_for_swin_stay_refused(method: str) -> None:
    with pytest.raises(MethodError, match=r"is not defined for .*runs on: deit, vit_lite, micro$"):
        M.build_model("swin_tiny", method)


def test_rotation_depends_only_on_relative_window_position() -> None:
    """RoPE's point: q_m . k_n after rotation depends on (m - n) within the window."""
    model = M.build_model("swin_tiny", "rope_mixed", num_classes=10, img_size=64)
    table = model.pe_encoding.rotary()[0].detach()  # window 4 x 4, 3 heads
    q, k = torch.randn(1, 3, 1, 32).expand(1, 3, 16, 32), torch.randn(1, 3, 1, 32).expand(1, 3, 16, 32)
    scores = apply_rot_embed_cat(q, table) @ apply_rot_embed_cat(k, table).transpose(-2, -1)
    # tokens (0,0)-(1,1) and (2,2)-(3,3) in a 4-wide window: the same offset, the same score
    assert torch.allclose(scores[..., 0, 5], scores[..., 10, 15], atol=1e-5)
    assert not math.isclose(float(scores[0, 0, 0, 5]), float(scores[0, 0, 0, 6]), abs_tol=1e-4)
