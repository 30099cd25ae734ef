"""T2T-ViT-7 (Yuan et al., "Tokens-to-Token ViT") with a position-embedding method.

Follows the official ``T2T_ViT`` with ``tokens_type='performer'`` (our own code):

- T2T module: soft split (``nn.Unfold``) 7x7/4 (pad 2) -> Performer token attention ->
  re-structurize -> soft split 3x3/2 (pad 1) -> Performer -> re-structurize -> soft split
  3x3/2 (pad 1) -> linear ``576 -> 256``: 224 px -> 56 -> 28 -> 14, i.e. 196 tokens.
  ``token_dim`` 64; the Performer is the official one-head "token performer": ``kqv`` linear to
  64-d, positive random features (``m = 32`` fixed orthogonal rows, a frozen parameter that
  counts), ``v`` as the skip connection, dropout 0.1 after ``proj`` and in the MLP.
- FIXED sinusoidal PE: an ``nn.Parameter`` with ``requires_grad=False`` (counted, as the
  official model does). With a class token it has 197 rows (row 0 is the class token's); without
  (``pool='avg'``) it is the table of 196 positions: positions ``0..N-1`` of the sequence the
  blocks see, as the official ``get_sinusoid_encoding(n_position=...)`` would give.
- 7 blocks, dim 256, 4 heads, MLP ratio 2, qkv without bias, ``nn.LayerNorm`` (eps 1e-5),
  LN' / LN'' of the same kind; Linear trunc-normal std 0.02, class token trunc-normal std 0.02.

Everything about the method (class token or GAP, ``x + pos_0``, LN'-delivered PE, Last-LN term)
is :class:`~mpvgbench.models.deit.MPVGVisionTransformer`'s: T2T-ViT is a ViT with this patch
embedding and this PE. The Performer runs in float32 (autocast off): its ``exp`` of random
features overflows in half precision, which is why the official code casts to float there too.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Optional

import torch
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

from mpvgbench.methods import MethodLike, PEMethod
from mpvgbench.models._cfg import model_cfg
from mpvgbench.models.deit import MPVGVisionTransformer
from mpvgbench.models.pe import DEFAULT_METHOD, entry_method

__all__ = ["MPVGT2TViT", "T2TModule", "TokenPerformer", "sinusoid_table"]


def sinusoid_table(n_position: int, dim: int) -> Tensor:
    """``(1, n_position, dim)``: sin on even channels, cos on odd ones (Vaswani et al.)."""
    pos = torch.arange(n_position, dtype=torch.float64).unsqueeze(1)
    div = torch.pow(10000.0, 2.0 * (torch.arange(dim) // 2).to(torch.float64) / dim)
    table = pos / div
    table[:, 0::2] = torch.sin(table[:, 0::2])
    table[:, 1::2] = torch.cos(table[:, 1::2])
    return table.float().unsqueeze(0)


class TokenPerformer(nn.Module):
    """One-head Performer layer of the T2T module (``dim`` in, ``in_dim`` out)."""

    def __init__(
        self,
        dim: int,
        in_dim: int,
        kernel_ratio: float = 0.5,
        attn_drop: float = 0.1,
        mlp_drop: float = 0.1,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.emb = in_dim
        self.kqv = nn.Linear(dim, 3 * in_dim)
        self.dp = nn.Dropout(attn_drop)
        self.proj = nn.Linear(in_dim, in_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(in_dim)
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, in_dim), nn.Dropout(mlp_drop)
        )
        self.eps = eps  # keeps the normaliser D away from 0
        self.m = int(in_dim * kernel_ratio)
        w = torch.empty(self.m, in_dim)
        nn.init.orthogonal_(w)
        # fixed random features, a frozen parameter as in the official model (it counts: 2 x 2,048)
        self.w = nn.Parameter(w * math.sqrt(self.m), requires_grad=False)

    def prm_exp(self, x: Tensor) -> Tensor:
        """Positive random features of the softmax kernel: ``exp(w^T x - |x|^2 / 2) / sqrt(m)``."""
        xd = (x * x).sum(dim=-1, keepdim=True) / 2
        wtx = torch.einsum("bti,mi->btm", x, self.w.float())
        return torch.exp(wtx - xd) / math.sqrt(self.m)

    def single_attn(self, x: Tensor) -> Tensor:
        k, q, v = torch.split(self.kqv(x), self.emb, dim=-1)
        with torch.autocast(device_type=x.device.type, enabled=False):
            k, q, vf = k.float(), q.float(), v.float()
            kp, qp = self.prm_exp(k), self.prm_exp(q)  # (B, T, m)
            d = torch.einsum("bti,bi->bt", qp, kp.sum(dim=1)).unsqueeze(2)  # (B, T, 1)
            kptv = torch.einsum("bin,bim->bnm", vf, kp)  # (B, emb, m)
            y = torch.einsum("bti,bni->btn", qp, kptv) / (d + self.eps)  # (B, T, emb)
        y = y.to(v.dtype)
        return v + self.dp(self.proj(y))  # v is the skip connection (token dim changes here)

    def forward(self, x: Tensor) -> Tensor:
        x = self.single_attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _unfold_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class T2TModule(nn.Module):
    """Tokens-to-token embedding, usable as timm ``VisionTransformer``'s ``embed_layer``.

    Returns ``(B, N, embed_dim)`` with ``N = grid_size[0] * grid_size[1]`` (196 at 224 px).
    ``patch_size`` is the overall stride (16) and only feeds timm's feature info.
    """

    # (kernel, stride, padding) of the three soft splits
    SPLITS: tuple[tuple[int, int, int], ...] = ((7, 4, 2), (3, 2, 1), (3, 2, 1))

    def __init__(
        self,
        img_size: Any = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 256,
        token_dim: int = 64,
        kernel_ratio: float = 0.5,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        **_: Any,  # timm's PatchEmbed arguments (bias, dynamic_img_pad, ...) do not apply
    ) -> None:
        super().__init__()
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.img_size = (int(h), int(w))
        self.patch_size = (patch_size, patch_size)
        self.grids: list[tuple[int, int]] = []
        for kernel, stride, pad in self.SPLITS:
            h, w = _unfold_size(h, kernel, stride, pad), _unfold_size(w, kernel, stride, pad)
            self.grids.append((h, w))
        self.grid_size = self.grids[-1]
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.soft_splits = nn.ModuleList(
            [nn.Unfold(kernel_size=k, stride=s, padding=p) for k, s, p in self.SPLITS]
        )
        k0, k1 = self.SPLITS[0][0], self.SPLITS[1][0]
        self.attention1 = TokenPerformer(in_chans * k0 * k0, token_dim, kernel_ratio)
        self.attention2 = TokenPerformer(token_dim * k1 * k1, token_dim, kernel_ratio)
        self.project = nn.Linear(token_dim * self.SPLITS[2][0] ** 2, embed_dim)
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    def feat_ratio(self, as_scalar: bool = True) -> int:
        return self.patch_size[0]

    def forward(self, x: Tensor) -> Tensor:
        B = x.shape[0]
        x = self.soft_splits[0](x).transpose(1, 2)
        for attn, split, (h, w) in zip((self.attention1, self.attention2), self.soft_splits[1:], self.grids):
            x = attn(x)  # re-structurization: tokens back to an image, then the next soft split
            x = x.transpose(1, 2).reshape(B, x.shape[-1], h, w)
            x = split(x).transpose(1, 2)
        return self.project(x)


class MPVGT2TViT(MPVGVisionTransformer):
    """T2T-ViT: :class:`MPVGVisionTransformer` with the T2T module and a fixed sinusoidal PE."""

    pe_family = "t2t"

    def __init__(self, pe_method: PEMethod = DEFAULT_METHOD, token_dim: int = 64, **kwargs: Any) -> None:
        if "embed_layer" in kwargs:
            raise ValueError("embed_layer is the T2T module; do not pass it")
        kwargs.setdefault("norm_layer", nn.LayerNorm)  # torch default eps 1e-5, as the official model
        super().__init__(pe_method=pe_method, embed_layer=partial(T2TModule, token_dim=token_dim), **kwargs)
        self._init_t2t()
        if self.pe_encoding is not None:  # the fixed table was just written: let the method set pos_0
            self.pe_encoding.init_pos_embed(self.pos_embed)

    @torch.no_grad()
    def _init_t2t(self) -> None:
        # timm's init already did Linear trunc-normal .02 / zero bias and LN 1 / 0 (official T2T)
        if self.pos_embed is not None:  # a PE method module may replace the absolute PE
            table = sinusoid_table(self.pos_embed.shape[1], self.pos_embed.shape[2])
            self.pos_embed.copy_(table.to(self.pos_embed.device, self.pos_embed.dtype))
            self.pos_embed.requires_grad_(False)  # fixed PE; still a parameter, so it counts and saves
        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=0.02)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return model_cfg(crop_pct=0.9, first_conv=None, **kwargs)  # soft split, no conv


default_cfgs = generate_default_cfgs({"mpvg_t2t_vit_7": _cfg()})


@register_model
def mpvg_t2t_vit_7(pretrained: bool = False, **kwargs: Any) -> MPVGT2TViT:
    """T2T-ViT-7: performer T2T module, 256-d, 7 blocks, 4 heads, MLP ratio 2, qkv without bias."""
    if pretrained:
        raise ValueError("mpvg_t2t_vit_7 has no pretrained weights")
    args: dict[str, Any] = {
        "img_size": 224,
        "patch_size": 16,
        "embed_dim": 256,
        "depth": 7,
        "num_heads": 4,
        "mlp_ratio": 2.0,
        "qkv_bias": False,
        **kwargs,
    }
    args["pe_method"] = entry_method(args.get("pe_method", DEFAULT_METHOD), args["depth"], "t2t")
    return build_model_with_cfg(
        MPVGT2TViT,
        "mpvg_t2t_vit_7",
        pretrained=False,
        feature_cfg=dict(out_indices=3, feature_cls="getter"),
        **args,
    )


def t2t_vit_7(pe_method: MethodLike = "default", **kwargs: Any) -> MPVGT2TViT:
    """Short-name constructor (``models/__init__.py`` maps ``t2t_vit_7`` to the timm name)."""
    return mpvg_t2t_vit_7(pe_method=pe_method, **kwargs)
