"""Multi-scale deformable attention (Deformable DETR) in plain PyTorch.

The core samples each level with ``F.grid_sample`` (bilinear, zero padding, ``align_corners=False``),
which is exactly the CUDA kernel's sampling rule: a location ``(x, y)`` in ``[0, 1]`` maps to the
pixel coordinate ``x * W - 0.5`` and every bilinear corner outside the map contributes zero. So no
compiled extension is needed and CPU and GPU share one code path.

Layout (as in Deformable DETR / ViT-Adapter):

``value``               ``(N, S, M, D)``: S = sum of H_l * W_l over levels, M heads, D channels per head.
``spatial_shapes``      ``[(H_0, W_0), ...]`` in the order the levels are concatenated in ``value``.
``sampling_locations``  ``(N, Lq, M, L, P, 2)``: (x, y) normalised to ``[0, 1]`` per level.
``attention_weights``   ``(N, Lq, M, L, P)``: softmax-normalised over ``L * P`` per head.

The core always runs in float32 (also under autocast): bilinear weights and the sum over up to
``L * P`` samples lose too much in bf16/fp16, and the reference CUDA kernel is fp32-only too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MultiScaleDeformableAttention", "level_start_index", "msda_core", "reference_points"]

SpatialShapes = Sequence[tuple[int, int]]


def level_start_index(spatial_shapes: SpatialShapes) -> list[int]:
    """Offset of each level's first token in the flattened ``value`` (Deformable DETR's index)."""
    starts, total = [], 0
    for h, w in spatial_shapes:
        starts.append(total)
        total += h * w
    return starts


def reference_points(spatial_shapes: SpatialShapes, device: torch.device | None = None) -> Tensor:
    """Pixel centres of every level, normalised to ``[0, 1]`` as (x, y): ``(1, sum H*W, 1, 2)``.

    The trailing level axis of size 1 broadcasts over the levels being sampled (ViT-Adapter uses
    the query's own position on every level).
    """
    refs = []
    for h, w in spatial_shapes:
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        refs.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), -1))
    return torch.cat(refs, 0)[None, :, None, :]


def msda_core(
    value: Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Sum over levels and points of ``weight * bilinear(value_l, location)``: ``(N, Lq, M * D)``.

    Computes in float32 at least (float64 stays float64, for gradcheck); returns that dtype.
    """
    n, s, m, d = value.shape
    _, lq, _, n_levels, n_points, _ = sampling_locations.shape
    if len(spatial_shapes) != n_levels:
        raise ValueError(f"{len(spatial_shapes)} spatial shapes for {n_levels} sampling levels")
    if sum(h * w for h, w in spatial_shapes) != s:
        raise ValueError(f"spatial shapes {list(spatial_shapes)} do not add up to {s} value tokens")
    dtype = torch.promote_types(value.dtype, torch.float32)
    # the label lets profilers (benchmarks/bench_downstream.py) attribute the core's time; a
    # compiled graph has no place for it (dynamo would warn on every trace)
    label = nullcontext() if torch.compiler.is_compiling() else torch.profiler.record_function("msda_core")
    with label, torch.autocast(device_type=value.device.type, enabled=False):
        value = value.to(dtype)
        grids = sampling_locations.to(dtype) * 2 - 1  # grid_sample's [-1, 1] convention
        per_level = value.split([h * w for h, w in spatial_shapes], dim=1)
        sampled = []
        for level, (h, w) in enumerate(spatial_shapes):
            # (N, HW, M, D) -> (N*M, D, H, W); grid (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
            value_l = per_level[level].permute(0, 2, 3, 1).reshape(n * m, d, h, w)
            grid_l = grids[:, :, :, level].transpose(1, 2).reshape(n * m, lq, n_points, 2)
            sampled.append(
                F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
            )  # (N*M, D, Lq, P)
        stacked = torch.stack(sampled, dim=-2).flatten(-2)  # (N*M, D, Lq, L*P)
        weights = attention_weights.to(dtype).transpose(1, 2).reshape(n * m, 1, lq, n_levels * n_points)
        out = (stacked * weights).sum(-1).view(n, m * d, lq)
    return out.transpose(1, 2).contiguous()


class MultiScaleDeformableAttention(nn.Module):
    """Deformable DETR's ``MSDeformAttn`` (with ViT-Adapter's ``ratio``); parameter names match.

    Args:
        dim: query / input channels (``d_model``).
        n_levels: levels in the sampled input.
        n_heads: attention heads.
        n_points: sampling points per head and level.
        ratio: value channels = ``int(dim * ratio)`` (ViT-Adapter's ``deform_ratio``).
    """

    def __init__(self, dim: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4, ratio: float = 1.0) -> None:
        super().__init__()
        value_dim = int(dim * ratio)
        if value_dim % n_heads != 0:
            raise ValueError(f"value channels {value_dim} (dim * ratio) must be divisible by n_heads={n_heads}")
        self.dim, self.n_levels, self.n_heads, self.n_points = dim, n_levels, n_heads, n_points
        self.value_dim = value_dim
        self.sampling_offsets = nn.Linear(dim, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(dim, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(dim, value_dim)
        self.output_proj = nn.Linear(value_dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's init: offsets start on a ring (head h points at angle 2*pi*h/M,
        point p at distance p + 1 pixels), uniform attention, Xavier projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        ring = torch.stack([thetas.cos(), thetas.sin()], -1)
        ring = ring / ring.abs().max(-1, keepdim=True)[0]
        ring = ring.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        ring = ring * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(ring.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        ref_points: Tensor,
        inputs: Tensor,
        spatial_shapes: SpatialShapes,
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        """``query (N, Lq, C)``, ``ref_points (N|1, Lq, L|1, 2)`` in [0, 1] as (x, y),
        ``inputs (N, S, C)`` (levels concatenated), ``padding_mask (N, S)`` True where padded."""
        n, lq, _ = query.shape
        _, s, _ = inputs.shape
        if ref_points.shape[-1] != 2:
            raise ValueError(f"reference points must be (x, y) pairs, got last dim {ref_points.shape[-1]}")
        value = self.value_proj(inputs)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(n, s, self.n_heads, self.value_dim // self.n_heads)
        offsets = self.sampling_offsets(query).view(n, lq, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(n, lq, self.n_heads, self.n_levels * self.n_points)
        # softmax and locations in fp32 at least: a bf16 location is off by up to 1/256 of the map
        dtype = torch.promote_types(query.dtype, torch.float32)
        weights = weights.to(dtype).softmax(-1).view(n, lq, self.n_heads, self.n_levels, self.n_points)
        # offsets are in pixels of each level: normalise by (W_l, H_l)
        normaliser = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=dtype, device=query.device)
        locations = ref_points.to(dtype)[:, :, None, :, None, :] + offsets.to(dtype) / normaliser[None, None, None, :, None, :]
        out = msda_core(value, spatial_shapes, locations, weights)
        return self.output_proj(out.to(query.dtype))
