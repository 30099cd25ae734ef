"""The PE methods shipped beyond the paper, each a small :class:`~mpvgbench.models.pe.PositionEncoding`.

===============  ================================================================================
``sincos2d``     fixed 2-D sin-cos ``pos_0`` (MAE's ``get_2d_sincos_pos_embed``, MoCo v3): the first
                 half of the channels encodes the column (x), the second the row (y), each as
                 ``[sin(p w_i), cos(p w_i)]`` with ``w_i = 10000^(-i / (D/4))``; the class-token row
                 is zero. A frozen parameter (counted and saved, like MAE's); the knobs use it as
                 they use the learned PE.
``rope_axial``   RoPE-ViT's axial rotary embedding (Heo et al., ``compute_axial_cis``, theta 100):
                 half of each head's channel pairs rotate with the column, half with the row. No
                 parameters; the class token is not rotated. On Swin (RoPE-ViT's RoPE-Swin): in each
                 window, on the window's own coordinates, theta 50, relative position bias removed.
``rope_mixed``   RoPE-ViT's mixed rotary embedding (theta 10): learnable frequencies
                 ``(2, depth, heads, head_dim / 2)`` (timm's ``RotaryEmbeddingMixed``), one table
                 per block and head. On Swin: one ``(2, heads, head_dim / 2)`` per block (its
                 stage's heads), window coordinates, relative position bias removed.
``peg``          CPVT's PEG: ``x_patches + DWConv3x3(x_patches)`` (zero padding 1, bias) after
                 block 0; the class token passes through. With ``pool: avg`` it is CPVT-GAP.
===============  ================================================================================

Each acts only at its own place of the interface; the five knobs still govern any absolute PE
(``add_to_input: true`` with ``rope_*`` or ``peg`` is RoPE-ViT's "+ APE" / CPVT's PEG + APE).
The rotary tables come from timm (``RotaryEmbeddingCat``, ``RotaryEmbeddingMixed``); the tests
compare them with an independent transcription of the original code.
"""

from __future__ import annotations

from typing import Optional

import torch
from timm.layers import RotaryEmbeddingCat, RotaryEmbeddingMixed, build_sincos2d_pos_embed
from torch import Tensor, nn

from mpvgbench.models.pe import PEContext, PositionEncoding

__all__ = ["PEG", "RopeAxial", "RopeMixed", "SinCos2D", "init_2d_freqs", "sincos2d_table", "window_rotary_table"]


def sincos2d_table(grid: tuple[int, int], dim: int) -> Tensor:
    """``(H * W, dim)``: MAE's 2-D sin-cos layout ``[sin x, cos x, sin y, cos y]`` (x: column).

    timm builds ``[sin y, cos y, sin x, cos x]`` (row first, ``interleave_sin_cos``); MAE puts the
    column first, so the two halves are swapped.
    """
    table = build_sincos2d_pos_embed(list(grid), dim=dim, interleave_sin_cos=True)
    return torch.cat([table[:, dim // 2:], table[:, : dim // 2]], dim=1)


class SinCos2D(PositionEncoding):
    """Fixed 2-D sin-cos ``pos_0`` (MAE / MoCo v3), frozen; zero row for the class token."""

    @classmethod
    def expected_parameters(cls, context: PEContext) -> int:
        return 0  # it only sets the backbone's pos_0 (counted there, as MAE's frozen parameter)

    def init_pos_embed(self, pos_embed: Optional[nn.Parameter]) -> None:
        assert self.context is not None and pos_embed is not None
        dim = pos_embed.shape[-1]
        if dim % 4:
            raise ValueError(f"sincos2d needs an embedding dim divisible by 4, got {dim}")
        table = sincos2d_table(self.context.grid, dim)
        prefix = pos_embed.shape[1] - table.shape[0]  # the class token's row, when there is one
        with torch.no_grad():
            pos_embed.zero_()
            pos_embed[0, prefix:].copy_(table.to(pos_embed.dtype))
        pos_embed.requires_grad_(False)


def init_2d_freqs(head_dim: int, num_heads: int, theta: float, rotate: bool) -> Tensor:
    """``(2, heads, head_dim / 2)``: RoPE-ViT's 2-D frequencies (x row, then y) for one block.

    Bands ``1 / theta^(4i / head_dim)``; head ``h`` turns them by an angle ``a_h`` (uniform in
    ``[0, 2 pi)`` when ``rotate``, else 0): the first half of the pairs gets direction
    ``(cos a, sin a)``, the second ``(-sin a, cos a)``. With ``a = 0`` that is axial: the first
    half rotates with x (column), the second with y (row).
    """
    bands = 1.0 / theta ** (torch.arange(0, head_dim, 4)[: head_dim // 4].float() / head_dim)
    angle = torch.rand(num_heads, 1) * 2 * torch.pi if rotate else torch.zeros(num_heads, 1)
    fx = torch.cat([bands * angle.cos(), -bands * angle.sin()], dim=-1)
    fy = torch.cat([bands * angle.sin(), bands * angle.cos()], dim=-1)
    return torch.stack([fx, fy])


def window_rotary_table(freqs: Tensor, window: tuple[int, int]) -> Tensor:
    """``(heads, h * w, 2 * head_dim)``: cat(sin, cos) over the window's tokens, row-major,
    coordinates ``x = i mod w``, ``y = i div w`` inside the window (RoPE-Swin), each angle repeated
    for its channel pair (timm's interleaved layout, ``apply_rot_embed_cat``)."""
    index = torch.arange(window[0] * window[1], device=freqs.device, dtype=torch.float32)
    t_x, t_y = index % window[1], torch.div(index, window[1], rounding_mode="floor")
    angles = t_x[:, None] * freqs[0, :, None, :].float() + t_y[:, None] * freqs[1, :, None, :].float()
    angles = angles.repeat_interleave(2, dim=-1)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class RopeAxial(PositionEncoding):
    """RoPE-ViT's RoPE-Axial: one fixed table shared by every block and head (per block and
    window on Swin)."""

    theta = 100.0  # RoPE-ViT's rope_theta for the axial variant (ViT)
    window_theta = 50.0  # RoPE-ViT's SwinTransformer/configs/swinrope: THETA 50 for axial
    relative_position_bias = False  # RoPE-Swin's configs: RPB False

    @classmethod
    def expected_parameters(cls, context: PEContext) -> int:
        return 0

    def __init__(self, context: PEContext) -> None:
        super().__init__(context)
        self.depth = context.depth
        self.window_tables: list[str] = []
        for i, block in enumerate(context.windows):  # windowed: fixed tables, buffers (follow .to())
            freqs = init_2d_freqs(block.dim // block.num_heads, block.num_heads, self.window_theta, rotate=False)
            self.register_buffer(f"window_table_{i}", window_rotary_table(freqs, block.window), persistent=False)
            self.window_tables.append(f"window_table_{i}")
        if context.windows:
            return
        head_dim = context.dim // context.num_heads
        # index grid, x (column) frequencies first, inverse-frequency bands 1 / theta^(4i / head_dim)
        self.rope = RotaryEmbeddingCat(head_dim, temperature=self.theta, in_pixels=False,
                                       feat_shape=list(context.grid), grid_indexing="xy")

    def rotary(self) -> tuple[Tensor, ...]:
        if self.window_tables:
            return tuple(getattr(self, name) for name in self.window_tables)
        table = self.rope.get_embed()  # (N, 2 * head_dim): cat(sin, cos)
        return (table,) * self.depth


class RopeMixed(PositionEncoding):
    """RoPE-ViT's RoPE-Mixed: learnable frequencies per block and head (timm's layer on ViTs;
    one ``(2, heads, head_dim / 2)`` parameter per block on Swin, as RoPE-Swin's attention)."""

    theta = 10.0  # RoPE-ViT's rope_theta for the mixed variant (ViT and Swin configs)
    relative_position_bias = False  # RoPE-Swin's configs: RPB False

    @classmethod
    def expected_parameters(cls, context: PEContext) -> int:
        # RoPE-ViT: 2 x heads x head_dim / 2 = dim frequencies per block (ViT: depth x dim)
        if context.windows:
            return sum(block.dim for block in context.windows)
        return context.depth * context.dim

    def __init__(self, context: PEContext) -> None:
        super().__init__(context)
        self.windows = [block.window for block in context.windows]
        if context.windows:  # RoPE-Swin: each block's attention draws its own random head angles
            self.freqs = nn.ParameterList(
                init_2d_freqs(b.dim // b.num_heads, b.num_heads, self.theta, rotate=True) for b in context.windows)
            return
        self.rope = RotaryEmbeddingMixed(context.dim, context.depth, context.num_heads,
                                         temperature=self.theta, feat_shape=list(context.grid), grid_indexing="xy")

    def rotary(self) -> tuple[Tensor, ...]:
        if self.windows:
            return tuple(window_rotary_table(f, w) for f, w in zip(self.freqs, self.windows))
        tables = self.rope.get_embed()  # (depth, heads, N, 2 * head_dim)
        return tuple(tables.unbind(0))


class PEG(PositionEncoding):
    """CPVT's position encoding generator after block 0: ``x + DWConv3x3(x)`` on the patch grid."""

    after = 0  # CPVT: the PEG sits after the first encoder block

    @classmethod
    def expected_parameters(cls, context: PEContext) -> int:
        return context.dim * 9 + context.dim  # depthwise 3x3 weights and a bias per channel

    def __init__(self, context: PEContext) -> None:
        super().__init__(context)
        self.proj = nn.Conv2d(context.dim, context.dim, 3, 1, 1, groups=context.dim)

    def after_block(self, index: int, x: Tensor) -> Tensor:
        if index != self.after:
            return x
        assert self.context is not None
        prefix = self.context.num_prefix_tokens
        H, W = self.context.grid
        patches = x[:, prefix:].transpose(1, 2).reshape(x.shape[0], -1, H, W)
        patches = (patches + self.proj(patches)).flatten(2).transpose(1, 2)
        return torch.cat([x[:, :prefix], patches], dim=1) if prefix else patches
