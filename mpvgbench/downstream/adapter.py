"""ViT-Adapter (Chen et al. 2022) around our DeiT with any position-embedding method.

The DeiT is ``mpvgbench.models.build_model("deit_tiny", method, num_classes=0)`` held as
``adapter.vit``, so a Table-1 classification checkpoint loads by parameter name
(:meth:`ViTAdapter.load_classification_weights`). The PE enters exactly as in classification:
the raw ``pos_0`` (class-token row dropped: the adapter has no class token) is interpolated
bicubically from the pre-training grid to the feature grid, added to the input when the method
says so, and the method's chain (LN'_l ...) is run on that interpolated ``pos_0``, so every block
gets its layer-wise PE on the feature grid and each delivered PE token is an LN output as in
classification. ``last_ln`` decides what happens after the last block (docs/downstream.md):
``"skip"`` (default, official ViT-Adapter: no final LN, so no Last-LN PE term) or ``"apply"``
(Last LN per token plus MPVG's ``LN''(pos_k)``, the classification path). ``layer_scale``
(default on, as official) gives every block learnable per-channel gammas initialised to 1.

Which ViT tokens join the pyramid (``add_vit_feature``) differs between the official
repositories and is :class:`TokenPyramid`'s ``source``: detection adds the last tokens to every
level, segmentation the tokens after interaction ``i`` to level ``i`` (``build_vit_adapter``
picks by task).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from timm.layers import LayerScale, trunc_normal_
from torch import Tensor, nn

from mpvgbench.downstream.adapter_modules import InteractionBlock, SpatialPriorModule, run_block
from mpvgbench.downstream.msda import MultiScaleDeformableAttention
from mpvgbench.methods import MethodLike
from mpvgbench.models.pe import PEOutputs, add_last_ln_pe

__all__ = [
    "AdapterConfig", "DETECTION_WINDOWS", "TokenPyramid", "ViTAdapter", "build_vit_adapter", "interaction_indexes_for",
]

LastLN = Literal["skip", "apply"]
TokenSource = Literal["last", "per_interaction"]
# the official add_vit_feature: tokens (stride 16) resized to strides 4, 8, 16, 32
_LEVEL_SCALES = (4.0, 2.0, 1.0, 0.5)

# the official detection config: blocks 2, 5, 8, 11 attend globally, the others in 14x14 windows
DETECTION_WINDOWS: tuple[int | None, ...] = (14, 14, None) * 4


@dataclass(frozen=True)
class AdapterConfig:
    """ViT-Adapter-Ti's settings (official configs ``*_deit_adapter_tiny_*``)."""

    conv_inplane: int = 64
    n_points: int = 4
    deform_heads: int = 6
    init_values: float = 0.0  # injector layer scale gamma starts at 0
    interaction_indexes: tuple[tuple[int, int], ...] = ((0, 2), (3, 5), (6, 8), (9, 11))
    with_cffn: bool = True
    cffn_ratio: float = 0.25
    deform_ratio: float = 1.0
    add_vit_feature: bool = True
    use_extra_extractor: bool = True
    drop_path_rate: float = 0.1
    # per block: window size, or None for global attention (segmentation: all global)
    window_sizes: tuple[int | None, ...] = field(default_factory=lambda: (None,) * 12)
    last_ln: LastLN = "skip"
    # which tokens add_vit_feature adds (TokenPyramid); build_vit_adapter sets it per task
    vit_tokens: TokenSource = "last"
    # czczup/ViT-Adapter {detection/mmdet_custom,segmentation/mmseg_custom}/models/backbones/
    # base/vit.py: TIMMVisionTransformer(layer_scale=True), kept by the Ti configs; per-channel
    # gammas on both branches of every block, initialised to ones (identity at init)
    layer_scale: bool = True

    def __post_init__(self) -> None:
        if self.last_ln not in ("skip", "apply"):
            raise ValueError(f"last_ln must be 'skip' or 'apply', got {self.last_ln!r}")
        if self.vit_tokens not in ("last", "per_interaction"):
            raise ValueError(f"vit_tokens must be 'last' or 'per_interaction', got {self.vit_tokens!r}")


class TokenPyramid(nn.Module):
    """ViT tokens added to the four adapter levels (official ``add_vit_feature``), resized
    bilinearly from stride 16 to strides 4, 8, 16, 32.

    ``source="last"`` (czczup/ViT-Adapter ``detection/.../vit_adapter.py``): the tokens after the
    last interaction go to every level. ``source="per_interaction"`` (``segmentation/...``): the
    tokens after interaction ``i`` (blocks 2, 5, 8, 11 for Ti) go to level ``i``.
    """

    def __init__(self, source: TokenSource) -> None:
        super().__init__()
        self.source = source

    def forward(self, levels: list[Tensor], tokens: list[Tensor]) -> list[Tensor]:
        """``levels``: four maps ``(B, C, h_i, w_i)``; ``tokens``: the token maps ``(B, C, H, W)``
        after each interaction, in order."""
        chosen = tokens if self.source == "per_interaction" else [tokens[-1]] * len(levels)
        if len(chosen) != len(levels):
            raise ValueError(f"{self.source} tokens need one interaction per level ({len(levels)}), got {len(tokens)}")
        return [level + _rescale(t, scale) for level, t, scale in zip(levels, chosen, _LEVEL_SCALES)]

    def extra_repr(self) -> str:
        return f"source={self.source!r}"


def _rescale(x: Tensor, scale: float) -> Tensor:
    return x if scale == 1.0 else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


class ViTAdapter(nn.Module):
    """Four feature maps at strides 4, 8, 16, 32 with the ViT's width (192 for DeiT-Ti)."""

    def __init__(self, vit: nn.Module, config: AdapterConfig = AdapterConfig()) -> None:
        super().__init__()
        depth, dim = len(vit.blocks), vit.embed_dim
        if len(config.window_sizes) != depth:
            raise ValueError(f"window_sizes needs one entry per block ({depth}), got {len(config.window_sizes)}")
        covered = [i for a, b in config.interaction_indexes for i in range(a, b + 1)]
        if covered != list(range(depth)):
            raise ValueError(f"interaction_indexes {config.interaction_indexes} must cover blocks 0..{depth - 1} in order")
        if getattr(vit, "num_classes", 0):
            raise ValueError("build the ViT with num_classes=0: the adapter has no classifier")
        self.vit = vit
        self.config = config
        # the checkpoint keys this adapter adds to the ViT (absent from classification checkpoints)
        self.added_vit_keys: frozenset[str] = frozenset(_add_layer_scale(vit, dim) if config.layer_scale else ())
        self.level_embed = nn.Parameter(torch.zeros(3, dim))
        self.spm = SpatialPriorModule(config.conv_inplane, dim)
        n = len(config.interaction_indexes)
        self.interactions = nn.Sequential(
            *[
                InteractionBlock(
                    dim,
                    config.deform_heads,
                    config.n_points,
                    config.deform_ratio,
                    config.init_values,
                    config.with_cffn,
                    config.cffn_ratio,
                    config.drop_path_rate,
                    extra_extractor=config.use_extra_extractor and i == n - 1,
                )
                for i in range(n)
            ]
        )
        self.up = nn.ConvTranspose2d(dim, dim, 2, 2)
        self.token_pyramid = TokenPyramid(config.vit_tokens) if config.add_vit_feature else None
        self.norm1, self.norm2, self.norm3, self.norm4 = (nn.BatchNorm2d(dim) for _ in range(4))
        for part in (self.up, self.spm, self.interactions):
            part.apply(_init_weights)
        for m in self.modules():
            if isinstance(m, MultiScaleDeformableAttention):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    # -- weights -------------------------------------------------------------------------------

    def load_classification_weights(self, state: Mapping[str, Any]) -> None:
        """Load a classification checkpoint (a state dict or a trainer checkpoint with ``model``)
        into ``self.vit``: every key must match except the classifier ``head.*`` and the layer-scale
        gammas this adapter added (left at their init, 1). Nothing is loaded on a key mismatch."""
        model_state = state["model"] if isinstance(state.get("model"), Mapping) else state
        backbone = {k: v for k, v in model_state.items() if not k.startswith("head.")}
        expected = set(self.vit.state_dict())
        unexpected = sorted(set(backbone) - expected)
        missing = sorted(expected - set(backbone) - self.added_vit_keys)
        if unexpected or missing:
            # checked before loading so a wrong checkpoint (e.g. another PE method's) leaves the
            # model untouched and names the keys, as strict=True would
            raise ValueError(
                f"checkpoint does not match the adapter's ViT: unexpected keys {unexpected}, missing keys {missing}"
                " (only head.* and the adapter's layer-scale gammas may differ; is it another PE method's checkpoint?)"
            )
        self.vit.load_state_dict(backbone, strict=False)

    # -- forward -------------------------------------------------------------------------------

    def position_embedding(self, hw: tuple[int, int]) -> tuple[Tensor, PEOutputs]:
        """``pos_0`` on the ``hw`` token grid ``(1, H*W, C)`` and the method's PE chain run on it."""
        vit = self.vit
        pos0 = vit.pos_embed[:, 1:] if vit.cls_token is not None else vit.pos_embed
        gh, gw = vit.patch_embed.grid_size
        grid = pos0.reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=hw, mode="bicubic", align_corners=False)
        pos = grid.flatten(2).transpose(1, 2)
        # uncached on purpose: the cache is keyed on pos_0's storage, and this pos is a fresh tensor
        return pos, vit.pe_chain.compute(pos)

    def forward_with_tokens(self, img: Tensor) -> tuple[list[Tensor], Tensor]:
        """The four maps and the final ViT tokens ``(B, H/16 * W/16, C)`` (after ``last_ln``)."""
        b, _, ih, iw = img.shape
        if ih % 32 or iw % 32:
            raise ValueError(f"input {ih}x{iw} must be a multiple of 32 on both sides; pad it (MMDet's size_divisor=32)")
        c1, c2, c3, c4 = self.spm(img)
        c_shapes = [(ih // 8, iw // 8), (ih // 16, iw // 16), (ih // 32, iw // 32)]
        c = torch.cat([c2 + self.level_embed[0], c3 + self.level_embed[1], c4 + self.level_embed[2]], dim=1)

        vit = self.vit
        x = vit.patch_embed.proj(img)
        hw = (x.shape[2], x.shape[3])
        x = vit.patch_embed.norm(x.flatten(2).transpose(1, 2))
        pos, pe = self.position_embedding(hw)
        if vit.pe_method.add_to_input:
            x = x + pos
        x = vit.norm_pre(vit.pos_drop(x))

        token_maps: list[Tensor] = []  # the tokens after each interaction
        for interaction, (first, last) in zip(self.interactions, self.config.interaction_indexes):
            x = interaction.inject(x, c, c_shapes, hw)
            for i in range(first, last + 1):
                x = run_block(vit.blocks[i], x, pe.blocks[i], hw, self.config.window_sizes[i])
            c = interaction.extract(x, c, c_shapes, hw)
            token_maps.append(x)
        if self.config.last_ln == "apply":  # the tokens after the last block, wherever they go
            x = token_maps[-1] = add_last_ln_pe(vit.norm(x), pe)

        sizes = [h * w for h, w in c_shapes]
        maps = [t.transpose(1, 2).reshape(b, -1, h, w) for t, (h, w) in zip(c.split(sizes, dim=1), c_shapes)]
        levels = [self.up(maps[0]) + c1, *maps]
        if self.token_pyramid is not None:
            levels = self.token_pyramid(levels, [t.transpose(1, 2).reshape(b, -1, *hw) for t in token_maps])
        f1, f2, f3, f4 = levels
        feats = [self.norm1(f1), self.norm2(f2), self.norm3(f3), self.norm4(f4)]
        return feats, x

    def forward(self, img: Tensor) -> list[Tensor]:
        return self.forward_with_tokens(img)[0]


def _add_layer_scale(vit: nn.Module, dim: int) -> list[str]:
    """Give every block ``ls1``/``ls2`` = timm ``LayerScale(dim, init_values=1.0)`` where it has
    none (official ``gamma1``/``gamma2``); returns the new parameter names within ``vit``."""
    added = []
    for i, block in enumerate(vit.blocks):
        for name in ("ls1", "ls2"):
            current = getattr(block, name)
            if isinstance(current, LayerScale):
                continue  # the ViT already has layer scale: its checkpoint carries the gammas
            if not isinstance(current, nn.Identity):
                raise ValueError(f"blocks.{i}.{name} is a {type(current).__name__}; layer_scale needs Identity or LayerScale")
            setattr(block, name, LayerScale(dim, init_values=1.0))
            added.append(f"blocks.{i}.{name}.gamma")
    return added


def _init_weights(m: nn.Module) -> None:
    # ViT-Adapter's init for its own (non-ViT) parts
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def build_vit_adapter(
    method: MethodLike,
    task: Literal["detection", "segmentation"],
    *,
    model: str = "deit_tiny",
    pretrain_img_size: int = 224,
    vit_kwargs: Mapping[str, Any] | None = None,
    **config: Any,
) -> ViTAdapter:
    """ViT-Adapter-Ti around ``model`` with PE ``method``; ``task`` picks the official attention
    layout (detection: 14x14 windows except every third block; segmentation: all global) and
    the official token pyramid (detection: the last tokens; segmentation: per interaction).
    ``config`` overrides :class:`AdapterConfig` fields; ``vit_kwargs`` go to ``build_model``."""
    from mpvgbench.models import build_model

    if task not in ("detection", "segmentation"):
        raise ValueError(f"task must be 'detection' or 'segmentation', got {task!r}")
    kwargs: dict[str, Any] = {"drop_path_rate": config.get("drop_path_rate", AdapterConfig.drop_path_rate)}
    kwargs.update(vit_kwargs or {})
    vit = build_model(model, method, num_classes=0, img_size=pretrain_img_size, **kwargs)
    depth = len(vit.blocks)
    if "window_sizes" not in config:
        config["window_sizes"] = DETECTION_WINDOWS[:depth] if task == "detection" else (None,) * depth
    config.setdefault("vit_tokens", "last" if task == "detection" else "per_interaction")
    return ViTAdapter(vit, AdapterConfig(**config))


def interaction_indexes_for(depth: int, n: int = 4) -> tuple[tuple[int, int], ...]:
    """Even split of ``depth`` blocks into ``n`` interactions (12, 4 -> the official [[0,2],...])."""
    if depth % n:
        raise ValueError(f"depth {depth} does not split into {n} equal interactions")
    step = depth // n
    return tuple((i * step, i * step + step - 1) for i in range(n))

