"""UperNet (Xiao et al. 2018) decode head and FCN auxiliary head, as MMSegmentation's
``UPerHead`` / ``FCNHead`` in the ViT-Adapter ADE20K config, and the segmenter around the adapter.

Conv blocks are conv (no bias) + BatchNorm + ReLU (MMSeg's ``ConvModule`` with SyncBN: the
dense trainer makes them global-batch BatchNorms under DDP), initialised as ``ConvModule``:
Kaiming-normal, fan_out, ReLU gain; BatchNorm weight 1, bias 0. Resizing is bilinear with
``align_corners=False`` throughout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mpvgbench.downstream.adapter import ViTAdapter, build_vit_adapter
from mpvgbench.methods import MethodLike

__all__ = ["ConvBNReLU", "FCNHead", "PyramidPoolingModule", "UPerHead", "UperNetSegmenter", "build_upernet"]


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel_size: int) -> None:
        conv = nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, bias=False)
        # MMCV ConvModule.init_weights (kaiming_init's defaults); PyTorch's own default
        # (Kaiming-uniform, a=sqrt(5)) gives about 5x smaller weights for the 3x3 convs
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        super().__init__(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class PyramidPoolingModule(nn.Module):
    """Average-pool to 1x1, 2x2, 3x3, 6x6, 1x1 conv each, upsample back (PSPNet's PPM)."""

    def __init__(self, cin: int, channels: int, pool_scales: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvBNReLU(cin, channels, 1)) for s in pool_scales
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        return [_resize(stage(x), x.shape[2:]) for stage in self.stages]


class UPerHead(nn.Module):
    """PPM on the coarsest level, FPN top-down fusion, concat of all levels at stride 4."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.ppm = PyramidPoolingModule(in_channels[-1], channels, pool_scales)
        self.bottleneck = ConvBNReLU(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvBNReLU(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, 0, 0.01)  # MMSeg's init of the classifier
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        top = feats[-1]
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats[:-1])]
        laterals.append(self.bottleneck(torch.cat([top, *self.ppm(top)], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):  # top-down: add the coarser level, upsampled
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        outs = [outs[0]] + [_resize(o, outs[0].shape[2:]) for o in outs[1:]]
        return self.conv_seg(self.dropout(self.fpn_bottleneck(torch.cat(outs, dim=1))))


class FCNHead(nn.Module):
    """Auxiliary head: one 3x3 conv block on one level, dropout, 1x1 classifier."""

    def __init__(self, cin: int, num_classes: int, channels: int = 256, num_convs: int = 1, dropout: float = 0.1) -> None:
        super().__init__()
        self.convs = nn.Sequential(*[ConvBNReLU(cin if i == 0 else channels, channels, 3) for i in range(num_convs)])
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, 0, 0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_seg(self.dropout(self.convs(x)))


class UperNetSegmenter(nn.Module):
    """Adapter + UPerHead (all four levels) + FCNHead on level ``aux_index`` (stride 16)."""

    def __init__(
        self,
        backbone: ViTAdapter,
        num_classes: int = 150,
        channels: int = 512,
        aux_channels: int = 256,
        aux_index: int = 2,
        aux_weight: float = 0.4,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        dim = backbone.vit.embed_dim
        self.backbone = backbone
        self.decode_head = UPerHead([dim] * 4, num_classes, channels)
        self.auxiliary_head = FCNHead(dim, num_classes, aux_channels)
        self.num_classes = num_classes
        self.aux_index = aux_index
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index
        self.register_buffer("pixel_mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, img: Tensor) -> tuple[Tensor, Tensor]:
        """Main and auxiliary logits at their heads' resolution (strides 4 and 16) for images in
        [0, 1] (normalised here with ImageNet's mean and std, as MMSeg's pipeline does)."""
        feats = self.backbone((img - self.pixel_mean) / self.pixel_std)
        return self.decode_head(feats), self.auxiliary_head(feats[self.aux_index])

    def losses(self, img: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Per-pixel cross entropy of both heads' logits upsampled to the label size
        (``labels``: ``(B, H, W)`` int64, ``ignore_index`` where unlabelled)."""
        main, aux = self(img)
        size = labels.shape[-2:]

        def ce(logits: Tensor) -> Tensor:
            # MMSeg 0.x (ViT-Adapter's 0.20): the mean runs over all pixels, ignored ones count as 0
            per_pixel = F.cross_entropy(_resize(logits, size), labels, ignore_index=self.ignore_index, reduction="none")
            return per_pixel.mean()

        return {"loss_seg": ce(main), "loss_aux": self.aux_weight * ce(aux)}

    @torch.no_grad()
    def predict_logits(self, img: Tensor, size: Sequence[int] | None = None) -> Tensor:
        """Main-head logits resized to ``size`` (default: the input's)."""
        return _resize(self(img)[0], size if size is not None else img.shape[2:])


def build_upernet(
    method: MethodLike,
    num_classes: int = 150,
    task: Literal["detection", "segmentation"] = "segmentation",
    head_channels: int = 512,
    aux_channels: int = 256,
    **adapter_config: Any,
) -> UperNetSegmenter:
    """ViT-Adapter-Ti (global attention, the official ADE20K config) + UperNet + FCN aux head.
    ``head_channels`` / ``aux_channels`` are the official 512 / 256 (smaller for tests)."""
    backbone = build_vit_adapter(method, task, **adapter_config)
    return UperNetSegmenter(backbone, num_classes, channels=head_channels, aux_channels=aux_channels)
