"""Figures of ``mpvgbench analyze`` (matplotlib, Agg backend: no display needed).

One function per figure; each takes plain numbers and writes one PNG. This module never imports
:mod:`mpvgbench.analyze` (which calls it): a run's figures take ``arrays``, the dict of numpy
arrays ``Activations.figure_arrays()`` returns, and ``analysis``, the JSON-able dict of
``analyze_run``. Keys of ``arrays``:

``block_norm``        list over blocks of ``(tokens, channels)``: batch-averaged ``norm1_l(x_l)``.
``pe``                list over blocks of ``(pe rows, channels)`` or ``None`` (block gets no PE).
``last_in``           ``(tokens, channels)``: input of the Last LN.
``last_out``          what reaches the pooling (Last LN output, plus LN'' term for MPVG).
``last_pe``           ``LN''(pos_k)`` or ``None``.
``gamma``, ``beta``   the Last LN's weight and bias, ``(channels,)``.
``num_prefix_tokens`` class-token rows leading every token array; ``class_token``: the method's pool.
``grid``              ``(h, w)`` patch grid; ``sample_images`` ``(K, C, H, W)``;
``sample_norms_in``   / ``sample_norms_out``: ``(K, h * w)`` per-image token L2 norms.

Figures:

``correlation.png``   Fig. 4: per-layer Pearson r of token embedding and PE, one curve per run.
``heatmaps.png``      Fig. 2: batch-averaged token embedding (norm1 output) and delivered PE per layer.
``last_ln.png``       Figs. 6/8: tokens before/after the Last LN, MPVG's LN'' term, gamma and beta.
``token_norms.png``   Fig. 7: per-token L2 norm maps of single images before/after the Last LN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")  # before pyplot: the CLI runs headless (servers, Slurm nodes, CI)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = ["plot_heatmaps", "plot_last_ln", "plot_token_norms", "write_run_figures"]

DPI = 100  # noisy heatmaps compress badly; 100 dpi keeps each PNG well under 300 KB
CMAP = "RdBu_r"  # diverging: the sign matters (the paper's "counterbalancing" is a sign flip)
MAX_COLS = 6  # heatmap panels per row; deeper models wrap into more bands


def _title(analysis: dict[str, Any]) -> str:
    return f"{analysis['model']} / {analysis['method']} / {analysis['dataset']} ({analysis['key'][:8]})"


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _token_label(arrays: dict[str, Any]) -> str:
    return "token (row 0: class token)" if arrays["num_prefix_tokens"] else "token"


def _fmt_g(value: Optional[float]) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3g}"


def _save(fig: Figure, path: Path) -> Path:
    """Write a palette PNG: a heatmap of noise-like values barely compresses as RGBA, and 256
    colours are plenty for a colormap plus text (about 3x smaller files for DeiT-sized maps)."""
    from io import BytesIO

    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = BytesIO()
    fig.savefig(buffer, dpi=DPI, bbox_inches="tight", format="png")
    plt.close(fig)
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path


def _robust_limit(arrays: Sequence[np.ndarray]) -> float:
    # 99th percentile of |value|: one outlier channel must not wash every other channel out
    values = np.concatenate([np.abs(a).ravel() for a in arrays])
    limit = float(np.percentile(values, 99)) if values.size else 1.0
    return limit if limit > 0 else 1.0


def _heatmap(ax: Axes, data: np.ndarray, limit: float, title: str, *, ylabel: bool | str, xlabel: bool):  # type: ignore[no-untyped-def]
    image = ax.imshow(data, cmap=CMAP, vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
    ax.set_title(title, fontsize=9)
    if ylabel:
        ax.set_ylabel(ylabel if isinstance(ylabel, str) else "token")
    if xlabel:
        ax.set_xlabel("channel")
    ax.tick_params(labelsize=7)
    return image


# -------------------------------------------------------------------------------- Fig. 4


def plot_heatmaps(arrays: dict[str, Any], analysis: dict[str, Any], path: Path | str) -> Path:
    """Per layer: batch-averaged ``norm1_l(x)`` (top of each band) and ``LN'_l`` PE (bottom)."""
    tokens: list[np.ndarray] = list(arrays["block_norm"])
    pes: list[Optional[np.ndarray]] = list(arrays["pe"])
    depth = len(tokens)
    with_pe = any(p is not None for p in pes)
    rows_per_band = 2 if with_pe else 1
    bands = math.ceil(depth / MAX_COLS)
    cols = math.ceil(depth / bands)  # balanced bands: 7 layers -> 4 + 3, not 6 + 1
    t_limit = _robust_limit(tokens)
    p_limit = _robust_limit([p for p in pes if p is not None]) if with_pe else 1.0
    fig, axes = plt.subplots(
        bands * rows_per_band, cols, figsize=(2.3 * cols + 1.2, 2.3 * bands * rows_per_band + 0.8),
        squeeze=False, constrained_layout=True,
    )
    corr = analysis.get("correlation") or [None] * depth
    t_image = p_image = None
    for layer in range(bands * cols):
        band, col = divmod(layer, cols)
        ax_t = axes[band * rows_per_band, col]
        ax_p = axes[band * rows_per_band + 1, col] if with_pe else None
        if layer >= depth:
            ax_t.axis("off")
            if ax_p is not None:
                ax_p.axis("off")
            continue
        last_row = band == bands - 1
        t_image = _heatmap(ax_t, tokens[layer], t_limit, f"layer {layer}: tokens",
                           ylabel=col == 0 and _token_label(arrays), xlabel=last_row and not with_pe)
        if ax_p is not None:
            pe = pes[layer]
            if pe is None:
                ax_p.text(0.5, 0.5, "no PE delivered", ha="center", va="center", transform=ax_p.transAxes)
                ax_p.set_xticks([])
                ax_p.set_yticks([])
                if col == 0:
                    ax_p.set_ylabel(_token_label(arrays))
            else:
                p_image = _heatmap(ax_p, pe, p_limit, f"layer {layer}: PE  r={_fmt(corr[layer], 2)}",
                                   ylabel=col == 0 and _token_label(arrays), xlabel=last_row)
    # one colorbar per row (rows of a kind share their scale); a colorbar spanning interleaved
    # rows of several bands would overlap the other kind's
    for row in range(bands * rows_per_band):
        image = t_image if row % rows_per_band == 0 else p_image
        if image is not None:
            label = "token (norm1 out)" if row % rows_per_band == 0 else "PE (LN' out)"
            fig.colorbar(image, ax=axes[row, :].tolist(), shrink=0.9, pad=0.01, label=label)
    note = "" if with_pe else f"  [{analysis.get('correlation_note')}]"
    fig.suptitle(f"{_title(analysis)}: batch-averaged token embedding and PE per layer, after LN "
                 f"(cf. Fig. 2){note}", fontsize=10)
    return _save(fig, Path(path))


# ----------------------------------------------------------------------------- Figs. 6 / 8


def plot_last_ln(arrays: dict[str, Any], analysis: dict[str, Any], path: Path | str) -> Path:
    """Tokens before/after the Last LN (+ LN'' term), gamma and beta of the Last LN."""
    stats = analysis["last_ln"]
    last_pe: Optional[np.ndarray] = arrays["last_pe"]
    panels: list[tuple[str, np.ndarray]] = [
        ("before Last LN", arrays["last_in"]),
        ("after Last LN" + (" + LN''(PE)" if last_pe is not None else ""), arrays["last_out"]),
    ]
    if last_pe is not None:
        panels.append((f"LN''(PE)  r(before)={_fmt(stats.get('corr_pe_before'), 2)}, "
                       f"r(LN out)={_fmt(stats.get('corr_pe_after'), 2)}", last_pe))
    fig = plt.figure(figsize=(4.0 * len(panels) + 1.0, 7.0), constrained_layout=True)
    grid = fig.add_gridspec(2, len(panels), height_ratios=[3, 2])
    for i, (name, data) in enumerate(panels):
        ax = fig.add_subplot(grid[0, i])
        # separate scales: the input of the Last LN can be orders of magnitude larger
        image = _heatmap(ax, data, _robust_limit([data]), name, ylabel=i == 0 and _token_label(arrays), xlabel=True)
        fig.colorbar(image, ax=ax, shrink=0.8)
    channels = np.arange(len(arrays["gamma"]))
    bottom = grid[1, :].subgridspec(1, 2)
    for i, (name, values, var, init) in enumerate((
        ("gamma (weight)", arrays["gamma"], stats.get("gamma_var"), 1.0),
        ("beta (bias)", arrays["beta"], stats.get("beta_var"), 0.0),
    )):
        ax = fig.add_subplot(bottom[0, i])
        # a step line, not bars from 0: gamma sits near 1 and its spread is what matters
        ax.plot(channels, values, drawstyle="steps-mid", color="tab:blue" if i == 0 else "tab:orange")
        ax.axhline(init, color="grey", linewidth=0.6, linestyle="--")
        ax.set_xlim(-0.5, len(channels) - 0.5)
        ax.set_title(f"Last LN {name}: var={_fmt_g(var)}  (dashed: init {init:g})", fontsize=9)
        ax.set_xlabel("channel")
        ax.set_ylabel(name.split()[0])
        ax.tick_params(labelsize=7)
    what = "class token" if arrays["class_token"] and arrays["num_prefix_tokens"] else "patch-token average"
    fig.suptitle(f"{_title(analysis)}: Last LN (cf. Figs. 6, 8)\n"
                 f"cosine similarity before vs after the Last LN ({what}) = {_fmt(stats.get('cosine'), 4)}",
                 fontsize=10)
    return _save(fig, Path(path))


# -------------------------------------------------------------------------------- Fig. 7


def _display_image(array: np.ndarray) -> tuple[np.ndarray, Optional[str]]:
    # inputs are normalised; min-max per image is enough to recognise the content
    array = (array - array.min()) / max(float(array.max() - array.min()), 1e-12)
    if array.shape[0] == 1 or np.allclose(array, array[:1]):
        return array[0], "gray"
    return np.transpose(array[:3], (1, 2, 0)), None


def plot_token_norms(arrays: dict[str, Any], analysis: dict[str, Any], path: Path | str) -> Path:
    """Rows: input image, token L2 norm before the Last LN, after it (per image, patch grid)."""
    k = arrays["sample_norms_in"].shape[0]
    fig, axes = plt.subplots(3, k, figsize=(2.6 * k + 0.8, 7.6), squeeze=False, constrained_layout=True)
    h, w = arrays["grid"]
    row_names = ["image", "||token|| before Last LN", "||token|| after Last LN"]
    for j in range(k):
        data, cmap = _display_image(arrays["sample_images"][j])
        axes[0, j].imshow(data, cmap=cmap, interpolation="nearest")
        axes[0, j].set_title(f"validation image {j}", fontsize=9)
        for r, norms in ((1, arrays["sample_norms_in"][j]), (2, arrays["sample_norms_out"][j])):
            image = axes[r, j].imshow(norms.reshape(h, w), cmap="viridis", interpolation="nearest")
            fig.colorbar(image, ax=axes[r, j], shrink=0.8)
        for r in range(3):
            axes[r, j].set_xticks([])
            axes[r, j].set_yticks([])
            if j == 0:
                axes[r, j].set_ylabel(row_names[r], fontsize=9)
    fig.suptitle(f"{_title(analysis)}: per-token L2 norm on the {h}x{w} patch grid (cf. Fig. 7)", fontsize=10)
    return _save(fig, Path(path))


def write_run_figures(arrays: dict[str, Any], analysis: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """All per-run figures into ``out_dir``; returns ``{figure name: path}``."""
    paths = {
        "heatmaps": plot_heatmaps(arrays, analysis, out_dir / "heatmaps.png"),
        "last_ln": plot_last_ln(arrays, analysis, out_dir / "last_ln.png"),
        "token_norms": plot_token_norms(arrays, analysis, out_dir / "token_norms.png"),
    }
    return {name: str(p) for name, p in paths.items()}
