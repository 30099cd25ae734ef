"""Swin-Ti (timm ``SwinTransformer``) with an absolute PE and a position-embedding method.

The paper's Swin "Default" is Swin with ``ape=True``: a learnable absolute PE of shape
``(1, H*W, C0)`` (``(1, 3136, 96)`` at 224 px) added to the patch tokens, on top of Swin's own
relative position bias, which every paper method keeps (RoPE drops it, see below). How the method's knobs map onto a staged model:

- **Pooling is always GAP** (Last LN per token, then mean, then the head), whatever
  ``method.pool`` says: Swin has no class token, so ``pool='token'`` methods (default, lape,
  pvg_cls) run with GAP too and have no class-token PE row to drop.
- **Layer 0 is included** (paper: "both PVG and MPVG exceptionally include layer 0"):
  ``layerwise_from=1`` is treated as ``0``, so every block gets an LN'-delivered PE and
  ``lape`` / ``pvg`` differ only in ``add_to_input``.
- **Per-stage PE.** Each block's LN' works at its stage's dim. Between stages the PE goes
  through the *same* ``PatchMerging`` module as the tokens (the chain's ``transform``), so
  hierarchical chains carry ``pos_l`` across stages; non-hierarchical ones and the Last-LN source
  use ``pos_0`` merged once per stage boundary. MPVG's ``LN''`` is 768-d on ``pos_0`` merged
  three times.
- **Delivery.** The PE is added to ``norm1(x)`` *before* the cyclic shift, padding and window
  partition (timm's ``_attn``), so it is shifted and partitioned exactly like the tokens.
- **Methods acting in attention** (``rope_axial``, ``rope_mixed``; RoPE-ViT's RoPE-Swin): the
  method's module is built with one :class:`~mpvgbench.models.pe.WindowShape` per block and
  returns one rotary table per block over a window's tokens; :class:`PEWindowAttention` rotates
  q/k of every window with it (window coordinates, after the shift). A method with
  ``relative_position_bias = False`` (RoPE) removes the relative position bias tables, and a
  method without an absolute PE (``add_to_input: false`` and no layer-wise / Last-LN term) builds
  no ``absolute_pos_embed``.
- **Window.** ``window_size`` defaults to 7 at 224 px. For other sizes, when not given, it is the
  largest ``w <= 7`` that divides stage 2's grid (``img_size / 16``), so the shifted windows tile
  the middle stages (timm clamps a window to the grid of a smaller stage and drops its shift):
  224 -> 7, 64 -> 4, 32 -> 2, 16 -> 1.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from timm.layers import apply_rot_embed_cat, get_norm_layer, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.swin_transformer import (
    SwinTransformer,
    SwinTransformerBlock,
    WindowAttention,
    checkpoint_filter_fn,
    window_partition,
    window_reverse,
)
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mpvgbench.errors import MethodError
from mpvgbench.methods import MethodLike, PEMethod, encoding_info
from mpvgbench.models._cfg import model_cfg
from mpvgbench.models.pe import (
    DEFAULT_METHOD,
    PEModelMixin,
    PEContext,
    PositionEmbeddingChain,
    Transform,
    WindowShape,
    add_last_ln_pe,
    entry_method,
)

__all__ = ["MPVGSwinTransformer", "PESwinBlock", "PEWindowAttention", "default_window_size", "swin_effective_method"]

SizeLike = Union[int, tuple[int, int]]


def default_window_size(img_size: SizeLike, patch_size: int = 4, max_window: int = 7) -> int:
    """The largest window ``<= max_window`` that tiles stage 2's grid (see the module docstring)."""
    size = min(img_size) if isinstance(img_size, (tuple, list)) else int(img_size)
    stage2 = max(1, size // patch_size // 4)
    return max(w for w in range(1, max_window + 1) if stage2 % w == 0)


def swin_effective_method(m: PEMethod) -> PEMethod:
    """The knobs Swin actually runs: layer 0 included (``layerwise_from=1`` -> ``0``)."""
    return dataclasses.replace(m, layerwise_from=0) if m.layerwise_from == 1 else m


class PEWindowAttention(WindowAttention):
    """timm ``WindowAttention`` that rotates q/k by a rotary table (``rope``: ``(heads, N, 2 *
    head_dim)`` over the window's tokens) and adds the relative position bias only while the model
    has it (a rotary method may remove it). With ``rope=None`` and the bias kept it is timm's."""

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, rope: Optional[Tensor] = None) -> Tensor:
        if rope is None and self.relative_position_bias_table is not None:
            return super().forward(x, mask)
        B_, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        if rope is not None:  # rotated in the table's float32, back to q's dtype (RoPE-Swin's type_as)
            q, k = apply_rot_embed_cat(q, rope).type_as(q), apply_rot_embed_cat(k, rope).type_as(k)
        bias = self._get_rel_pos_bias() if self.relative_position_bias_table is not None else None
        if mask is not None:  # (nW, N, N) shifted-window mask, per window of each image
            num_win = mask.shape[0]
            mask = mask.view(1, num_win, 1, N, N).expand(B_ // num_win, -1, self.num_heads, -1, -1)
            mask = mask.reshape(-1, self.num_heads, N, N)
            bias = mask if bias is None else bias + mask
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                             dropout_p=self.attn_drop.p if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B_, N, -1)))


class PESwinBlock(SwinTransformerBlock):
    """timm Swin block whose attention input is ``norm1(x) + pe`` (``pe``: ``(1, H, W, C)``) and
    whose window attention rotates q/k by ``rope`` (one table for every window).

    The PE is added before ``_attn`` so the cyclic shift, padding and window partition move it
    with the tokens. With ``pe=None, rope=None`` this is exactly timm's block. It adds no state,
    only these methods, which is why :class:`MPVGSwinTransformer` can retype timm's blocks in place.
    """

    attn: PEWindowAttention

    def forward(self, x: Tensor, pe: Optional[Tensor] = None,  # type: ignore[override]
                rope: Optional[Tensor] = None) -> Tensor:
        B, H, W, C = x.shape
        h = self.norm1(x)
        if pe is not None:
            h = h + pe
        x = x + self.drop_path1(self._attn(h) if rope is None else self._rotary_attn(h, rope))
        x = x.reshape(B, -1, C)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x.reshape(B, H, W, C)

    def _rotary_attn(self, x: Tensor, rope: Tensor) -> Tensor:
        """timm's ``_attn`` (shift, pad, partition, attention, merge, unshift) with ``rope`` passed
        to the window attention: every window's tokens get the window's own coordinates."""
        B, H, W, C = x.shape
        shifted = torch.roll(x, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2)) \
            if any(self.shift_size) else x
        pad_h = (self.window_size[0] - H % self.window_size[0]) % self.window_size[0]
        pad_w = (self.window_size[1] - W % self.window_size[1]) % self.window_size[1]
        shifted = F.pad(shifted, (0, 0, 0, pad_w, 0, pad_h))
        _, Hp, Wp, _ = shifted.shape
        windows = window_partition(shifted, self.window_size).view(-1, self.window_area, C)
        mask = self.get_attn_mask(shifted) if getattr(self, "dynamic_mask", False) else self.attn_mask
        windows = self.attn(windows, mask=mask, rope=rope).view(-1, self.window_size[0], self.window_size[1], C)
        shifted = window_reverse(windows, self.window_size, Hp, Wp)[:, :H, :W, :].contiguous()
        return torch.roll(shifted, shifts=self.shift_size, dims=(1, 2)) if any(self.shift_size) else shifted


class MPVGSwinTransformer(PEModelMixin, SwinTransformer):
    """timm ``SwinTransformer`` + absolute PE (``absolute_pos_embed``) + a PE method.

    ``global_pool`` is fixed to ``'avg'`` (see the module docstring) and may not be passed.
    ``window_size=None`` picks :func:`default_window_size` for ``img_size``.
    """

    def __init__(
        self,
        pe_method: PEMethod = DEFAULT_METHOD,
        img_size: SizeLike = 224,
        patch_size: int = 4,
        window_size: Optional[Any] = None,
        **kwargs: Any,
    ) -> None:
        method = pe_method
        if "global_pool" in kwargs:
            raise ValueError("global_pool is always 'avg' on Swin (no class token); do not pass it")
        if window_size is None:
            window_size = default_window_size(img_size, patch_size)
        super().__init__(
            img_size=img_size, patch_size=patch_size, window_size=window_size, global_pool="avg", **kwargs
        )
        dims: list[int] = []
        stages: list[int] = []
        for s, stage in enumerate(self.layers):
            for blk in stage.blocks:
                # timm's SwinTransformerStage hard-codes its block class; PESwinBlock only adds a
                # forward that takes the PE (no parameters, buffers or attributes), so retyping
                # the built blocks is exact and avoids re-implementing the stage constructor.
                # The same holds for PEWindowAttention (only a forward that takes the rotary table).
                assert type(blk) is SwinTransformerBlock and type(blk.attn) is WindowAttention
                blk.__class__ = PESwinBlock
                blk.attn.__class__ = PEWindowAttention
                dims.append(blk.dim)
                stages.append(s)

        self.pe_method = method
        self.pe_method_effective = swin_effective_method(method)
        grid = tuple(self.patch_embed.grid_size)
        self._ape_grid: tuple[int, int] = (int(grid[0]), int(grid[1]))
        # original Swin's name and layout (tokens flattened); trunc-normal std .02 as Swin's ape.
        # Without any knob using it (RoPE-Swin: ape False) there is none, as in the original.
        if method.has_absolute_pe:
            self.absolute_pos_embed = nn.Parameter(
                torch.zeros(1, grid[0] * grid[1], dims[0], device=self.patch_embed.proj.weight.device)
            )
            trunc_normal_(self.absolute_pos_embed, std=0.02)
        else:
            self.absolute_pos_embed = None
        self._build_window_encoding(method, dims)
        # LN'/LN'' are the model's own LayerNorm kind (Swin: nn.LayerNorm, eps 1e-5)
        norm_layer = get_norm_layer(kwargs.get("norm_layer")) or nn.LayerNorm
        self.pe_chain = PositionEmbeddingChain(
            self.pe_method_effective,
            len(dims),
            dims,
            stages=stages,
            last_dim=self.num_features,
            norm_layer=norm_layer,
        )

    def _build_window_encoding(self, method: PEMethod, dims: list[int]) -> None:
        """The method's module, built on the blocks' windows; only methods that name Swin among
        their families (their module knows the window layout) are built here."""
        info = encoding_info(method.encoding)
        if info.factory is not None and "swin" not in (info.families or ()):
            raise MethodError(f"PE method {method.encoding!r} is not defined for Swin; it must list 'swin' "
                              "among its families (its blocks take rotary tables over windows only)")
        blocks = [blk for stage in self.layers for blk in stage.blocks]
        windows = tuple(WindowShape(blk.dim, blk.attn.num_heads, tuple(blk.window_size)) for blk in blocks)
        self.pe_build_encoding(PEContext("swin", len(blocks), dims[0], windows[0].num_heads, self._ape_grid, 0,
                                         windows=windows))
        if self.pe_encoding is not None and not self.pe_encoding.relative_position_bias:
            for blk in blocks:  # RoPE-Swin (use_rpb=False): the table and its index go, as there
                blk.attn.relative_position_bias_table = None
                blk.attn.relative_position_index = None

    # --- PE plumbing (pe.py) -------------------------------------------------------------
    def pe_pos0(self) -> Optional[Tensor]:
        if self.absolute_pos_embed is None:
            return None
        return self.absolute_pos_embed.view(1, *self._ape_grid, -1)

    def pe_transform(self) -> Optional[Transform]:
        return self._merge_pe

    def _merge_pe(self, pe: Tensor, stage: int) -> Tensor:
        return self.layers[stage].downsample(pe)  # the same PatchMerging as the tokens

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"absolute_pos_embed"} | self.pe_no_weight_decay()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        matcher = super().group_matcher(coarse)
        matcher["stem"] = r"^patch_embed|^absolute_pos_embed"
        return matcher

    def set_input_size(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "the absolute PE is sized at construction; build a new model with img_size="
        )

    def forward_intermediates(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("timm's stage-wise forward skips the delivered PE; use forward_features")

    # --- forward ---------------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:  # type: ignore[override]
        # (B, H, W, C0) + pos_0 when add_to_input; a method's at_input / after_block see this layout
        x = self.pe_at_input(self.patch_embed(x))
        pe = self.pe_outputs()
        rope = pe.rope or (None,) * len(pe.blocks)
        i = 0
        for stage in self.layers:
            x = stage.downsample(x)
            for blk in stage.blocks:
                if stage.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                    x = checkpoint(blk, x, pe.blocks[i], rope[i], use_reentrant=False)
                else:
                    x = blk(x, pe.blocks[i], rope[i])
                x = self.pe_after_block(i, x)
                i += 1
        # Last LN per token, + LN''(pos_0 merged to the last stage); the head then averages (GAP)
        return add_last_ln_pe(self.norm(x), pe)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return model_cfg(pool_size=(7, 7), crop_pct=0.9, classifier="head.fc", **kwargs)


default_cfgs = generate_default_cfgs({"mpvg_swin_tiny_patch4_window7_224": _cfg()})


@register_model
def mpvg_swin_tiny_patch4_window7_224(pretrained: bool = False, **kwargs: Any) -> MPVGSwinTransformer:
    """Swin-Ti: patch 4, 96-d, depths (2, 2, 6, 2), heads (3, 6, 12, 24), window 7 at 224 px.

    ``pe_method=`` preset / knob dict / PEMethod; ``img_size=`` and ``num_classes=`` as usual.
    """
    if pretrained:
        raise ValueError("mpvg_swin_tiny_patch4_window7_224 has no pretrained weights")
    args: dict[str, Any] = {
        "patch_size": 4,
        "embed_dim": 96,
        "depths": (2, 2, 6, 2),
        "num_heads": (3, 6, 12, 24),
        **kwargs,
    }
    args["pe_method"] = entry_method(args.get("pe_method", DEFAULT_METHOD), sum(args["depths"]), "swin")
    return build_model_with_cfg(
        MPVGSwinTransformer,
        "mpvg_swin_tiny_patch4_window7_224",
        pretrained=False,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3)),
        **args,
    )


def swin_tiny(pe_method: MethodLike = "default", **kwargs: Any) -> MPVGSwinTransformer:
    """Short-name constructor (``models/__init__.py`` maps ``swin_tiny`` to the timm name)."""
    return mpvg_swin_tiny_patch4_window7_224(pe_method=pe_method, **kwargs)
