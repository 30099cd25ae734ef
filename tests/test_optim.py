"""mpvgbench.optim.build_optimizer: parameter groups, their lrs and weight decay."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn as nn

from mpvgbench.config import ParamGroup, Recipe
from mpvgbench.optim import build_optimizer, optimizer_kwargs


class TinyViT(nn.Module):
    """The parameter names of a ViT: stem, class token, PE, blocks, Last LN, head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Linear(4, 8)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 8))
        self.blocks = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8))
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}


def groups_by_param(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, tuple[float, float]]:
    """name -> (lr, weight_decay) of the group holding it; frozen parameters are absent."""
    ids = {id(p): name for name, p in model.named_parameters()}
    return {ids[id(p)]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}


T2T_GROUPS = (
    ParamGroup(match=("head.*",), lr_scale=1.0),
    ParamGroup(match=("patch_embed.*", "blocks.*"), lr_scale=0.01),
    ParamGroup(match=("cls_token", "pos_embed", "norm.*"), lr_scale=0.0),
)


def v1_build_optimizer(model: Any, recipe: Recipe) -> Any:
    """What wave 1 built (timm with DeiT's no-decay rule), kept here as the reference."""
    from timm.optim import create_optimizer_v2

    kwargs = {"momentum": recipe.momentum} if recipe.optimizer == "sgd" else {}
    return create_optimizer_v2(model, opt=recipe.optimizer, lr=recipe.scaled_lr(),
                               weight_decay=recipe.weight_decay, filter_bias_and_bn=True, **kwargs)


def test_without_groups_it_is_the_v1_optimizer() -> None:
    """Recipes without the new fields build what wave 1's optimizer built."""
    for recipe in (Recipe(), Recipe(optimizer="sgd", lr=0.1, lr_base_batch=None), Recipe(optimizer="lamb")):
        model = TinyViT()
        new, old = build_optimizer(model, recipe), v1_build_optimizer(model, recipe)
        assert type(new) is type(old)
        assert groups_by_param(new, model) == groups_by_param(old, model)
        strip = [{k: v for k, v in g.items() if k != "params"} for g in new.param_groups]
        assert strip == [{k: v for k, v in g.items() if k != "params"} for g in old.param_groups]


def test_deit_weight_decay_skips_norms_biases_and_embeddings() -> None:
    model = TinyViT()
    groups = groups_by_param(build_optimizer(model, Recipe()), model)
    lr = Recipe().scaled_lr()
    assert groups["head.weight"] == groups["blocks.1.weight"] == (lr, 0.05)
    for name in ("head.bias", "norm.weight", "blocks.0.weight", "pos_embed", "cls_token"):
        assert groups[name] == (lr, 0.0), name


def test_t2t_transfer_groups_lrs_and_decay_on_everything() -> None:
    model = TinyViT()
    recipe = Recipe(optimizer="sgd", nesterov=False, lr=5e-2, lr_base_batch=128, batch_size=128,
                    weight_decay=5e-4, param_groups=T2T_GROUPS, decay_all_params=True)
    optimizer = build_optimizer(model, recipe)
    assert isinstance(optimizer, torch.optim.SGD)
    groups = groups_by_param(optimizer, model)
    assert groups["head.weight"] == groups["head.bias"] == (5e-2, 5e-4)
    for name in ("patch_embed.weight", "blocks.0.bias", "blocks.1.weight"):
        assert groups[name] == pytest.approx((5e-4, 5e-4)), name
    assert not {"cls_token", "pos_embed", "norm.weight", "norm.bias"} & set(groups)  # frozen
    assert optimizer.param_groups[0]["lr"] == 5e-2  # what the trainer logs: the head's lr
    for group in optimizer.param_groups:
        assert group["momentum"] == 0.9 and group["nesterov"] is False


def test_groups_keep_the_default_decay_rule_and_unmatched_train_at_lr() -> None:
    model = TinyViT()
    recipe = Recipe(lr=1e-3, lr_base_batch=None, param_groups=(ParamGroup(match=("blocks.*",), lr_scale=0.1),))
    groups = groups_by_param(build_optimizer(model, recipe), model)
    assert groups["blocks.1.weight"] == pytest.approx((1e-4, 0.05))
    assert groups["blocks.1.bias"] == pytest.approx((1e-4, 0.0))
    assert groups["head.weight"] == (1e-3, 0.05) and groups["pos_embed"] == (1e-3, 0.0)


def test_first_matching_group_wins_and_frozen_params_stay_out() -> None:
    model = TinyViT()
    model.head.bias.requires_grad_(False)
    recipe = Recipe(lr=1e-3, lr_base_batch=None, param_groups=(
        ParamGroup(match=("head.weight",), lr_scale=2.0), ParamGroup(match=("head.*",), lr_scale=0.5)))
    groups = groups_by_param(build_optimizer(model, recipe), model)
    assert groups["head.weight"][0] == 2e-3 and "head.bias" not in groups


def test_a_group_matching_nothing_is_a_user_error() -> None:
    recipe = Recipe(param_groups=(ParamGroup(match=("backbone.*",), lr_scale=0.1),))
    with pytest.raises(ValueError, match=r"match no parameter of TinyViT; fix the patterns"):
        build_optimizer(TinyViT(), recipe)
    everything_frozen = Recipe(param_groups=(ParamGroup(match=("*",), lr_scale=0.0),))
    with pytest.raises(ValueError, match="freeze every parameter"):
        build_optimizer(TinyViT(), everything_frozen)


def test_scheduler_decays_each_group_from_its_own_lr_to_min_lr() -> None:
    from timm.scheduler import CosineLRScheduler

    model = TinyViT()
    recipe = Recipe(optimizer="sgd", lr=5e-2, lr_base_batch=None, param_groups=T2T_GROUPS, min_lr=2e-4,
                    decay_all_params=True)
    optimizer = build_optimizer(model, recipe)
    scheduler = CosineLRScheduler(optimizer, t_initial=10, lr_min=recipe.min_lr, t_in_epochs=False)
    scheduler.step_update(5)
    head, backbone = (g["lr"] for g in optimizer.param_groups)
    assert head == pytest.approx(2e-4 + (5e-2 - 2e-4) / 2)
    assert backbone == pytest.approx(2e-4 + (5e-4 - 2e-4) / 2)


def test_nesterov_only_for_sgd() -> None:
    assert build_optimizer(TinyViT(), Recipe(optimizer="sgd")).param_groups[0]["nesterov"] is True  # timm's sgd
    assert build_optimizer(TinyViT(), Recipe(optimizer="sgd", nesterov=False)).param_groups[0]["nesterov"] is False
    # `optimizer: adamw` over the T2T fine-tune (nesterov: false) must still build: ignored
    assert isinstance(build_optimizer(TinyViT(), Recipe(optimizer="adamw", nesterov=False)), torch.optim.AdamW)


def test_fused_adamw_only_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA path's arguments, checked without a GPU; CPU builds the plain AdamW."""
    assert optimizer_kwargs(Recipe(), "cuda") == {"fused": True}
    assert optimizer_kwargs(Recipe(), "cpu") == {}
    assert optimizer_kwargs(Recipe(optimizer="sgd"), "cuda") == {"momentum": 0.9}
    monkeypatch.setattr("mpvgbench.optim.fused_adamw_available", lambda: False)
    assert optimizer_kwargs(Recipe(), "cuda") == {}
    optimizer: Any = build_optimizer(TinyViT(), Recipe(), "cpu")
    assert optimizer.defaults.get("fused") in (None, False)


@pytest.mark.parametrize("method", ["default", "lape", "pvg", "mpvg"])
def test_t2t_finetune_groups_cover_the_real_t2t_vit_7(method: str) -> None:
    """Every parameter of T2T-ViT-7 lands where the transfer script puts it, for every method."""
    import mpvgbench.models as models
    from mpvgbench.optim import build_param_groups
    from mpvgbench.recipes import default_recipe

    recipe = default_recipe("t2t", "cifar100")
    with torch.device("meta"):
        model = models.build_model("t2t_vit_7", method, num_classes=100, img_size=32)
    lr_of = {id(p): g["lr"] for g in build_param_groups(model, recipe) for p in g["params"]}
    for name, param in model.named_parameters():
        top = name.split(".")[0]
        expected = {"head": 5e-2, "patch_embed": 5e-4, "blocks": 5e-4, "pe_chain": 5e-4}.get(top)
        if not param.requires_grad:  # the fixed sinusoidal PE, the Performer's random features
            expected = None
        assert lr_of.get(id(param)) == pytest.approx(expected) if expected else id(param) not in lr_of, name
