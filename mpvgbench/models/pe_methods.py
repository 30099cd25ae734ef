"""The PE methods shipped beyond the paper, each a small :class:`~mpvgbench.models.pe.PositionEncoding`.

===============  ================================================================================
``sincos2d``     fixed 2-D sin-cos ``pos_0`` (MAE's ``get_2d_sincos_pos_embed``, MoCo v3): the first
                 half of the channels encodes the column (x), the second the row (y), each as
                 ``[sin(p w_i), cos(p w_i)]`` with ``w_i = 10000^(-i / (D/4))``; the class-token row
                 is zero. A frozen parameter (counted and saved, like MAE's); the knobs use it as
                 they use the learned PE.
``rope_axial``   RoPE-ViT's axial rotary embedding (Heo et al., ``compute_axial_cis``, theta 100):
                 half of each head's channel pairs rotate with the column, half with the row. No
                 parameters; the class token is not rotated.
``rope_mixed``   RoPE-ViT's mixed rotary embedding (theta 10): learnable frequencies
                 ``(2, depth, heads, head_dim / 2)`` (timm's ``RotaryEmbeddingMixed``), one table
                 per block and head.
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

__all__ = ["PEG", "RopeAxial", "RopeMixed", "SinCos2D", "sincos2d_table"]


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


class RopeAxial(PositionEncoding):
    """RoPE-ViT's RoPE-Axial: one fixed table shared by every block and head."""

    theta = 100.0  # RoPE-ViT's rope_theta for the axial variant

    @classmethod
    def expected_parameters(cls, context: PEContext) -> int:
        return 0

    def __init__(self, context: PEContext) -> None:
        super().__init__(context)
        head_dim = context.dim // context.num_heads
        # index grid, x (column) frequencies first, inverse-frequency bands 1 / theta^(4i / head_dim)
        self.rope = RotaryEmbeddingCat(head_dim, temperature=self.theta, in_pixels=False,
                                       feat_shape=list(context.grid), grid_indexing="xy")
        self.depth = context.depth

    def rotary(self) -> tuple[Tensor, ...]:
        table = self.rope.get_embed()  # (N, 2 * head_dim): cat(sin, cos)
        return (table,) * self.depth


class RopeMixed(PositionEncoding):
    """RoPE-ViT's RoPE-Mixed: learnable frequencies per block and head (timm's layer)."""

    theta = 10.0  # RoPE-ViT's rope_theta for the mixed variant

    @classmethod
    def expected_parameters(cls, context: PEContext) -> int:
        # RoPE-ViT: freqs (2, depth, heads * head_dim / 2), i.e. depth x dim
        return context.depth * context.dim

    def __init__(self, context: PEContext) -> None:
        super().__init__(context)
        self.rope = RotaryEmbeddingMixed(context.dim, context.depth, context.num_heads,
                                         temperature=self.theta, feat_shape=list(context.grid), grid_indexing="xy")

    def rotary(self) -> tuple[Tensor, ...]:
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
