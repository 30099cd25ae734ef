"""The interface a position-embedding method is written on (re-exported by ``models/pe.py``).

:class:`PositionEncoding` has one hook per place a PE can act (see ``models/pe.py``);
:class:`PEContext` is what a method may know about its backbone; :class:`PEOutputs` is what a
forward pass takes from the methods; :func:`rotary_attention` is timm attention with q/k rotated.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm, apply_rot_embed_cat
from torch import Tensor, nn

from mpvgbench.errors import MethodError
from mpvgbench.methods import PEMethod, encoding_info

__all__ = ["PEContext", "PEOutputs", "PositionEncoding", "Transform", "WindowShape", "build_encoding",
           "rotary_attention"]

Transform = Callable[[Tensor, int], Tensor]
"""``transform(pe, stage)``: a PE laid out for stage ``stage - 1`` -> the layout of ``stage``."""


class PEOutputs(NamedTuple):
    """What a forward pass needs from the PE: per-block PE, the Last-LN term, per-block rotary
    tables (``None``: no rotary embedding)."""

    blocks: tuple[Optional[Tensor], ...]
    last: Optional[Tensor]
    rope: Optional[tuple[Tensor, ...]] = None


class WindowShape(NamedTuple):
    """One block of a windowed backbone (Swin): its width, heads and attention window (h, w)."""

    dim: int
    num_heads: int
    window: tuple[int, int]


@dataclass(frozen=True)
class PEContext:
    """What a PE method module may know about the backbone it is built into."""

    family: str
    depth: int
    dim: int
    num_heads: int
    grid: tuple[int, int]  # patch grid (H, W); the patch tokens are its row-major flattening
    num_prefix_tokens: int  # class token(s) before the patch tokens
    norm_layer: Callable[[int], nn.Module] = LayerNorm
    # windowed backbones (Swin): one entry per block; attention (and so a rotary table) acts on the
    # tokens of one window, whose width and heads change per stage. Empty: global attention.
    windows: tuple[WindowShape, ...] = ()


class PositionEncoding(nn.Module):
    """A PE method's module: one hook per place a PE can act, each a no-op by default.

    Subclasses are built as ``cls(context)`` (:func:`build_encoding`) and override the places they
    act at. Every parameter they own is treated as a PE: no weight decay. ``foldable``: the method
    can be folded away at inference (:meth:`fold` returns an equivalent eval-time module).
    """

    foldable: bool = False
    # whether a windowed backbone keeps its relative position bias under this method (RoPE-ViT's
    # RoPE-Swin removes it: the rotary embedding replaces it)
    relative_position_bias: bool = True

    def __init__(self, context: Optional[PEContext] = None) -> None:
        super().__init__()
        self.context = context

    @classmethod
    def expected_parameters(cls, context: PEContext) -> Optional[int]:
        """How many parameters the module owns in ``context`` (``check-method`` compares;
        ``None``: not declared)."""
        return None

    def init_pos_embed(self, pos_embed: Optional[nn.Parameter]) -> None:
        """Set the value of the absolute PE ``pos_0`` (after the backbone's own init)."""

    def at_input(self, x: Tensor, pos0: Optional[Tensor]) -> Tensor:
        """The tokens entering block 0."""
        return x

    def block_terms(self, pos0: Optional[Tensor], transform: Optional[Transform] = None) -> Optional[PEOutputs]:
        """PE terms added inside the blocks (layer-wise) and at the Last LN; ``None``: none."""
        return None

    def rotary(self) -> Optional[tuple[Tensor, ...]]:
        """One rotary table per block (``(N, 2 * head_dim)`` or ``(heads, N, 2 * head_dim)``); on a
        windowed backbone ``N`` is the window's tokens (row-major), the same table for every window."""
        return None

    def after_block(self, index: int, x: Tensor) -> Tensor:
        """The tokens after block ``index`` (a module between blocks)."""
        return x


def build_encoding(method: PEMethod, context: PEContext) -> Optional[PositionEncoding]:
    """The method's own module, or ``None`` for the learned PE (the chain does all of it)."""
    info = encoding_info(method.encoding)
    if info.factory is None:
        return None
    factory = info.factory
    if isinstance(factory, str):
        module_name, _, attribute = factory.partition(":")
        factory = getattr(importlib.import_module(module_name), attribute)
    module = factory(context)
    if not isinstance(module, PositionEncoding):
        raise MethodError(f"PE method {method.encoding!r} built a {type(module).__name__}, not a PositionEncoding")
    return module


def rotary_attention(attn: Any, x: Tensor, rope: Tensor) -> Tensor:
    """timm ``Attention``'s forward with rotary embedding on the patch tokens' q and k.

    ``rope`` is a cat(sin, cos) table over the last ``N_patches`` tokens in timm's interleaved
    layout (``apply_rot_embed_cat``: pairs of channels rotate together, as the complex products of
    RoPE-ViT); the prefix tokens (class token) are not rotated, as in RoPE-ViT.
    """
    B, N, _ = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    prefix = N - rope.shape[-2]
    q = torch.cat([q[:, :, :prefix], apply_rot_embed_cat(q[:, :, prefix:], rope)], dim=2)
    k = torch.cat([k[:, :, :prefix], apply_rot_embed_cat(k[:, :, prefix:], rope)], dim=2)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    out = attn.norm(out.transpose(1, 2).reshape(B, N, attn.num_heads * attn.head_dim))
    return attn.proj_drop(attn.proj(out))
