"""DeiT-Ti/S/B (timm ``VisionTransformer``) with a position-embedding method.

The method decides the class token (``pool='token'``) and hence the PE rows (197 with the class
token's row, 196 without). ``add_to_input`` adds ``pos_0`` to the tokens before block 0 (LaPE
does not); blocks get the chain's LN'-delivered PE through :class:`PEBlock`; the Last LN is
applied per token, the Last-LN term is added per token, then GAP (or the class token) and the
head. timm's ``fc_norm`` path (pool first, normalise after) is never used.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from timm.layers import LayerNorm, get_norm_layer
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from mpvgbench.methods import PEMethod
from mpvgbench.models._cfg import model_cfg
from mpvgbench.models.pe import (
    DEFAULT_METHOD,
    PEBlock,
    PEContext,
    PEModelMixin,
    PositionEmbeddingChain,
    add_last_ln_pe,
    entry_method,
)

__all__ = ["MPVGVisionTransformer"]


class MPVGVisionTransformer(PEModelMixin, VisionTransformer):
    """timm ``VisionTransformer`` whose PE follows ``pe_method`` (a resolved PEMethod, already
    checked against ``depth`` by the registered entry point).

    ``class_token``, ``global_pool``, ``fc_norm`` and ``block_fn`` are set by the method and may
    not be passed. Everything else is timm's (LN eps 1e-6, qkv bias, trunc-normal init).
    """

    block_fn: type[PEBlock] = PEBlock  # subclasses swap the block (ViT-Lite: CCT ordering)
    pe_family: str = "deit"  # what a PE method's ``families`` are checked against

    def __init__(self, pe_method: PEMethod = DEFAULT_METHOD, **kwargs: Any) -> None:
        method = pe_method
        depth = int(kwargs.get("depth", 12))
        fixed = {"class_token", "global_pool", "fc_norm", "block_fn", "no_embed_class", "reg_tokens", "pos_embed"}
        clash = sorted(fixed & set(kwargs))
        if clash:
            raise ValueError(f"{', '.join(clash)} follow(s) from pe_method; do not pass them")
        # both change the token set per input, which the per-block PE rows cannot follow
        for unsupported in ("dynamic_img_size", "patch_drop_rate"):
            if kwargs.get(unsupported):
                raise ValueError(f"{unsupported} is not supported by the PE methods; leave it unset")
        super().__init__(
            class_token=method.has_class_token,
            global_pool="token" if method.has_class_token else "avg",
            fc_norm=False,  # Last LN per token (self.norm), never pool-then-normalise
            block_fn=self.block_fn,
            pos_embed="learn" if method.has_absolute_pe else "none",  # RoPE, PEG: no pos_0
            **kwargs,
        )
        self.pe_method = method
        # LN' / LN'' are the same kind of LayerNorm as the model's (timm's default: eps 1e-6)
        norm_layer = get_norm_layer(kwargs.get("norm_layer")) or LayerNorm
        self.pe_chain = PositionEmbeddingChain(method, depth, self.embed_dim, norm_layer=norm_layer)
        grid = tuple(int(g) for g in self.patch_embed.grid_size)
        self.pe_context = PEContext(self.pe_family, depth, self.embed_dim, int(kwargs.get("num_heads", 12)),
                                    (grid[0], grid[1]), self.num_prefix_tokens, norm_layer)
        self.pe_build_encoding(self.pe_context)

    def pe_pos0(self) -> Optional[Tensor]:
        return self.pos_embed

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        names = ({"pos_embed"} if self.pos_embed is not None else set())
        names |= {"cls_token"} if self.cls_token is not None else set()
        return names | self.pe_no_weight_decay()

    def _pos_embed(self, x: Tensor) -> Tensor:
        x = x.flatten(1, 2) if x.ndim == 4 else x
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        else:
            # PatchEmbed returns a transposed view; without the cat, every residual add would keep
            # that layout and each LayerNorm / Linear would copy it (about +10% time on CPU).
            x = x.contiguous()
        return self.pos_drop(self.pe_at_input(x))  # x + pos_0 when the method adds it (Eq. 8)

    def forward_features(self, x: Tensor) -> Tensor:  # type: ignore[override]
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        x = self.patch_drop(x)
        x = self.norm_pre(x)
        pe = self.pe_outputs()
        ropes = pe.rope if pe.rope is not None else (None,) * len(pe.blocks)
        for i, (blk, blk_pe, rope) in enumerate(zip(self.blocks, pe.blocks, ropes)):
            if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                x = checkpoint(blk, x, blk_pe, None, False, rope, use_reentrant=False)
            else:
                x = blk(x, blk_pe, rope=rope)
            x = self.pe_after_block(i, x)
        return add_last_ln_pe(self.norm(x), pe)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x[:, 0] if self.has_class_token else x.mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, *args: Any, **kwargs: Any) -> Any:
        # timm's version runs the blocks without the layer-wise PE: refuse rather than be wrong
        raise NotImplementedError("use forward hooks on blocks / pe_chain modules for intermediates")



default_cfgs = generate_default_cfgs({
    "mpvg_deit_tiny_patch16_224": model_cfg(),
    "mpvg_deit_small_patch16_224": model_cfg(),
    "mpvg_deit_base_patch16_224": model_cfg(),
})


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> MPVGVisionTransformer:
    if pretrained:
        raise ValueError(f"{variant} has no pretrained weights")
    kwargs["pe_method"] = entry_method(kwargs.get("pe_method", DEFAULT_METHOD), kwargs["depth"], "deit")
    return build_model_with_cfg(
        MPVGVisionTransformer,
        variant,
        pretrained=False,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=3, feature_cls="getter"),
        **kwargs,
    )


def _args(kwargs: dict[str, Any], **arch: Any) -> dict[str, Any]:
    return {"patch_size": 16, "depth": 12, "mlp_ratio": 4.0, "qkv_bias": True, **arch, **kwargs}


@register_model
def mpvg_deit_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> MPVGVisionTransformer:
    """DeiT-Ti: 192-d, 12 blocks, 3 heads. ``pe_method=`` preset / knob dict / PEMethod."""
    return _create("mpvg_deit_tiny_patch16_224", pretrained, **_args(kwargs, embed_dim=192, num_heads=3))


@register_model
def mpvg_deit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> MPVGVisionTransformer:
    """DeiT-S: 384-d, 12 blocks, 6 heads."""
    return _create("mpvg_deit_small_patch16_224", pretrained, **_args(kwargs, embed_dim=384, num_heads=6))


@register_model
def mpvg_deit_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> MPVGVisionTransformer:
    """DeiT-B: 768-d, 12 blocks, 12 heads."""
    return _create("mpvg_deit_base_patch16_224", pretrained, **_args(kwargs, embed_dim=768, num_heads=12))

