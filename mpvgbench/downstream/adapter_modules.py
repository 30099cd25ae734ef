"""ViT-Adapter's parts: Spatial Prior Module, injector, extractor, interaction block, windowed
attention over a timm ``Attention``'s own weights. Names follow czczup/ViT-Adapter."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from timm.models.vision_transformer import Attention, Block
from torch import Tensor, nn

from mpvgbench.downstream.msda import MultiScaleDeformableAttention, reference_points

__all__ = [
    "ConvFFN",
    "Extractor",
    "Injector",
    "InteractionBlock",
    "SpatialPriorModule",
    "run_block",
    "windowed_attention",
]

Shapes = Sequence[tuple[int, int]]


def _conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
    # BatchNorm2d here; ViT-Adapter uses SyncBatchNorm: convert with
    # nn.SyncBatchNorm.convert_sync_batchnorm when training with DDP
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SpatialPriorModule(nn.Module):
    """A ResNet-like conv stem giving the adapter's spatial prior at strides 4, 8, 16 and 32."""

    def __init__(self, inplanes: int = 64, embed_dim: int = 192) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            *_conv_bn_relu(3, inplanes, 2),
            *_conv_bn_relu(inplanes, inplanes, 1),
            *_conv_bn_relu(inplanes, inplanes, 1),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.conv2 = nn.Sequential(*_conv_bn_relu(inplanes, 2 * inplanes, 2))
        self.conv3 = nn.Sequential(*_conv_bn_relu(2 * inplanes, 4 * inplanes, 2))
        self.conv4 = nn.Sequential(*_conv_bn_relu(4 * inplanes, 4 * inplanes, 2))
        self.fc1 = nn.Conv2d(inplanes, embed_dim, 1)
        self.fc2 = nn.Conv2d(2 * inplanes, embed_dim, 1)
        self.fc3 = nn.Conv2d(4 * inplanes, embed_dim, 1)
        self.fc4 = nn.Conv2d(4 * inplanes, embed_dim, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``c1`` as a map ``(B, C, H/4, W/4)``; ``c2..c4`` as tokens ``(B, HW_l, C)``."""
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        tokens = [fc(c).flatten(2).transpose(1, 2) for fc, c in ((self.fc2, c2), (self.fc3, c3), (self.fc4, c4))]
        return self.fc1(c1), tokens[0], tokens[1], tokens[2]


class ConvFFN(nn.Module):
    """MLP with a 3x3 depth-wise conv on each of the three adapter levels (shared weights)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, shapes: Shapes) -> Tensor:
        x = self.fc1(x)
        b, _, c = x.shape
        parts = x.split([h * w for h, w in shapes], dim=1)
        x = torch.cat(
            [self.dwconv(p.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2) for p, (h, w) in zip(parts, shapes)],
            dim=1,
        )
        return self.drop(self.fc2(self.drop(self.act(x))))


class Injector(nn.Module):
    """Spatial prior -> ViT tokens: ``x + gamma * MSDA(LN(x), LN(c))`` (gamma = layer scale)."""

    def __init__(self, dim: int, n_heads: int, n_points: int, n_levels: int, deform_ratio: float, init_values: float) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=1e-6)
        self.feat_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiScaleDeformableAttention(dim, n_levels, n_heads, n_points, deform_ratio)
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, query: Tensor, refs: Tensor, feat: Tensor, shapes: Shapes) -> Tensor:
        return query + self.gamma * self.attn(self.query_norm(query), refs, self.feat_norm(feat), shapes)


class Extractor(nn.Module):
    """ViT tokens -> spatial prior: ``c + MSDA(LN(c), LN(x))`` then ``c + drop_path(ConvFFN(LN(c)))``."""

    def __init__(
        self, dim: int, n_heads: int, n_points: int, deform_ratio: float, with_cffn: bool, cffn_ratio: float, drop_path: float
    ) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=1e-6)
        self.feat_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiScaleDeformableAttention(dim, 1, n_heads, n_points, deform_ratio)
        self.with_cffn = with_cffn
        if with_cffn:
            self.ffn = ConvFFN(dim, int(dim * cffn_ratio))
            self.ffn_norm = nn.LayerNorm(dim, eps=1e-6)
            self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, query: Tensor, refs: Tensor, feat: Tensor, feat_shape: tuple[int, int], query_shapes: Shapes) -> Tensor:
        query = query + self.attn(self.query_norm(query), refs, self.feat_norm(feat), [feat_shape])
        if self.with_cffn:
            query = query + self.drop_path(self.ffn(self.ffn_norm(query), query_shapes))
        return query


class InteractionBlock(nn.Module):
    """Injector, a run of ViT blocks (run by the caller), extractor (+2 extra on the last one)."""

    def __init__(
        self,
        dim: int,
        n_heads: int,
        n_points: int,
        deform_ratio: float,
        init_values: float,
        with_cffn: bool,
        cffn_ratio: float,
        drop_path: float,
        extra_extractor: bool,
    ) -> None:
        super().__init__()
        self.injector = Injector(dim, n_heads, n_points, 3, deform_ratio, init_values)
        self.extractor = Extractor(dim, n_heads, n_points, deform_ratio, with_cffn, cffn_ratio, drop_path)
        self.extra_extractors = (
            nn.Sequential(*[Extractor(dim, n_heads, n_points, deform_ratio, with_cffn, cffn_ratio, drop_path) for _ in range(2)])
            if extra_extractor
            else None
        )

    def inject(self, x: Tensor, c: Tensor, c_shapes: Shapes, x_shape: tuple[int, int]) -> Tensor:
        refs = reference_points([x_shape], x.device)
        return self.injector(x, refs, c, c_shapes)

    def extract(self, x: Tensor, c: Tensor, c_shapes: Shapes, x_shape: tuple[int, int]) -> Tensor:
        refs = reference_points(c_shapes, c.device)
        c = self.extractor(c, refs, x, x_shape, c_shapes)
        if self.extra_extractors is not None:
            for extractor in self.extra_extractors:
                c = extractor(c, refs, x, x_shape, c_shapes)
        return c


def windowed_attention(attn: Attention, x: Tensor, hw: tuple[int, int], window: int) -> Tensor:
    """``attn`` restricted to non-overlapping ``window x window`` windows, with its own weights.

    As ViT-Adapter: q/k/v are zero-padded at the bottom/right to a multiple of ``window`` after
    the qkv projection, so padded keys (logit 0, value 0) take part in the softmax.
    """
    b, n, c = x.shape
    h, w = hw
    ph, pw = math.ceil(h / window) * window, math.ceil(w / window) * window
    qkv = attn.qkv(x).view(b, h, w, 3 * c)
    qkv = F.pad(qkv, (0, 0, 0, pw - w, 0, ph - h))
    nh, nw = ph // window, pw // window
    qkv = qkv.view(b, nh, window, nw, window, 3, attn.num_heads, attn.head_dim)
    qkv = qkv.permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(3, b * nh * nw, attn.num_heads, window * window, attn.head_dim)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    # (b*nh*nw, heads, win*win, hd) -> (b, ph, pw, c), then drop the padding
    out = out.view(b, nh, nw, attn.num_heads, window, window, attn.head_dim)
    out = out.permute(0, 1, 4, 2, 5, 3, 6).reshape(b, ph, pw, c)[:, :h, :w].reshape(b, n, c)
    return attn.proj_drop(attn.proj(attn.norm(out)))


def run_block(block: Block, x: Tensor, pe: Tensor | None, hw: tuple[int, int], window: int | None) -> Tensor:
    """One ViT block with its layer-wise PE; global attention is the block's own forward."""
    if window is None:
        return block(x, pe)
    h = block.norm1(x)
    if pe is not None:
        h = h + pe
    x = x + block.drop_path1(block.ls1(windowed_attention(block.attn, h, hw, window)))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
