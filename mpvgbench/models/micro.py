"""ViT-Micro: a DeiT-shaped toy for sklearn's 8x8 digits, trainable in seconds on a CPU.

8x8 single-channel images, 2x2 patches -> 16 tokens, dim 64, 4 blocks, 4 heads, MLP ratio 2.
Same PE machinery as DeiT, so every method and knob runs end to end in smoke tests.
"""

from __future__ import annotations

from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from mpvgbench.models._cfg import model_cfg
from mpvgbench.models.deit import MPVGVisionTransformer
from mpvgbench.models.pe import DEFAULT_METHOD, entry_method

__all__ = ["MPVGViTMicro", "mpvg_vit_micro_patch2_8"]


class MPVGViTMicro(MPVGVisionTransformer):
    """DeiT's code at toy size; its own family so PE methods can claim it."""

    pe_family = "micro"


default_cfgs = generate_default_cfgs({
    "mpvg_vit_micro_patch2_8": model_cfg(
        num_classes=10, input_size=(1, 8, 8), crop_pct=1.0, interpolation="bilinear",
        mean=(0.5,), std=(0.5,),
    ),
})


@register_model
def mpvg_vit_micro_patch2_8(pretrained: bool = False, **kwargs: Any) -> MPVGVisionTransformer:
    """ViT-Micro (8x8, 1 channel by default). ``pe_method=`` preset / knob dict / PEMethod."""
    if pretrained:
        raise ValueError("mpvg_vit_micro_patch2_8 has no pretrained weights")
    args: dict[str, Any] = {
        "img_size": 8,
        "patch_size": 2,
        "in_chans": 1,
        "num_classes": 10,
        "embed_dim": 64,
        "depth": 4,
        "num_heads": 4,
        "mlp_ratio": 2.0,
        **kwargs,
    }
    args["pe_method"] = entry_method(args.get("pe_method", DEFAULT_METHOD), args["depth"], "micro")
    return build_model_with_cfg(MPVGViTMicro, "mpvg_vit_micro_patch2_8", pretrained=False, **args)
