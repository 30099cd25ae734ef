"""ViT-Lite-7/4 (Hassani et al., "Escaping the Big Data Paradigm with Compact Transformers").

Matches the official Compact-Transformers ``vit_7_4_32`` (our own code, timm modules):

- tokenizer: one 4x4 stride-4 conv with bias, no activation, no max-pool (32x32 -> 64 tokens);
  kaiming-normal conv weight;
- class token (zeros) and a learnable PE initialised trunc-normal std 0.2 (``pool='token'``);
- 7 blocks, dim 256, 4 heads, MLP ratio 2, qkv without bias, attention dropout 0.1, projection /
  MLP dropout 0, drop path linearly 0 -> 0.1, ``nn.LayerNorm`` (eps 1e-5), Linear trunc-normal
  std 0.02 with zero bias;
- CCT block ordering: ``x = x + dp(attn(norm1(x) + pe)); x = norm2(x); x = x + dp(mlp(x))``
  (the official encoder layer normalises the residual stream itself before the MLP);
- final LayerNorm and a linear head.

The PE method is handled exactly as in DeiT (:class:`MPVGVisionTransformer`).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

from mpvgbench.methods import PEMethod
from mpvgbench.models._cfg import model_cfg
from mpvgbench.models.deit import MPVGVisionTransformer
from mpvgbench.models.pe import DEFAULT_METHOD, PEBlock, attention_with_pe, entry_method

__all__ = ["CCTBlock", "MPVGViTLite"]


class CCTBlock(PEBlock):
    """Compact-Transformers encoder layer: the MLP half runs on (and adds to) ``norm2(x)``."""

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        pe: Optional[Tensor] = None,
        attn_mask: Optional[Tensor] = None,
        is_causal: bool = False,
        rope: Optional[Tensor] = None,
    ) -> Tensor:
        x = self.norm2(attention_with_pe(self, x, pe, attn_mask, is_causal, rope))
        return x + self.drop_path2(self.ls2(self.mlp(x)))


class MPVGViTLite(MPVGVisionTransformer):
    """ViT-Lite: a :class:`MPVGVisionTransformer` with CCT blocks and CCT initialisation."""

    block_fn = CCTBlock
    pe_family = "vit_lite"

    def __init__(self, pe_method: PEMethod = DEFAULT_METHOD, **kwargs: Any) -> None:
        kwargs.setdefault("norm_layer", nn.LayerNorm)  # torch default eps 1e-5, as CCT
        super().__init__(pe_method=pe_method, **kwargs)
        self._init_cct()
        if self.pe_encoding is not None:  # CCT's init re-drew pos_0: let the method set it again
            self.pe_encoding.init_pos_embed(self.pos_embed)

    @torch.no_grad()
    def _init_cct(self) -> None:
        # CCT: Linear trunc-normal 0.02 / zero bias (timm's default already), LN 1/0, conv kaiming
        # normal with PyTorch's default bias init, class token zeros, PE trunc-normal std 0.2.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.kaiming_normal_(self.patch_embed.proj.weight)
        if self.cls_token is not None:
            nn.init.zeros_(self.cls_token)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.2)


default_cfgs = generate_default_cfgs({
    "mpvg_vit_lite_7_4_32": model_cfg(
        num_classes=100, input_size=(3, 32, 32), crop_pct=1.0,
        mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761),  # CIFAR-100
    ),
})


@register_model
def mpvg_vit_lite_7_4_32(pretrained: bool = False, **kwargs: Any) -> MPVGViTLite:
    """ViT-Lite-7/4 on 32x32 (CIFAR-100 by default). ``pe_method=`` preset / knob dict / PEMethod."""
    if pretrained:
        raise ValueError("mpvg_vit_lite_7_4_32 has no pretrained weights")
    args: dict[str, Any] = {
        "img_size": 32,
        "patch_size": 4,
        "num_classes": 100,
        "embed_dim": 256,
        "depth": 7,
        "num_heads": 4,
        "mlp_ratio": 2.0,
        "qkv_bias": False,
        "attn_drop_rate": 0.1,
        "drop_path_rate": 0.1,
        **kwargs,
    }
    args["pe_method"] = entry_method(args.get("pe_method", DEFAULT_METHOD), args["depth"], "vit_lite")
    return build_model_with_cfg(MPVGViTLite, "mpvg_vit_lite_7_4_32", pretrained=False, **args)
