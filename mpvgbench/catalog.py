"""The model catalog: one table of facts about every short model name, importable without torch.

`mpvgbench.models` registers these with timm; spec validation and matrix expansion read the
same table without importing torch or timm (3 s), so `run --dry-run` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpvgbench.errors import UnknownNameError


@dataclass(frozen=True)
class ModelInfo:
    """A short model name and what the rest of the package needs to know about it."""

    name: str
    family: str  # deit, swin, ceit, t2t, vit_lite, micro
    module: str  # the module that registers it with timm
    timm_name: str
    depth: int  # transformer blocks (Swin: all stages together): the range of last_ln_pe
    default_img_size: int
    token_stride: int  # img_size must be a multiple of it
    smoke_img_size: int  # a small size the model builds and runs at (run --smoke)
    in_chans: int = 3


MODEL_TABLE: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        ModelInfo("deit_tiny", "deit", "mpvgbench.models.deit", "mpvg_deit_tiny_patch16_224", 12, 224, 16, 32),
        ModelInfo("deit_small", "deit", "mpvgbench.models.deit", "mpvg_deit_small_patch16_224", 12, 224, 16, 32),
        ModelInfo("deit_base", "deit", "mpvgbench.models.deit", "mpvg_deit_base_patch16_224", 12, 224, 16, 32),
        # Swin: patch 4 then 3 merges -> a multiple of 32. Smoke at 64 (stages 16/8/4/2): the
        # 7x7 window is clamped per stage, which the model supports (tested).
        ModelInfo("swin_tiny", "swin", "mpvgbench.models.swin", "mpvg_swin_tiny_patch4_window7_224", 12, 224, 32, 64),
        ModelInfo("ceit_tiny", "ceit", "mpvgbench.models.ceit", "mpvg_ceit_tiny_patch16_224", 12, 224, 16, 32),
        ModelInfo("t2t_vit_7", "t2t", "mpvgbench.models.t2t", "mpvg_t2t_vit_7", 7, 224, 16, 32),
        ModelInfo("vit_lite_7_4", "vit_lite", "mpvgbench.models.vit_lite", "mpvg_vit_lite_7_4_32", 7, 32, 4, 32),
        ModelInfo("vit_micro", "micro", "mpvgbench.models.micro", "mpvg_vit_micro_patch2_8", 4, 8, 2, 8, in_chans=1),
    )
}


def model_info(name: str) -> ModelInfo:
    """Facts about a short model name; ``ValueError`` naming the known ones otherwise."""
    try:
        return MODEL_TABLE[name]
    except KeyError:
        raise UnknownNameError(f"unknown model {name!r}; allowed: {', '.join(MODEL_TABLE)}") from None


def known_models() -> list[str]:
    return list(MODEL_TABLE)
