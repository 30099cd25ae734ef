"""AdamW parameter groups of the official ViT-Adapter-Ti configs, by parameter name.

Detection (MMDet ``paramwise_cfg.custom_keys``): no weight decay for any parameter whose name
contains ``level_embed``, ``pos_embed``, ``norm`` or ``bias``; one learning rate.

Segmentation (ViT-Adapter's BEiT ``LayerDecayOptimizerConstructor``, ``num_layers=12``,
``layer_decay_rate=0.95``): layer id 0 for ``pos_embed`` / ``cls_token`` / ``patch_embed``,
``i + 1`` for block ``i``, 13 for everything else (adapter, heads); lr x ``0.95 ** (13 - id)``.
No weight decay for 1-d parameters and biases only: the official rule compares the FULL name
with ``"pos_embed"``, which never matches, so ``pos_embed`` and ``level_embed`` are decayed
there, and here too. Our extra PE parameters (inferred): ``LN'_l`` shares block ``l``'s layer id,
``LN''`` the last id (it sits after the last block); both are 1-d, hence undecayed.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

__all__ = ["detection_param_groups", "segmentation_layer_id", "segmentation_param_groups"]

_NO_DECAY_KEYS = ("level_embed", "pos_embed", "norm", "bias")


def detection_param_groups(model: nn.Module, lr: float = 1e-4, weight_decay: float = 0.05) -> list[dict[str, Any]]:
    """Two groups (decay / no decay) for ``torch.optim.AdamW``; each lists its ``names``."""
    decay: dict[str, Any] = {"params": [], "names": [], "lr": lr, "weight_decay": weight_decay}
    no_decay: dict[str, Any] = {"params": [], "names": [], "lr": lr, "weight_decay": 0.0}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        group = no_decay if any(k in name for k in _NO_DECAY_KEYS) else decay
        group["params"].append(p)
        group["names"].append(name)
    return [g for g in (decay, no_decay) if g["params"]]


def segmentation_layer_id(name: str, num_layers: int = 12) -> int:
    """The BEiT layer id of a segmenter parameter (``backbone.vit.*`` is official ``backbone.*``)."""
    last = num_layers + 1
    local = name[len("backbone.vit.") :] if name.startswith("backbone.vit.") else None
    if local is None:
        return last
    if local in ("pos_embed", "cls_token") or local.startswith("patch_embed"):
        return 0
    block = re.match(r"blocks\.(\d+)\.", local)
    if block:
        return int(block.group(1)) + 1
    pe_norm = re.match(r"pe_chain\.pe_norms\.(\d+)\.", local)
    if pe_norm:
        return int(pe_norm.group(1)) + 1
    return last


def segmentation_param_groups(
    model: nn.Module,
    lr: float = 12e-5,
    weight_decay: float = 0.01,
    layer_decay: float = 0.95,
    num_layers: int = 12,
) -> list[dict[str, Any]]:
    """Groups per (layer id, decay or not) with ``lr = lr * layer_decay ** (num_layers + 1 - id)``."""
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = segmentation_layer_id(name, num_layers)
        decayed = not (p.ndim == 1 or name.endswith(".bias"))
        key = (layer, decayed)
        if key not in groups:
            scale = layer_decay ** (num_layers + 1 - layer)
            groups[key] = {"params": [], "names": [], "lr": lr * scale, "lr_scale": scale, "weight_decay": weight_decay if decayed else 0.0}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]
