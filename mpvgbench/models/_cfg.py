"""The one pretrained-cfg template every mpvg_* model's ``default_cfgs`` starts from."""

from __future__ import annotations

from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


def model_cfg(**overrides: Any) -> dict[str, Any]:
    """timm pretrained-cfg fields with ImageNet defaults (no weights: ``url`` is empty).

    An override set to ``None`` removes the field (e.g. ``first_conv`` of a model without one).
    """
    cfg = {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        **overrides,
    }
    return {key: value for key, value in cfg.items() if value is not None}
