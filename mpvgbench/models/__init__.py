"""Model registry: short names -> timm-registered backbones that take a ``pe_method``.

``import mpvgbench.models`` registers every family with timm, so
``timm.create_model("mpvg_deit_tiny_patch16_224", pe_method="mpvg")`` and
``timm.list_models("mpvg_*")`` work. The short names and their facts are the torch-free
``mpvgbench.catalog``.
"""

from __future__ import annotations

import importlib
from typing import Any, Optional

import timm
import torch
import torch.nn as nn

from mpvgbench import pe_plugins  # noqa: F401  (a worker finds the plugin methods its config names)
from mpvgbench.catalog import MODEL_TABLE, ModelInfo, model_info
from mpvgbench.methods import MethodLike, resolve_method
from mpvgbench.models.pe import (  # noqa: F401  (re-exported)
    PEBlock,
    PEModelMixin,
    PEOutputs,
    PositionEmbeddingChain,
    fold_last_ln_pe,
)

for _module in dict.fromkeys(info.module for info in MODEL_TABLE.values()):
    importlib.import_module(_module)  # each registers its mpvg_* models with timm


def list_models() -> list[str]:
    """Every short model name."""
    return list(MODEL_TABLE)


def timm_name(name: str) -> str:
    """The timm model name of a short name."""
    return model_info(name).timm_name


def model_family(name: str) -> str:
    """'deit', 'swin', 'ceit', 't2t', 'vit_lite' or 'micro'."""
    return model_info(name).family


def default_img_size(name: str) -> int:
    return model_info(name).default_img_size


def model_depth(name: str) -> int:
    """Number of transformer blocks (the range of ``last_ln_pe``)."""
    return model_info(name).depth


def build_model(
    name: str,
    method: MethodLike,
    num_classes: int = 1000,
    img_size: Optional[int] = None,
    **kw: Any,
) -> nn.Module:
    """Build ``name`` (a short name) with position-embedding ``method``; never pretrained.

    ``kw`` goes to the model constructor (e.g. ``drop_path_rate``, ``in_chans``).
    Raises ``ValueError`` for an unknown name or a method the model cannot hold. ``method`` is
    resolved and checked against the depth once, by the registered timm entry point
    (:func:`~mpvgbench.models.pe.entry_method`); a ``PEMethod`` passes through as is.
    """
    info = model_info(name)
    return timm.create_model(
        info.timm_name,
        pretrained=False,
        pe_method=method,
        num_classes=num_classes,
        img_size=img_size if img_size is not None else info.default_img_size,
        **kw,
    )


def count_params(name: str, method: MethodLike, num_classes: int = 1000, img_size: Optional[int] = None,
                 **kw: Any) -> int:
    """Parameters of ``build_model(name, method, ...)``, frozen ones too (the paper's counts).

    Built on the meta device: tensors with shapes but no memory and no initialisation, so
    DeiT-B's 86M parameters cost what DeiT-Ti's do (`mpvgbench models --params`: seconds).
    """
    with torch.device("meta"):
        model = build_model(name, method, num_classes=num_classes, img_size=img_size, **kw)
    return sum(p.numel() for p in model.parameters())


def build_model_for_config(config: Any, **kwargs: Any) -> nn.Module:
    """The model a ``TrainConfig`` trains: ``config.model`` with ``config.method``, its classes,
    image size and the channels of its dataset's images (1 for the digits).

    ``config.method`` may be a :class:`~mpvgbench.methods.PEMethod` or a knob mapping (today's
    ``TrainConfig``); ``kwargs`` go to the constructor (``drop_rate``, ``drop_path_rate``, ...).
    """
    # lazy: keeps `import mpvgbench.models` (timm registration) free of the data/config layer
    from mpvgbench.data import DATASETS, input_channels

    if config.dataset in DATASETS:  # digits are 1-channel; the model must match the data
        kwargs.setdefault("in_chans", input_channels(config))  # synthetic: the model's own
    return build_model(
        config.model,
        resolve_method(config.method),
        num_classes=config.num_classes,
        img_size=config.img_size,
        **kwargs,
    )


__all__ = [
    "ModelInfo",
    "PEBlock",
    "PEModelMixin",
    "PEOutputs",
    "PositionEmbeddingChain",
    "build_model",
    "build_model_for_config",
    "count_params",
    "default_img_size",
    "fold_last_ln_pe",
    "list_models",
    "model_depth",
    "model_family",
    "timm_name",
]
