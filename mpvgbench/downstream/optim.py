"""AdamW parameter groups and learning-rate schedules of the official ViT-Adapter-Ti configs.

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
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["detection_param_groups", "poly_schedule", "segmentation_layer_id", "segmentation_param_groups", "step_schedule"]

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


def _linear_warmup(it: int, warmup_iters: int, warmup_ratio: float) -> float:
    # MMCV's linear warmup: factor goes from warmup_ratio at iteration 0 to 1 at warmup_iters
    if it >= warmup_iters:
        return 1.0
    return 1.0 - (1.0 - it / warmup_iters) * (1.0 - warmup_ratio)


def step_schedule(
    optimizer: torch.optim.Optimizer,
    iters_per_epoch: int,
    steps: Sequence[int] = (27, 33),
    gamma: float = 0.1,
    warmup_iters: int = 500,
    warmup_ratio: float = 0.001,
) -> LambdaLR:
    """MMDet's 3x schedule, stepped once per iteration: lr x 0.1 at epochs 27 and 33, linear
    warmup over the first 500 iterations from 0.001 x lr (``warmup_ratio`` times the regular lr)."""

    def factor(it: int) -> float:
        epoch = it // iters_per_epoch
        return gamma ** sum(epoch >= s for s in steps) * _linear_warmup(it, warmup_iters, warmup_ratio)

    return LambdaLR(optimizer, factor)


def poly_schedule(
    optimizer: torch.optim.Optimizer,
    max_iters: int = 160_000,
    power: float = 1.0,
    warmup_iters: int = 1500,
    warmup_ratio: float = 1e-6,
    min_lr: float = 0.0,
) -> LambdaLR:
    """MMSeg's poly schedule with linear warmup, stepped once per iteration:
    ``lr = (lr0 - min_lr) * (1 - it / max_iters) ** power + min_lr`` times the warmup factor,
    per group (so layer-wise scales are kept; ``min_lr`` is absolute, as MMCV's)."""
    base = [g["lr"] for g in optimizer.param_groups]

    def make(lr0: float) -> Any:
        def factor(it: int) -> float:
            poly = (lr0 - min_lr) * (1 - min(it, max_iters) / max_iters) ** power + min_lr
            return poly / lr0 * _linear_warmup(it, warmup_iters, warmup_ratio) if lr0 else 0.0

        return factor

    return LambdaLR(optimizer, [make(lr0) for lr0 in base])
