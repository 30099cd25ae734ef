"""Issue 6: what the position embedding does inside a trained model (paper Figs. 2, 4, 6, 7, 8).

Every activation comes from forward hooks on the real modules of the model the trainer built,
never from a re-implementation of its forward pass:

``blocks[l].norm1``          input ``x_l`` (token embedding entering block l) and ``norm1_l(x_l)``
``pe_chain.pe_norms[l]``     ``LN'_l`` output: the PE delivered to block l
``norm``                     the Last LN: its input and its per-token output
``pe_chain.last_norm_pe``    ``LN''(pos_k)``, MPVG's Last-LN PE term

Definitions (the paper does not spell them out; these are ours):

* *batch average* ``mean_b T[b]``: a ``(tokens, channels)`` matrix per tensor, over the first
  ``--images`` validation images (eval transforms, dataset order).
* *correlation* of block l (Fig. 4): Pearson's r between the batch-averaged ``norm1_l(x_l)`` and
  ``LN'_l`` output (input-independent, so its batch average is itself), both flattened over
  (patch tokens x channels). Class-token rows are dropped from both, so class-token and GAP
  runs are compared over the same 196 (DeiT) rows; see :func:`pearson`.
* *Last-LN statistics* (Fig. 6 / appendix): population variance (``ddof=0``, as ``numpy.var``)
  of the Last LN's ``beta`` (bias) and ``gamma`` (weight); cosine similarity between the token
  average before and after the Last LN, where *token average* is the mean over patch tokens of
  the batch average (GAP) or the class-token row (class-token runs), as in the paper's captions.
  *After* is what reaches the pooling: ``LN(x) + LN''(pos_k)`` for MPVG, ``LN(x)`` otherwise.
* *token-norm map* (Fig. 7): L2 norm over channels of each patch token of one image, before and
  after the Last LN, on the patch grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor, nn

from mpvgbench.methods import PEMethod

__all__ = [
    "Activations",
    "PAPER_REFERENCE",
    "collect_activations",
    "cosine",
    "last_ln_stats",
    "layer_correlations",
    "pearson",
]

NO_LAYERWISE_NOTE = "no layer-wise PE: correlation n/a"

# The paper's DeiT-Ti / ImageNet numbers (appendix, Fig. 6), printed beside ours for reference.
PAPER_REFERENCE: dict[str, dict[str, float]] = {
    "pvg": {"beta_var": 0.2387, "cosine": 0.2995},
    "mpvg": {"beta_var": 0.0193},
    "pvg_cls": {"cosine": 0.4597},
}


# ------------------------------------------------------------------------------- pure numbers


def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson's r of two equally-shaped tensors, flattened (all elements are samples).

    ``r = sum((a - mean a)(b - mean b)) / sqrt(sum((a - mean a)^2) sum((b - mean b)^2))``, in
    float64. NaN when either tensor is constant (r is undefined there, not 0).
    """
    if a.shape != b.shape:
        raise ValueError(f"pearson needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    x = a.detach().reshape(-1).double()
    y = b.detach().reshape(-1).double()
    x = x - x.mean()
    y = y - y.mean()
    denom = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum()) / denom if denom > 0 else math.nan


def cosine(a: Tensor, b: Tensor) -> float:
    """Cosine similarity of two flattened tensors (float64); NaN when either is zero."""
    x = a.detach().reshape(-1).double()
    y = b.detach().reshape(-1).double()
    denom = float(x.norm() * y.norm())
    return float(x @ y) / denom if denom > 0 else math.nan


def _finite_or_none(value: float) -> Optional[float]:
    # NaN does not survive JSON round trips through every database backend; None does.
    return None if value is None or not math.isfinite(value) else float(value)


# ---------------------------------------------------------------------------- hooks / capture


@dataclass
class Activations:
    """Batch-averaged activations of one model on a batch of images (all on CPU, float32).

    Token tensors are ``(tokens, channels)`` including prefix (class) tokens; ``pe`` tensors have
    the rows the model's PE has. ``num_prefix_tokens`` rows lead every token tensor.
    """

    method: PEMethod
    n_images: int
    num_prefix_tokens: int
    grid: tuple[int, int]  # patch grid of the tokens reaching the Last LN (Fig. 7 maps)
    block_in: list[Tensor]  # x_l, input of block l's norm1
    block_norm: list[Tensor]  # norm1_l(x_l)
    pe: list[Optional[Tensor]]  # LN'_l output delivered to block l; None: block gets no PE
    last_in: Tensor  # input of the Last LN
    last_ln: Tensor  # Last LN output (the module alone)
    last_pe: Optional[Tensor]  # LN''(pos_k): MPVG's term added after the Last LN
    sample_norms_in: Tensor  # (K, patch tokens): per-image token L2 norms before the Last LN
    sample_norms_out: Tensor  # (K, patch tokens): after (LN output + LN'' term)
    sample_images: Tensor  # (K, C, H, W): the images of those maps, as fed to the model
    gamma: Tensor = field(default_factory=lambda: torch.empty(0))
    beta: Tensor = field(default_factory=lambda: torch.empty(0))

    @property
    def depth(self) -> int:
        return len(self.block_norm)

    @property
    def last_out(self) -> Tensor:
        """What reaches the pooling: Last LN output plus the LN'' term when the method has one."""
        return self.last_ln if self.last_pe is None else self.last_ln + self.last_pe

    @property
    def has_layerwise_pe(self) -> bool:
        return any(p is not None for p in self.pe)

    def figure_arrays(self) -> dict[str, Any]:
        """Plain numpy arrays for :mod:`mpvgbench.analyze_plots` (its docstring lists the keys)."""
        return {
            "block_norm": [t.numpy() for t in self.block_norm],
            "pe": [p.numpy() if p is not None else None for p in self.pe],
            "last_in": self.last_in.numpy(),
            "last_out": self.last_out.numpy(),
            "last_pe": self.last_pe.numpy() if self.last_pe is not None else None,
            "gamma": self.gamma.numpy(),
            "beta": self.beta.numpy(),
            "num_prefix_tokens": self.num_prefix_tokens,
            "class_token": self.method.has_class_token,
            "grid": self.grid,
            "sample_images": self.sample_images.numpy(),
            "sample_norms_in": self.sample_norms_in.numpy(),
            "sample_norms_out": self.sample_norms_out.numpy(),
        }

    def patch_rows(self, t: Tensor) -> Tensor:
        """Drop the prefix (class) token rows of a token tensor (a PE without them is returned as is)."""
        n_patch = self.grid[0] * self.grid[1]
        return t[-n_patch:] if t.shape[0] > n_patch else t


def _blocks(model: nn.Module, depth: int) -> list[nn.Module]:
    """The blocks the PE chain indexes: ``model.blocks`` or, for staged backbones (Swin), every
    module with a ``norm1`` under a ``blocks`` container, in order (the T2T soft-split Performer
    blocks also have ``norm1`` but live outside ``blocks``)."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks) == depth:
        return list(blocks)
    found = [
        m for name, m in model.named_modules()
        if hasattr(m, "norm1") and ".blocks." in f".{name}" and name.rsplit(".", 1)[-1].isdigit()
    ]
    if len(found) != depth:
        raise ValueError(f"{type(model).__name__}: found {len(found)} blocks with norm1, PE chain has {depth}")
    return found


def _last_norm(model: nn.Module) -> nn.Module:
    norm = getattr(model, "norm", None)
    if norm is None or isinstance(norm, nn.Identity) or getattr(norm, "weight", None) is None:
        raise ValueError(f"{type(model).__name__} has no affine Last LN (model.norm); Last-LN analysis needs one")
    return norm


def _as_tokens(t: Tensor) -> Tensor:
    """``(B, N, C)`` or ``(B, H, W, C)`` -> ``(B, N, C)``, float32 on CPU."""
    return t.detach().reshape(t.shape[0], -1, t.shape[-1]).float().cpu()


def _grid(model: nn.Module, last_shape: torch.Size, n_tokens: int, n_prefix: int) -> tuple[int, int]:
    if len(last_shape) == 4:  # (B, H, W, C): staged backbones keep the grid
        return int(last_shape[1]), int(last_shape[2])
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    n_patch = n_tokens - n_prefix
    if grid is not None and int(grid[0]) * int(grid[1]) == n_patch:
        return int(grid[0]), int(grid[1])
    side = math.isqrt(n_patch)
    if side * side != n_patch:
        raise ValueError(f"cannot lay {n_patch} patch tokens out on a square grid")
    return side, side


class _Recorder:
    """Forward hooks that sum activations over images (and keep input-independent tensors and
    the first batch's per-image maps); :meth:`attach` registers them, the handles remove them."""

    def __init__(self, n_samples: int) -> None:
        self.n_samples = n_samples
        self.sums: dict[str, Tensor] = {}
        self.last: dict[str, Tensor] = {}  # input-independent tensors: the value of the last call
        self.calls: dict[str, int] = {}
        self.samples: dict[str, Tensor] = {}  # "in"/"out": the first batch's first images
        self.norm_in_shape: Optional[torch.Size] = None  # (B, N, C) or (B, H, W, C): the grid's source

    def accumulate(self, name: str, t: Tensor) -> None:
        t = _as_tokens(t).double()
        self.sums[name] = self.sums.get(name, 0) + t.sum(0)  # type: ignore[assignment]
        self.calls[name] = self.calls.get(name, 0) + 1

    def block_hook(self, idx: int):  # type: ignore[no-untyped-def]
        def hook(_m: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            self.accumulate(f"in{idx}", inputs[0])
            self.accumulate(f"norm{idx}", output)
        return hook

    def keep(self, name: str):  # type: ignore[no-untyped-def]
        def hook(_m: nn.Module, _inputs: tuple[Tensor, ...], output: Tensor) -> None:
            self.last[name] = _as_tokens(output)[0]
            self.calls[name] = self.calls.get(name, 0) + 1
        return hook

    def norm_hook(self, _m: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        self.accumulate("last_in", inputs[0])
        self.accumulate("last_ln", output)
        if not self.samples:  # first batch: per-image maps
            self.norm_in_shape = inputs[0].shape
            self.samples = {"in": _as_tokens(inputs[0][: self.n_samples]),
                            "out": _as_tokens(output[: self.n_samples])}

    def attach(self, chain: Any, blocks: list[nn.Module], norm: nn.Module) -> list[Any]:
        handles = [blk.norm1.register_forward_hook(self.block_hook(i)) for i, blk in enumerate(blocks)]
        handles += [chain.pe_norms[str(i)].register_forward_hook(self.keep(f"pe{i}")) for i in chain.pe_blocks]
        if chain.last_norm_pe is not None:
            handles.append(chain.last_norm_pe.register_forward_hook(self.keep("last_pe")))
        handles.append(norm.register_forward_hook(self.norm_hook))
        return handles

    def check_calls(self, n_blocks: int, n_batches: int) -> None:
        if n_batches == 0:
            raise ValueError("no images to analyze")
        for name in ("last_in", *(f"norm{i}" for i in range(n_blocks))):
            # a module called more than once per forward would make the averages meaningless
            if self.calls.get(name) != n_batches:
                raise ValueError(f"hook {name} fired {self.calls.get(name, 0)} times for {n_batches} batches")


def _forward_in_batches(model: nn.Module, images: Tensor, batch_size: int, device: torch.device | str,
                        handles: list[Any]) -> int:
    """Eval-mode forwards over ``images``; removes ``handles`` and restores the mode after."""
    was_training = model.training
    model.eval()
    n_batches = 0
    try:
        for start in range(0, images.shape[0], batch_size):
            model(images[start:start + batch_size].to(device))
            n_batches += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return n_batches


@torch.no_grad()
def collect_activations(
    model: nn.Module,
    images: Tensor,
    *,
    batch_size: int = 64,
    n_samples: int = 4,
    device: torch.device | str = "cpu",
) -> Activations:
    """Run ``model`` (eval mode) on ``images`` and average the hooked activations over the batch.

    Hooks are registered on the model's own modules and removed afterwards. ``n_samples`` images
    keep their per-image token norms (Fig. 7).
    """
    from mpvgbench.models.pe import PositionEmbeddingChain

    chain = getattr(model, "pe_chain", None)
    if not isinstance(chain, PositionEmbeddingChain):
        raise ValueError(f"{type(model).__name__} is not a PE model (no pe_chain)")
    blocks = _blocks(model, chain.depth)
    norm = _last_norm(model)
    rec = _Recorder(n_samples)
    n_batches = _forward_in_batches(model, images, batch_size, device, rec.attach(chain, blocks, norm))
    rec.check_calls(len(blocks), n_batches)
    n = images.shape[0]
    avg = {k: (v / n).float() for k, v in rec.sums.items()}
    n_prefix = int(getattr(model, "num_prefix_tokens", 1 if chain.method.has_class_token else 0))
    n_tokens = avg["last_in"].shape[0]
    assert rec.norm_in_shape is not None  # check_calls: the last norm ran
    grid = _grid(model, rec.norm_in_shape, n_tokens, n_prefix)
    n_patch = grid[0] * grid[1]
    pe_out = rec.last.get("last_pe")
    s_out = rec.samples["out"] + (pe_out if pe_out is not None else 0)
    gamma = norm.weight.detach().float().cpu().clone()
    bias = getattr(norm, "bias", None)
    return Activations(
        method=chain.method,
        n_images=n,
        num_prefix_tokens=n_tokens - n_patch,
        grid=grid,
        block_in=[avg[f"in{i}"] for i in range(len(blocks))],
        block_norm=[avg[f"norm{i}"] for i in range(len(blocks))],
        pe=[rec.last.get(f"pe{i}") for i in range(len(blocks))],
        last_in=avg["last_in"],
        last_ln=avg["last_ln"],
        last_pe=pe_out,
        sample_norms_in=rec.samples["in"][:, -n_patch:].norm(dim=-1),
        sample_norms_out=s_out[:, -n_patch:].norm(dim=-1),
        sample_images=images[:n_samples].detach().float().cpu(),
        gamma=gamma,
        beta=bias.detach().float().cpu().clone() if bias is not None else torch.zeros_like(gamma),
    )


# ------------------------------------------------------------------------------------ numbers


def layer_correlations(acts: Activations) -> list[Optional[float]]:
    """Per block: Pearson r of ``norm1_l(x)`` and ``LN'_l`` output over patch tokens (None: no PE)."""
    out: list[Optional[float]] = []
    for tokens, pe in zip(acts.block_norm, acts.pe):
        if pe is None:
            out.append(None)
            continue
        out.append(_finite_or_none(pearson(acts.patch_rows(tokens), acts.patch_rows(pe))))
    return out


def last_ln_stats(model: nn.Module, batch: Tensor | Activations) -> dict[str, Optional[float]]:
    """Fig. 6 / appendix: Last-LN affine statistics and before/after cosine similarity.

    ``batch``: images (activations are collected) or already collected :class:`Activations`.
    Keys: ``beta_var``, ``gamma_var`` (population variance), ``beta_mean``, ``gamma_mean``,
    ``cosine`` (the paper's definition for this pool: class token or patch-token average),
    ``cosine_token_avg``, ``cosine_cls`` (None without class token), ``cosine_ln_only`` (as
    ``cosine``, but *after* is the LN output alone, without MPVG's term), ``corr_pe_before`` /
    ``corr_pe_after`` (Pearson r, over patch tokens x channels, of the batch-averaged tokens
    before / after the Last LN with the LN'' term; None without the term).
    """
    acts = batch if isinstance(batch, Activations) else collect_activations(model, batch)
    norm = _last_norm(model)
    gamma = norm.weight.detach().double()
    bias = getattr(norm, "bias", None)
    beta = bias.detach().double() if bias is not None else torch.zeros_like(gamma)
    before, after = acts.patch_rows(acts.last_in), acts.patch_rows(acts.last_out)
    cos_avg = cosine(before.mean(0), after.mean(0))
    use_cls = acts.method.has_class_token and acts.num_prefix_tokens > 0

    def summary(t: Tensor) -> Tensor:  # the paper's "token average" for this pool
        return t[0] if use_cls else acts.patch_rows(t).mean(0)

    stats: dict[str, float] = {
        "beta_var": float(beta.var(unbiased=False)),
        "gamma_var": float(gamma.var(unbiased=False)),
        "beta_mean": float(beta.mean()),
        "gamma_mean": float(gamma.mean()),
        "cosine": cosine(summary(acts.last_in), summary(acts.last_out)),
        "cosine_token_avg": cos_avg,
        "cosine_cls": cosine(acts.last_in[0], acts.last_out[0]) if acts.num_prefix_tokens else math.nan,
        "cosine_ln_only": cosine(summary(acts.last_in), summary(acts.last_ln)),
        "corr_pe_before": math.nan,
        "corr_pe_after": math.nan,
    }
    if acts.last_pe is not None:
        pe = acts.patch_rows(acts.last_pe)
        stats["corr_pe_before"] = pearson(before, pe)
        stats["corr_pe_after"] = pearson(acts.patch_rows(acts.last_ln), pe)
    return {k: _finite_or_none(v) for k, v in stats.items()}


def correlation_summary(correlation: Optional[Sequence[Optional[float]]]) -> tuple[Optional[float], Optional[float], Optional[float]]:
    """(first delivered layer, last layer, mean over delivered layers) of a correlation curve."""
    values = [c for c in (correlation or []) if c is not None]
    if not values:
        return None, None, None
    return values[0], values[-1], sum(values) / len(values)
