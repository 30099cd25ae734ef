"""The optimizer of a recipe: timm's optimizers over parameter groups built from the recipe.

Two kinds of grouping combine here:

* weight decay: as DeiT (and timm's ``create_optimizer_v2``), 1-d parameters (norms, biases) and
  the model's ``no_weight_decay()`` names (position embeddings, class token) get none, unless
  ``recipe.decay_all_params`` (T2T-ViT's transfer script decays every parameter);
* learning rate: ``recipe.param_groups`` give parameters matched by name an lr multiplier
  (T2T-ViT's transfer script: backbone at 0.01x, new head at 1x); ``lr_scale: 0`` freezes them.

Each optimizer group carries its own ``lr`` (base lr x scale), so timm's schedulers (which read
each group's initial lr) warm up and decay every group from its own peak to the common
``min_lr``, as ``torch.optim.lr_scheduler.CosineAnnealingLR(eta_min=...)`` does in that script.
Groups are ordered by decreasing lr: ``param_groups[0]["lr"]`` (what the trainer logs) is the
recipe's lr whenever any parameter trains at it.

With neither option set, this builds exactly what the first version's optimizer builder built.
"""

from __future__ import annotations

import fnmatch
import inspect
from typing import Any

import torch
import torch.nn as nn

from mpvgbench.config import Recipe


def lr_scale_of(name: str, recipe: Recipe) -> float:
    """The lr multiplier of a parameter: that of the first group matching its name, else 1."""
    for group in recipe.param_groups or ():
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in group.match):
            return group.lr_scale
    return 1.0


def _takes_weight_decay(name: str, param: nn.Parameter, recipe: Recipe, exempt: set[str]) -> bool:
    if recipe.decay_all_params:
        return True
    # timm's rule (param_groups_weight_decay): 1-d tensors, biases and no_weight_decay() names
    one_d = param.ndim <= 1 or name.endswith(".bias")
    return not (one_d or any(fnmatch.fnmatch(name, pattern) for pattern in exempt))


def build_param_groups(model: nn.Module, recipe: Recipe) -> list[dict[str, Any]]:
    """Optimizer groups keyed by (lr scale, weight decay), each with its ``lr`` and ``weight_decay``.

    Frozen parameters (``requires_grad=False``, or ``lr_scale`` 0) are left out, as timm does.
    Raises ValueError when a group matches no parameter at all (a typo would otherwise silently
    train everything at the base lr); a pattern may match nothing (``cls_token`` under GAP).
    """
    base_lr = recipe.scaled_lr()
    exempt = set(getattr(model, "no_weight_decay", lambda: set())())
    all_names = [name for name, _ in model.named_parameters()]
    for group in recipe.param_groups or ():
        if not any(fnmatch.fnmatchcase(name, pattern) for name in all_names for pattern in group.match):
            raise ValueError(
                f"recipe.param_groups {list(group.match)} match no parameter of "
                f"{type(model).__name__}; fix the patterns (names look like {all_names[0]!r})"
            )
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    buckets: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, param in named:
        scale = lr_scale_of(name, recipe)
        if scale == 0:
            continue
        decays = recipe.weight_decay > 0 and _takes_weight_decay(name, param, recipe, exempt)
        buckets.setdefault((scale, decays), []).append(param)
    # decreasing lr; within an lr, the no-decay group first (timm's order)
    ordered = sorted(buckets.items(), key=lambda item: (-item[0][0], item[0][1]))
    return [
        {
            "params": params,
            "lr": base_lr * scale,
            "weight_decay": recipe.weight_decay if decays else 0.0,
        }
        for (scale, decays), params in ordered
    ]


def fused_adamw_available() -> bool:
    return "fused" in inspect.signature(torch.optim.AdamW).parameters


def optimizer_kwargs(recipe: Recipe, device_type: str) -> dict[str, Any]:
    """Extra keyword arguments for timm's ``create_optimizer_v2``."""
    kwargs: dict[str, Any] = {}
    if recipe.optimizer == "sgd":
        kwargs["momentum"] = recipe.momentum
        if recipe.nesterov is not None:  # timm's "sgd" is Nesterov SGD unless told otherwise
            kwargs["nesterov"] = recipe.nesterov
    if recipe.optimizer == "adamw" and device_type == "cuda" and fused_adamw_available():
        kwargs["fused"] = True  # one kernel for all parameters: the same update, faster
    return kwargs


def build_optimizer(model: nn.Module, recipe: Recipe, device_type: str = "cpu") -> torch.optim.Optimizer:
    """The recipe's optimizer over ``model``'s trainable parameters (see the module docstring).

    ``device_type`` is the type of the device the model lives on ("cuda" turns on fused AdamW).
    """
    from timm.optim import create_optimizer_v2

    kwargs = optimizer_kwargs(recipe, device_type)
    if recipe.param_groups is None and not recipe.decay_all_params:
        # timm's own grouping from the model (filter_bias_and_bn + model.no_weight_decay())
        return create_optimizer_v2(
            model, opt=recipe.optimizer, lr=recipe.scaled_lr(), weight_decay=recipe.weight_decay,
            filter_bias_and_bn=True, **kwargs,
        )
    groups = build_param_groups(model, recipe)
    if not groups:
        raise ValueError("recipe.param_groups freeze every parameter; give some group an lr_scale > 0")
    return create_optimizer_v2(
        groups, opt=recipe.optimizer, lr=recipe.scaled_lr(), weight_decay=recipe.weight_decay, **kwargs
    )


__all__ = ["build_optimizer", "build_param_groups", "fused_adamw_available", "lr_scale_of"]
