"""Model registry: short names -> timm-registered backbones that take a ``pe_method``.

``import mpvgbench.models`` registers every available family with timm, so
``timm.create_model("mpvg_deit_tiny_patch16_224", pe_method="mpvg")`` and
``timm.list_models("mpvg_*")`` work. Families written elsewhere (Swin, CeiT, T2T) are imported
guarded: a family whose module does not exist yet is skipped; one that fails to import is
reported by a warning now and by :func:`build_model` when asked for.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import timm
import torch.nn as nn
from timm.models import is_model, model_entrypoint

from mpvgbench.methods import MethodLike, resolve_method
from mpvgbench.models.pe import (  # noqa: F401  (re-exported)
    PEBlock,
    PEModelMixin,
    PEOutputs,
    PositionEmbeddingChain,
    fold_last_ln_pe,
    pe_cache,
)


@dataclass(frozen=True)
class ModelInfo:
    """One short name: where it lives, its timm name and its defaults."""

    module: str
    timm_name: str
    family: str
    img_size: int
    depth: int
    token: str  # a substring of the timm name, used to find it if the module named it differently


_MODELS: dict[str, ModelInfo] = {
    "deit_tiny": ModelInfo("mpvgbench.models.deit", "mpvg_deit_tiny_patch16_224", "deit", 224, 12, "deit_tiny"),
    "deit_small": ModelInfo("mpvgbench.models.deit", "mpvg_deit_small_patch16_224", "deit", 224, 12, "deit_small"),
    "deit_base": ModelInfo("mpvgbench.models.deit", "mpvg_deit_base_patch16_224", "deit", 224, 12, "deit_base"),
    "swin_tiny": ModelInfo("mpvgbench.models.swin", "mpvg_swin_tiny_patch4_window7_224", "swin", 224, 12, "swin_tiny"),
    "ceit_tiny": ModelInfo("mpvgbench.models.ceit", "mpvg_ceit_tiny_patch16_224", "ceit", 224, 12, "ceit_tiny"),
    "t2t_vit_7": ModelInfo("mpvgbench.models.t2t", "mpvg_t2t_vit_7", "t2t", 224, 7, "t2t_vit_7"),
    "vit_lite_7_4": ModelInfo("mpvgbench.models.vit_lite", "mpvg_vit_lite_7_4_32", "vit_lite", 32, 7, "vit_lite_7_4"),
    "vit_micro": ModelInfo("mpvgbench.models.micro", "mpvg_vit_micro_patch2_8", "micro", 8, 4, "vit_micro"),
}

# Our own families must import; a failure there is a bug, not a missing file.
_REQUIRED = {"mpvgbench.models.deit", "mpvgbench.models.vit_lite", "mpvgbench.models.micro"}
_IMPORT_ERRORS: dict[str, BaseException] = {}


def _import_family(module: str) -> bool:
    if module in _REQUIRED:
        importlib.import_module(module)
        return True
    try:
        importlib.import_module(module)
        return True
    except Exception as e:  # a missing or broken sibling module must not break the whole package
        _IMPORT_ERRORS[module] = e
        if not (isinstance(e, ModuleNotFoundError) and e.name == module):  # not merely unwritten
            warnings.warn(f"{module} failed to import: {type(e).__name__}: {e}", stacklevel=2)
        return False


for _module in dict.fromkeys(info.module for info in _MODELS.values()):
    _import_family(_module)


def list_models() -> list[str]:
    """Every short model name (a family whose module is missing still has its name here)."""
    return list(_MODELS)


def available_models() -> list[str]:
    """Short names whose family imported and registered with timm."""
    return [n for n in _MODELS if _resolve_timm_name(n, raise_missing=False) is not None]


def _info(name: str) -> ModelInfo:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(_MODELS)}")
    return _MODELS[name]


def _resolve_timm_name(name: str, raise_missing: bool = True) -> Optional[str]:
    info = _info(name)
    if is_model(info.timm_name):
        return info.timm_name
    # the family module may have chosen another timm name: find its unique match
    candidates = [
        n for n in timm.list_models("mpvg_*")
        if info.token in n and model_entrypoint(n).__module__ == info.module
    ]
    if len(candidates) == 1:
        return candidates[0]
    if raise_missing:
        err = _IMPORT_ERRORS.get(info.module)
        raise ValueError(
            f"model {name!r} is not available: {info.module} "
            + (f"failed to import ({type(err).__name__}: {err})" if err else f"registers no {info.timm_name!r}")
        ) from err
    return None


def timm_name(name: str) -> str:
    """The timm model name of a short name."""
    resolved = _resolve_timm_name(name)
    assert resolved is not None
    return resolved


def model_family(name: str) -> str:
    """'deit', 'swin', 'ceit', 't2t', 'vit_lite' or 'micro'."""
    return _info(name).family


def default_img_size(name: str) -> int:
    return _info(name).img_size


def model_depth(name: str) -> int:
    """Number of transformer blocks (the range of ``last_ln_pe``)."""
    return _info(name).depth


def build_model(
    name: str,
    method: MethodLike,
    num_classes: int = 1000,
    img_size: Optional[int] = None,
    **kw: Any,
) -> nn.Module:
    """Build ``name`` (a short name) with position-embedding ``method``; never pretrained.

    ``kw`` goes to the model constructor (e.g. ``drop_path_rate``, ``in_chans``).
    Raises ``ValueError`` for an unknown name or a method the model cannot hold.
    """
    info = _info(name)
    pe_method = resolve_method(method)
    pe_method.validate_for_depth(info.depth)
    return timm.create_model(
        timm_name(name),
        pretrained=False,
        pe_method=pe_method,
        num_classes=num_classes,
        img_size=img_size if img_size is not None else info.img_size,
        **kw,
    )


__all__ = [
    "ModelInfo",
    "PEBlock",
    "PEModelMixin",
    "PEOutputs",
    "PositionEmbeddingChain",
    "available_models",
    "build_model",
    "default_img_size",
    "fold_last_ln_pe",
    "list_models",
    "model_depth",
    "model_family",
    "pe_cache",
    "timm_name",
]
