"""The one position-embedding (PE) mechanism every backbone uses.

**The interface.** A PE method is a :class:`PositionEncoding` module; each hook is one place a PE
can act, and every hook defaults to "nothing", so a method overrides only its own places:

====================  ==================================================================
``init_pos_embed``    the value of the absolute PE ``pos_0`` (sin-cos fills and freezes it)
``at_input``          added at the input, before block 0 (``x_0 = patches + pos_0``)
``block_terms``       added before each block's attention (after its ``norm1``, layer-wise)
                      and to the Last LN's per-token output (:class:`PEOutputs`)
``rotary``            inside attention, on q/k of the patch tokens (one table per block)
``after_block``       a module between blocks (CPVT's PEG after block 0)
====================  ==================================================================

A backbone holds the paper's knobs as ``pe_chain`` (a :class:`PositionEmbeddingChain`, itself a
``PositionEncoding``: input, layer-wise and Last-LN places) and, when the method's ``encoding`` is
not the learned PE, the encoding's module as ``pe_encoding`` (``mpvgbench.models.pe_methods`` or
a plugin). :class:`PEModelMixin` asks both at every place; the blocks only see tensors (a PE term,
a rotary table), never a method name.

A backbone owns the raw PE ``pos_0`` (a learnable or frozen parameter) and a
:class:`PositionEmbeddingChain` built from the resolved :class:`~mpvgbench.methods.PEMethod`.
The chain owns every new LayerNorm the method adds and nothing else:

``pe_norms[str(l)]``  ``LN'_l``, one per block in ``method.blocks_with_pe(depth)``, at block l's dim.
``last_norm_pe``      ``LN''``, the Last-LN term (only when ``method.last_ln_pe`` is set).

``chain(pos0, transform, key_tensors)`` returns :class:`PEOutputs`:

``blocks[l]``  the PE delivered to block l (``None`` when the block gets none). Hierarchical:
               ``pos_l = LN'_l(pos_prev)`` where ``pos_prev`` is the last delivered PE (``pos_0``
               before the first LN'); non-hierarchical: ``pos_l = LN'_l(pos_0)``.
``last``       ``LN''(pos_k)`` per token, to add to the Last LN's per-token output before GAP.
               ``pos_0`` is always the raw PE (the paper's "initial PE"), also when block 0 has
               an LN'; ``pos_k`` (k >= 1) is the PE delivered to block k.

Delivery inside a block is ``x = x + drop_path(ls1(attn(norm1(x) + pe_l)))``; :class:`PEBlock`
(a timm ``Block``) does exactly that and leaves the MLP half unchanged.

Hierarchical backbones (Swin) pass per-block ``dims`` and ``stages`` and a ``transform(pe, s)``
callable that maps a PE laid out for stage ``s - 1`` to stage ``s`` (the same PatchMerging as the
tokens). The chain calls it whenever a PE crosses a stage boundary: the hierarchical carrier when
the next LN'-block is in a later stage, ``pos_0`` for non-hierarchical chains, and the Last-LN
source, which is brought to the final stage before ``LN''``. The chain is shape-agnostic: LN acts
on the last dim, so a PE may be ``(1, N, C)`` or ``(1, H, W, C)``.

No eval-time cache. The outputs depend only on the weights, and an earlier version cached them
in eval mode (keyed on tensor ``data_ptr`` / ``_version``), saving ``depth`` LayerNorms on a
``(1, N, C)`` tensor per forward at the price of special cases (analysis switched it off, every
family tested it). Measured eval throughput with / without it, paired medians of 5 interleaved
repetitions (CPU, 1 thread, process CPU time: the shared 2-core machine was too loaded for
2-thread timings) for lape / pvg / mpvg: ViT-Lite-7/4 (32 px) batch 1: 0.999x / 0.998x / 1.108x,
batch 64: 1.023x / 1.021x / 0.949x; DeiT-Ti (224 px) batch 1: 0.986x / 1.130x / 0.915x,
batch 64 (lape only, stopped for time): 1.065x. 2 threads, wall clock, ViT-Lite-7/4 batch 1:
0.930x / 0.940x / 1.348x, batch 64: 0.950x / 1.011x / 0.971x; DeiT-Ti batch 1: 1.002x / 0.987x /
0.956x. No consistent gain above the
noise (the LNs are well under 1% of a forward's work), so it went: the chain recomputes, and
under ``torch.compile`` the LNs are part of the graph anyway.

:func:`fold_last_ln_pe` folds the Last-LN term into the head bias for deployment.

Backbones subclass :class:`PEModelMixin` (``pe_chain``, ``pe_pos0()``, optional ``pe_transform()``),
which gives them ``pe_outputs()`` and makes them foldable.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
from timm.layers import LayerNorm
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from mpvgbench.errors import MethodError
from mpvgbench.methods import PRESETS, MethodLike, PEMethod, encoding_info, resolve_method
from mpvgbench.models.pe_interface import (  # noqa: F401  (re-exported: the one import for methods)
    PEContext,
    PEOutputs,
    PositionEncoding,
    Transform,
    WindowShape,
    build_encoding,
    rotary_attention,
)


__all__ = [
    "DEFAULT_METHOD",
    "PEContext",
    "PEOutputs",
    "PositionEncoding",
    "build_encoding",
    "Transform",
    "WindowShape",
    "PositionEmbeddingChain",
    "PEBlock",
    "PEModelMixin",
    "add_last_ln_pe",
    "entry_method",
    "require_no_encoding",
    "fold_last_ln_pe",
]


DEFAULT_METHOD: PEMethod = PRESETS["default"]


def entry_method(pe_method: MethodLike, depth: int, family: Optional[str] = None) -> PEMethod:
    """The one place a model's ``pe_method`` is parsed: at the timm entry points (the
    ``@register_model`` functions), so ``timm.create_model(..., pe_method="mpvg")`` still works.

    Resolves a preset name / knob mapping (a ``PEMethod`` passes through as is) and checks it
    against the model's ``depth`` and ``family`` (an encoding not defined for the family is a
    one-line :class:`MethodError`) and a plugin method against the plugin loaded now (an edited
    plugin under a stored job is refused). Every module below takes the ``PEMethod`` as given.
    """
    method = resolve_method(pe_method)
    method.validate_for_depth(depth)
    if method.encoding != DEFAULT_METHOD.encoding or family is not None:
        if family is not None:
            method.validate_for_family(family)
        identity = encoding_info(method.encoding).identity
        if method.plugin is not None and method.plugin != identity:
            raise MethodError(
                f"PE method {method.encoding!r} was recorded as plugin {method.plugin} but the loaded "
                f"plugin is {identity}: the plugin changed; rerun the spec to get new job keys"
            )
    return method


def require_no_encoding(method: PEMethod, model: str) -> None:
    """For backbones that build no method module (CeiT): refuse one instead of ignoring it."""
    if encoding_info(method.encoding).factory is not None:
        raise MethodError(f"PE method {method.encoding!r} is not defined for {model}; it takes the paper's "
                          "learned-PE methods only")


class PositionEmbeddingChain(PositionEncoding):
    """The LN' / LN'' modules of a method and the rules that chain them (see module docstring).

    Args:
        method: the resolved method, already checked against ``depth`` (:func:`entry_method`).
        depth: number of blocks.
        dim: embedding dim of every block, or one dim per block (Swin).
        stages: stage index per block (non-decreasing, from 0); ``None``: one stage.
        last_dim: dim of ``LN''``; default: the last block's dim.
        norm_layer: LayerNorm factory ``norm_layer(dim)``; default timm ``LayerNorm`` (eps 1e-6).
    """

    def __init__(
        self,
        method: PEMethod,
        depth: int,
        dim: int | Sequence[int],
        *,
        stages: Optional[Sequence[int]] = None,
        last_dim: Optional[int] = None,
        norm_layer: Callable[[int], nn.Module] = LayerNorm,
    ) -> None:
        super().__init__()
        self.method = method
        dims = [int(dim)] * depth if isinstance(dim, int) else [int(d) for d in dim]
        stage_list = [0] * depth if stages is None else [int(s) for s in stages]
        if len(dims) != depth or len(stage_list) != depth:
            raise ValueError(f"need {depth} dims and stages, got {len(dims)} and {len(stage_list)}")
        if stage_list and (stage_list[0] != 0 or any(b < a for a, b in zip(stage_list, stage_list[1:]))):
            raise ValueError(f"stages must start at 0 and never decrease, got {stage_list}")
        self.depth = depth
        self.dims = dims
        self.stages = stage_list
        self.pe_blocks: list[int] = self.method.blocks_with_pe(depth)
        self.pe_norms = nn.ModuleDict({str(i): norm_layer(dims[i]) for i in self.pe_blocks})
        self.last_norm_pe: Optional[nn.Module] = None
        if self.method.last_ln_pe is not None:
            self.last_norm_pe = norm_layer(last_dim if last_dim is not None else dims[-1])
        self.folded = False  # True once fold_last_ln_pe moved the LN'' term into the head bias

    @property
    def is_identity(self) -> bool:
        """True when the method adds no module (default, gap): nothing to compute per forward."""
        return not self.pe_blocks and self.last_norm_pe is None

    def norm_for(self, block_idx: int) -> Optional[nn.Module]:
        """``LN'_block_idx``, or ``None`` when that block receives no PE."""
        key = str(block_idx)
        return self.pe_norms[key] if key in self.pe_norms else None

    def compute(self, pos0: Tensor, transform: Optional[Transform] = None) -> PEOutputs:
        """The PE outputs (every call runs the LN' / LN'' modules, so their hooks see it)."""
        if self.is_identity:
            return PEOutputs((None,) * self.depth, None)
        hierarchical = self.method.hierarchical
        raw_at: list[Tensor] = [pos0]  # pos_0 brought to stage s, built lazily

        def to_stage(pe: Tensor, src: int, dst: int) -> Tensor:
            for s in range(src + 1, dst + 1):
                if transform is None:
                    raise ValueError("a multi-stage chain needs a transform between stages")
                pe = transform(pe, s)
            return pe

        def raw(stage: int) -> Tensor:
            while len(raw_at) <= stage:
                raw_at.append(to_stage(raw_at[-1], len(raw_at) - 1, len(raw_at)))
            return raw_at[stage]

        blocks: list[Optional[Tensor]] = [None] * self.depth
        cur, cur_stage = pos0, 0
        for idx in self.pe_blocks:
            stage = self.stages[idx]
            if hierarchical:
                cur, cur_stage = to_stage(cur, cur_stage, stage), stage
                cur = self.pe_norms[str(idx)](cur)
            else:
                cur = self.pe_norms[str(idx)](raw(stage))
            blocks[idx] = cur
        last: Optional[Tensor] = None
        if self.last_norm_pe is not None:
            k = self.method.last_ln_pe
            assert k is not None
            final = self.stages[-1] if self.stages else 0
            src = raw(final) if k == 0 else to_stage(blocks[k], self.stages[k], final)  # type: ignore[arg-type]
            last = self.last_norm_pe(src)
        return PEOutputs(tuple(blocks), last)

    def forward(self, pos0: Tensor, transform: Optional[Transform] = None) -> PEOutputs:
        return self.compute(pos0, transform)

    # --- the places of the interface: input, layer-wise and Last LN --------------------------
    def at_input(self, x: Tensor, pos0: Optional[Tensor]) -> Tensor:
        # Eq. 8; the PE has the class token's row when there is one
        return x + pos0 if self.method.add_to_input and pos0 is not None else x

    def block_terms(self, pos0: Optional[Tensor], transform: Optional[Transform] = None) -> Optional[PEOutputs]:
        if self.is_identity or pos0 is None:
            return None
        return self(pos0, transform)

    def no_weight_decay_names(self, prefix: str = "") -> set[str]:
        """Full names (with ``prefix``, e.g. ``"pe_chain."``) of every LN' / LN'' parameter."""
        return {prefix + name for name, _ in self.named_parameters()}

    def extra_repr(self) -> str:
        return f"method={self.method.label}, pe_blocks={self.pe_blocks}, folded={self.folded}"


def attention_with_pe(block: Any, x: Tensor, pe: Optional[Tensor], attn_mask: Optional[Tensor],
                      is_causal: bool, rope: Optional[Tensor] = None) -> Tensor:
    """The attention half of a timm ``Block`` with the LN'-delivered PE added after ``norm1``
    (Eq. 9): ``x + drop_path(ls(attn(norm1(x) + pe)))``, with q/k rotated by ``rope`` if given.
    Shared by every backbone's block."""
    h = block.norm1(x)
    if pe is not None:
        # in place when nothing records the graph: saves an allocation per block at inference
        h = h.add_(pe) if not torch.is_grad_enabled() and h is not x else h + pe
    if rope is None:
        out = block.attn(h, attn_mask=attn_mask, is_causal=is_causal)
    else:
        if attn_mask is not None or is_causal:
            raise ValueError("rotary attention takes no attention mask")
        out = rotary_attention(block.attn, h, rope)
    return x + block.drop_path1(block.ls1(out))


class PEBlock(Block):
    """timm ``Block`` that adds the delivered PE to the attention input: ``attn(norm1(x) + pe)``.

    With ``pe=None`` it is exactly timm's ``Block``. The MLP half is unchanged.
    """

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        pe: Optional[Tensor] = None,
        attn_mask: Optional[Tensor] = None,
        is_causal: bool = False,
        rope: Optional[Tensor] = None,
    ) -> Tensor:
        x = attention_with_pe(self, x, pe, attn_mask, is_causal, rope)
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


def add_last_ln_pe(x: Tensor, pe: PEOutputs) -> Tensor:
    """The Last LN's per-token output plus ``LN''(pos_k)`` (a no-op when the method has no term)."""
    return x if pe.last is None else x + pe.last


class PEModelMixin:
    """What a backbone implements so the chain, the method's module and :func:`fold_last_ln_pe`
    work.

    Subclasses set ``self.pe_method`` and ``self.pe_chain``, call :meth:`pe_build_encoding` once
    their layers exist, and implement :meth:`pe_pos0`. Multi-stage backbones also override
    :meth:`pe_transform`. Their classifier must be ``get_classifier()`` (timm) returning an
    ``nn.Linear``. In the forward: ``pe_at_input`` before block 0, ``pe_outputs()`` once (block
    terms, Last-LN term, rotary tables), ``pe_after_block`` after each block.
    """

    pe_method: PEMethod
    pe_chain: PositionEmbeddingChain
    # the method's own module, a submodule only when there is one (the learned PE's state dict is
    # unchanged); no class-level default: nn.Module would find it before its registered submodule
    pe_encoding: Optional[PositionEncoding]

    def pe_build_encoding(self, context: PEContext) -> None:
        encoding = build_encoding(self.pe_method, context)
        self.pe_encoding = encoding
        if encoding is not None:
            encoding.init_pos_embed(getattr(self, "pos_embed", None))

    def pe_pos0(self) -> Optional[Tensor]:
        """The raw PE ``pos_0`` (a parameter or a view of one; ``None`` when the method has none)."""
        raise NotImplementedError

    def pe_transform(self) -> Optional[Transform]:
        return None

    def pe_at_input(self, x: Tensor) -> Tensor:
        pos0 = self.pe_pos0()
        x = self.pe_chain.at_input(x, pos0)
        encoding = getattr(self, "pe_encoding", None)
        return x if encoding is None else encoding.at_input(x, pos0)

    def pe_outputs(self) -> PEOutputs:
        pos0 = self.pe_pos0()
        out = self.pe_chain(pos0, self.pe_transform()) if pos0 is not None else None
        if out is None:
            out = PEOutputs((None,) * self.pe_chain.depth, None)
        encoding = getattr(self, "pe_encoding", None)
        if encoding is None:
            return out
        extra = encoding.block_terms(pos0, self.pe_transform())
        if extra is not None:
            out = PEOutputs(tuple(_add(a, b) for a, b in zip(out.blocks, extra.blocks)), _add(out.last, extra.last))
        return out._replace(rope=encoding.rotary())

    def pe_after_block(self, index: int, x: Tensor) -> Tensor:
        encoding = getattr(self, "pe_encoding", None)
        return x if encoding is None else encoding.after_block(index, x)

    def pe_no_weight_decay(self) -> set[str]:
        names = self.pe_chain.no_weight_decay_names("pe_chain.")
        encoding = getattr(self, "pe_encoding", None)
        if encoding is not None:  # a PE method's parameters are PEs: no decay
            names |= {"pe_encoding." + name for name, _ in encoding.named_parameters()}
        return names


def _add(a: Optional[Tensor], b: Optional[Tensor]) -> Optional[Tensor]:
    return b if a is None else a if b is None else a + b


@torch.no_grad()
def fold_last_ln_pe(model: nn.Module, inplace: bool = False) -> nn.Module:
    """An equivalent model whose Last-LN PE term lives in the head bias.

    logits = W(mean_t(LN(x)_t + LN''(pos_k)_t)) + b = W mean_t(LN(x)_t) + (b + W c),
    with c = mean_t LN''(pos_k)_t. ``LN''`` is removed, so the folded state dict no longer loads
    into an unfolded model (and vice versa) by accident. Returns the model unchanged (a copy
    unless ``inplace``) when the method has no Last-LN term. Logits match within float error;
    per-token features after the Last LN do not (the term is gone).
    """
    if not isinstance(model, PEModelMixin):
        raise ValueError(f"{type(model).__name__} is not a PE model (no PEModelMixin)")
    folded = model if inplace else copy.deepcopy(model)
    assert isinstance(folded, PEModelMixin)
    chain = folded.pe_chain
    if chain.last_norm_pe is None:
        return folded
    last = chain.compute(folded.pe_pos0(), folded.pe_transform()).last
    assert last is not None
    c = last.reshape(-1, last.shape[-1]).float().mean(0)  # GAP's mean over tokens, input-free
    head = folded.get_classifier()  # type: ignore[attr-defined]
    if not isinstance(head, nn.Linear):
        raise ValueError(f"cannot fold into a {type(head).__name__} head; need nn.Linear")
    shift = (head.weight.float() @ c).to(head.weight.dtype)
    if head.bias is None:
        head.bias = nn.Parameter(shift.clone())
    else:
        head.bias.add_(shift)
    chain.last_norm_pe = None
    chain.folded = True
    return folded
