"""CeiT-Ti (Yuan et al., "Incorporating Convolution Designs into Visual Transformers").

Follows the official ``CeIT`` (coeusguo/ceit, ``ceit_tiny_patch16_224``; our own code):

- I2T stem: conv 7x7/2 (3 -> 64, no bias) + BN + max-pool 3x3/2, then a 4x4/4 conv with bias
  (64 -> 192): 224 px -> 112 -> 56 -> 14, i.e. 196 tokens; class token and a learnable PE
  (197 rows), both trunc-normal std 0.02.
- 12 blocks, dim 192, 3 heads, qkv with bias, LN eps 1e-6; the feed-forward is LeFF on the
  patch tokens: 1x1 conv (= linear) 192 -> 768 + BN + GELU, depthwise 3x3 conv + BN + GELU,
  1x1 conv 768 -> 192 + BN. As in the official code there is no GELU after the last BN (some
  descriptions of LeFF put one there; it has no parameters), and the class token bypasses the
  convolutions: LeFF returns its input row unchanged, so the residual adds ``norm2(x)_cls`` to
  the class token.
- LCA: the class tokens after each of the 12 blocks, plus a learnable layer embedding
  ``pos_layer_embed`` (1, 12, 192; zeros, as the official code leaves it), go through one more
  block (attention + MLP, no drop path) whose last token, after the Last LN, feeds the head.

These choices give the paper's 6,356,904 parameters exactly (BN affine parameters included,
running statistics are buffers). With the method:

- CeiT KEEPS the class token, its PE row and the LCA for every method (the paper's counts need
  them: PVG = default + 11 LN', MPVG = PVG + LN''). LN'-delivered PEs have 197 rows and reach
  the class token too.
- ``pool='token'``: the head reads the LCA output (the official model).
- ``pool='avg'`` (gap, pvg, mpvg, ...): the Last LN is applied to each patch token after the
  last block, the Last-LN term ``LN''(pos_k)`` is added on the patch rows only, and their mean
  feeds the head. The class token still takes part in every block's attention, but the LCA and
  ``pos_layer_embed`` are then unused: they are frozen (``requires_grad=False``; still counted
  and saved), so DDP needs no ``find_unused_parameters`` and the optimizer skips them.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Optional

import torch
from timm.layers import Mlp, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import Attention
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mpvgbench.methods import MethodLike, PEMethod
from mpvgbench.models._cfg import model_cfg
from mpvgbench.models.pe import (
    DEFAULT_METHOD,
    PEBlock,
    PEModelMixin,
    PEOutputs,
    PositionEmbeddingChain,
    Transform,
    add_last_ln_pe,
    entry_method,
    require_no_encoding,
)

__all__ = ["Image2Tokens", "LCABlock", "LeFF", "MPVGCeiT", "PatchRowsChain"]


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class Image2Tokens(nn.Module):
    """I2T: conv + BN + max-pool stem, then a ``patch_size`` conv to ``embed_dim`` tokens."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        stem_chans: int = 64,
        embed_dim: int = 192,
        patch_size: int = 4,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, stem_chans, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn = nn.BatchNorm2d(stem_chans)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.proj = nn.Conv2d(stem_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        h, w = _conv_out(_conv_out(h, 7, 2, 3), 3, 2, 1), _conv_out(_conv_out(w, 7, 2, 3), 3, 2, 1)
        self.grid_size = (h // patch_size, w // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(self.maxpool(self.bn(self.conv(x))))
        return x.flatten(2).transpose(1, 2)  # (B, N, C)


class LeFF(nn.Module):
    """Locally-enhanced feed-forward on the patch tokens; the ``num_prefix_tokens`` pass through.

    Signature-compatible with timm ``Block``'s ``mlp_layer`` (extra timm arguments are ignored).
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        grid_size: tuple[int, int],
        num_prefix_tokens: int = 1,
        kernel_size: int = 3,
        act_layer: type[nn.Module] = nn.GELU,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        **_: Any,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.grid_size = grid_size
        self.num_prefix_tokens = num_prefix_tokens
        self.conv1 = nn.Conv2d(in_features, hidden_features, 1, **dd)
        self.bn1 = nn.BatchNorm2d(hidden_features, **dd)
        self.conv2 = nn.Conv2d(
            hidden_features, hidden_features, kernel_size, padding=kernel_size // 2,
            groups=hidden_features, **dd,
        )
        self.bn2 = nn.BatchNorm2d(hidden_features, **dd)
        self.conv3 = nn.Conv2d(hidden_features, in_features, 1, **dd)
        self.bn3 = nn.BatchNorm2d(in_features, **dd)
        self.act = act_layer()

    def forward(self, x: Tensor) -> Tensor:
        prefix, tokens = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        B, N, C = tokens.shape
        t = tokens.transpose(1, 2).reshape(B, C, *self.grid_size)
        t = self.act(self.bn1(self.conv1(t)))
        t = self.act(self.bn2(self.conv2(t)))
        t = self.bn3(self.conv3(t))
        return torch.cat([prefix, t.flatten(2).transpose(1, 2)], dim=1)


class LCABlock(nn.Module):
    """Layer-wise class-token attention: a pre-norm block whose output is its last token."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool,
        norm_layer: Any, attn_drop: float = 0.0, proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, L, C)`` class tokens (+ layer embedding) -> ``(B, 1, C)``."""
        # full attention over the L tokens (L = depth, tiny), kept for the last token only: the
        # official final version; the MLP then runs on that token alone (per-token, same result)
        x = x[:, -1:] + self.attn(self.norm1(x))[:, -1:]
        return x + self.mlp(self.norm2(x))


class PatchRowsChain(PositionEmbeddingChain):
    """The PE chain of a model that keeps prefix tokens under GAP: ``last`` covers patch rows only.

    ``LN''`` acts per row, so slicing after it equals ``LN''`` of the patch rows; doing it in
    ``compute`` keeps :func:`~mpvgbench.models.pe.fold_last_ln_pe` (which averages ``last``)
    exact for GAP over the patch tokens.
    """

    def __init__(self, *args: Any, num_prefix_tokens: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.num_prefix_tokens = num_prefix_tokens

    def compute(self, pos0: Tensor, transform: Optional[Transform] = None) -> PEOutputs:
        out = super().compute(pos0, transform)
        if out.last is None:
            return out
        return PEOutputs(out.blocks, out.last[:, self.num_prefix_tokens :])


class MPVGCeiT(PEModelMixin, nn.Module):
    """CeiT with a position-embedding method (see the module docstring)."""

    def __init__(
        self,
        pe_method: PEMethod = DEFAULT_METHOD,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        stem_chans: int = 64,
        leff_kernel_size: int = 3,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_layer: Optional[Any] = None,
    ) -> None:
        super().__init__()
        method = pe_method
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        require_no_encoding(method, "CeiT")  # its blocks have no place for a method module yet
        self.pe_method = method
        self.num_classes = num_classes
        self.global_pool = "token" if method.has_class_token else "avg"
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1  # the class token stays for every method (see docstring)
        self.grad_checkpointing = False

        self.patch_embed = Image2Tokens(img_size, in_chans, stem_chans, embed_dim, patch_size)
        grid = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth, device="cpu")]
        leff = partial(LeFF, grid_size=grid, num_prefix_tokens=1, kernel_size=leff_kernel_size)
        self.blocks = nn.Sequential(*[
            PEBlock(
                dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                proj_drop=proj_drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[i],
                norm_layer=norm_layer, mlp_layer=leff,
            )
            for i in range(depth)
        ])
        self.lca = LCABlock(embed_dim, num_heads, mlp_ratio, qkv_bias, norm_layer, attn_drop_rate, proj_drop_rate)
        self.pos_layer_embed = nn.Parameter(torch.zeros(1, depth, embed_dim))
        self.norm = norm_layer(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.pe_chain = PatchRowsChain(method, depth, embed_dim, norm_layer=norm_layer, num_prefix_tokens=1)
        self._init_weights()
        if self.global_pool == "avg":
            # GAP never reads the LCA: freeze it so it is explicit and DDP sees no unused grads
            for p in (*self.lca.parameters(), self.pos_layer_embed):
                p.requires_grad_(False)

    @torch.no_grad()
    def _init_weights(self) -> None:
        # official: PE and class token trunc-normal .02, Linear trunc-normal .02 / zero bias,
        # LN 1 / 0; convs and BN keep PyTorch's defaults; pos_layer_embed stays zero
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def pe_pos0(self) -> Tensor:
        return self.pos_embed

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        # pos_layer_embed is the LCA's (layer) position embedding: no decay, like every PE
        return {"pos_embed", "cls_token", "pos_layer_embed"} | self.pe_no_weight_decay()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^cls_token|^pos_embed|^patch_embed",
            blocks=[(r"^blocks\.(\d+)", None), (r"^lca|^pos_layer_embed|^norm", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None and global_pool != self.global_pool:
            raise ValueError("CeiT's pooling follows pe_method; build a new model to change it")
        self.num_classes = num_classes
        device = self.pos_embed.device
        self.head = nn.Linear(self.embed_dim, num_classes, device=device) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        """Tokens after the Last LN: ``(B, 1, C)`` (LCA output, ``pool='token'``) or the patch
        tokens ``(B, N, C)`` with the Last-LN term (``pool='avg'``)."""
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.pe_method.add_to_input:
            x = x + self.pos_embed
        x = self.pos_drop(x)
        pe = self.pe_outputs()
        cls_tokens: list[Tensor] = []
        for blk, blk_pe in zip(self.blocks, pe.blocks):
            if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                x = checkpoint(blk, x, blk_pe, use_reentrant=False)
            else:
                x = blk(x, blk_pe)
            cls_tokens.append(x[:, 0])
        if self.global_pool == "token":
            return self.norm(self.lca(torch.stack(cls_tokens, dim=1) + self.pos_layer_embed))
        return add_last_ln_pe(self.norm(x[:, self.num_prefix_tokens :]), pe)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x[:, 0] if self.global_pool == "token" else x.mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return model_cfg(first_conv="patch_embed.conv", **kwargs)


default_cfgs = generate_default_cfgs({"mpvg_ceit_tiny_patch16_224": _cfg()})


@register_model
def mpvg_ceit_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> MPVGCeiT:
    """CeiT-Ti: I2T stem (overall stride 16), 192-d, 12 blocks, 3 heads, LeFF, LCA."""
    if pretrained:
        raise ValueError("mpvg_ceit_tiny_patch16_224 has no pretrained weights")
    args: dict[str, Any] = {"embed_dim": 192, "depth": 12, "num_heads": 3, "mlp_ratio": 4.0, **kwargs}
    args["pe_method"] = entry_method(args.get("pe_method", DEFAULT_METHOD), args["depth"], "ceit")
    return build_model_with_cfg(
        MPVGCeiT, "mpvg_ceit_tiny_patch16_224", pretrained=False,
        feature_cfg=dict(out_indices=3, feature_cls="getter"), **args,
    )


def ceit_tiny(pe_method: MethodLike = "default", **kwargs: Any) -> MPVGCeiT:
    """Short-name constructor (``models/__init__.py`` maps ``ceit_tiny`` to the timm name)."""
    return mpvg_ceit_tiny_patch16_224(pe_method=pe_method, **kwargs)
