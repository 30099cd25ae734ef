"""Training curves and per-method summaries of stored runs (matplotlib, Agg backend).

``collect_curves(store)`` reads the per-epoch metrics of every finished run and groups them into
one :class:`Panel` per (model, dataset), one :class:`MethodCurves` per method, one series per seed.
``plot_curves(panels, path)`` draws validation top-1, train loss and validation loss per epoch:
the mean over seeds as a line and the min..max over seeds as a band, one colour per method.

``plot_correlation_by_method(analyses, path)`` draws the analysis' token/PE correlation per layer
(paper Fig. 4) as one line per method (mean over seeds, min..max band), labelled by method name;
``correlation_analyses(store)`` rebuilds its input from the numbers ``mpvgbench analyze`` stored.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import matplotlib

matplotlib.use("Agg")  # before pyplot: reports are written headless (servers, CI)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from mpvgbench.methods import PRESETS, PEMethod  # noqa: E402
from mpvgbench.paper import DATASET_NAMES, MODEL_NAMES  # noqa: E402
from mpvgbench.store import Store  # noqa: E402
from mpvgbench.store_schema import MetricRow  # noqa: E402

__all__ = ["CURVE_METRICS", "MethodCurves", "Panel", "SeedBand", "collect_curves", "correlation_analyses",
           "figure_png", "line_style", "method_order", "plot_correlation_by_method", "plot_curves", "seed_band"]

#: (MetricRow field, axis label) of each column of the curves figure
CURVE_METRICS: tuple[tuple[str, str], ...] = (
    ("top1", "validation top-1 (%)"),
    ("train_loss", "train loss"),
    ("val_loss", "validation loss"),
)
DPI = 100
PathLike = Union[str, Path]


# ------------------------------------------------------------------------------------ data


@dataclass
class MethodCurves:
    """The runs of one method in one panel: ``{seed: [MetricRow per epoch]}``."""

    method: PEMethod
    seeds: dict[int, list[MetricRow]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.method.label

    def series(self, metric: str) -> list[dict[int, float]]:
        """One ``{epoch: value}`` per seed (non-finite values left out)."""
        out = []
        for rows in self.seeds.values():
            points = {row.epoch: float(v) for row in rows
                      if isinstance(v := getattr(row, metric), (int, float)) and math.isfinite(v)}
            out.append(points)
        return out


@dataclass
class Panel:
    """One (model, dataset): the methods' curves, in preset order."""

    model: str
    dataset: str
    methods: list[MethodCurves] = field(default_factory=list)
    detail: str = ""  # what sets this panel's runs apart from another panel's (smoke, epochs=1)

    @property
    def title(self) -> str:
        name = f"{MODEL_NAMES.get(self.model, self.model)} / {DATASET_NAMES.get(self.dataset, self.dataset)}"
        return name + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class SeedBand:
    """Per epoch: mean, min and max over the seeds that have a value there."""

    epochs: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n_seeds: int


def seed_band(series: Sequence[Mapping[int, float]]) -> Optional[SeedBand]:
    """Mean and min..max over seeds per x (epoch or layer); None when no seed has a value."""
    xs = sorted({x for s in series for x in s})
    if not xs:
        return None
    values = [[s[x] for s in series if x in s] for x in xs]
    return SeedBand(np.array(xs), np.array([np.mean(v) for v in values]),
                    np.array([np.min(v) for v in values]), np.array([np.max(v) for v in values]),
                    sum(1 for s in series if s))


def method_order(methods: Sequence[PEMethod]) -> list[PEMethod]:
    """Presets in their canonical order (default, gap, ..., mpvg), then the others by label."""
    rank = {p: i for i, p in enumerate(PRESETS.values())}
    return sorted(set(methods), key=lambda m: (rank.get(m, len(rank)), m.label))


def collect_curves(store: Store, spec: Optional[str] = None,
                   keys: Optional[Mapping[str, str]] = None) -> list[Panel]:
    """The per-epoch metrics of the finished runs (of ``keys``, a selection ``{key: dataset}``
    as ``report SPEC`` builds it, or of the spec named ``spec``), one Panel per (model,
    dataset) and configuration: runs that differ in a config field (or smoke runs) get their
    own panel, titled by what differs, never hidden. Runs without metrics are left out."""
    from mpvgbench.report_runs import distinguishing_fields, group_variants, load_runs, spec_selection

    if keys is None and spec is not None:
        keys = spec_selection(store, spec)
    runs = load_runs(store, keys)
    groups: dict[tuple[str, str, bool], list[Any]] = defaultdict(list)
    for run in runs:
        groups[(run.dataset, run.model, run.smoke)].append(run)
    # what sets a panel apart, named only where a (dataset, model) has several configurations
    fields = {group: distinguishing_fields([runs]) for group, runs in groups.items()}
    panels: dict[tuple[Any, ...], Panel] = {}
    model_rank = {m: i for i, m in enumerate(MODEL_NAMES)}
    for (model, dataset, method), variants in group_variants(runs).items():
        for variant in variants.values():
            first = variant.runs[0]
            detail = [f"{f.rsplit('.', 1)[-1]}={first.field_text(f)}" for f in fields[(dataset, model, first.smoke)]]
            curves = MethodCurves(method)
            for run in sorted(variant.runs, key=lambda r: (r.seed, r.key)):
                metrics = store.metrics(run.key)
                if metrics:
                    curves.seeds.setdefault(run.seed, metrics)
            if curves.seeds:
                panel_key = (dataset, model_rank.get(model, len(model_rank)), model, variant.smoke, tuple(detail))
                detail_text = ", ".join((["smoke"] if variant.smoke else []) + detail)
                panels.setdefault(panel_key, Panel(model, dataset, detail=detail_text)).methods.append(curves)
    for panel in panels.values():
        order = {m: i for i, m in enumerate(method_order([c.method for c in panel.methods]))}
        panel.methods.sort(key=lambda c: order[c.method])
    return [panels[k] for k in sorted(panels)]


# ---------------------------------------------------------------------------------- figures


#: a fixed tab10 colour per preset, so a method reads the same in every panel and figure; the
#: quickstart's five methods get five clearly different ones (MPVG red)
PRESET_COLOURS: dict[str, int] = {"default": 0, "gap": 1, "lape": 2, "mpvg": 3, "pvg": 4,
                                  "gap_lastln": 5, "lape_gap": 6, "pvg_cls": 8}


def _colours(labels: Sequence[str]) -> dict[str, Any]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    spare = [i for i in range(len(cycle)) if i not in PRESET_COLOURS.values()]  # grey, cyan
    others = sorted(label for label in labels if label not in PRESET_COLOURS)
    index = {**PRESET_COLOURS, **{label: spare[i % len(spare)] for i, label in enumerate(others)}}
    return {label: cycle[index[label] % len(cycle)] for label in labels}


#: a line style and marker per preset, so lines stay apart where colours are hard to tell or
#: lines overlap (PVG dotted with diamonds under MPVG solid with stars)
PRESET_STYLES: dict[str, tuple[str, str]] = {
    "default": ("-", "o"), "gap": ("--", "s"), "lape": ("-.", "^"), "pvg": (":", "D"),
    "mpvg": ("-", "*"), "gap_lastln": ("--", "v"), "lape_gap": ("-.", "<"), "pvg_cls": (":", ">"),
}
_SPARE_STYLES: tuple[tuple[str, str], ...] = (("--", "P"), ("-.", "X"), (":", "h"), ("-", "p"))


def line_style(label: str) -> tuple[str, str]:
    """(line style, marker) of a method label: the preset's, else one of the spare ones."""
    if label in PRESET_STYLES:
        return PRESET_STYLES[label]
    return _SPARE_STYLES[sum(map(ord, label)) % len(_SPARE_STYLES)]


def _draw_band(ax: Axes, band: SeedBand, colour: Any, label: str, marker: Optional[str] = None) -> None:
    style, default_marker = line_style(label.split(" / ")[-1])
    # about 12 markers per line, whatever the number of epochs
    every = max(1, len(band.epochs) // 12)
    ax.plot(band.epochs, band.mean, color=colour, linewidth=1.8, linestyle=style,
            marker=marker or default_marker, markersize=5, markevery=every, label=f"{label} (n={band.n_seeds})")
    if band.n_seeds > 1:
        ax.fill_between(band.epochs, band.low, band.high, color=colour, alpha=0.2, linewidth=0)


def figure_png(fig: Figure) -> bytes:
    """The figure as a 256-colour PNG (closed afterwards): line plots need no more colours, and
    the file is about 3x smaller (it is embedded as base64 in the HTML report and in docs/)."""
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=DPI, bbox_inches="tight", format="png")
    plt.close(fig)
    buffer.seek(0)
    out = io.BytesIO()
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, format="PNG", optimize=True)
    return out.getvalue()


def curves_figure(panels: Sequence[Panel]) -> Figure:
    """Rows: panels; columns: :data:`CURVE_METRICS`. Mean over seeds, min..max band."""
    if not panels:
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no finished runs with per-epoch metrics", ha="center", va="center")
        return fig
    labels = [m.label for m in method_order([c.method for p in panels for c in p.methods])]
    colours = _colours(labels)
    fig, axes = plt.subplots(len(panels), len(CURVE_METRICS), squeeze=False,
                             figsize=(4.2 * len(CURVE_METRICS), 3.2 * len(panels) + 0.6),
                             constrained_layout=True)
    for r, panel in enumerate(panels):
        for c, (metric, name) in enumerate(CURVE_METRICS):
            ax = axes[r, c]
            for curves in panel.methods:
                band = seed_band(curves.series(metric))
                if band is not None:
                    _draw_band(ax, band, colours[curves.label], curves.label)
            ax.set_title(f"{panel.title}: {name}", fontsize=9)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
            if not ax.lines:
                ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
            if c == 0 and ax.lines:
                ax.legend(fontsize=7, loc="best")
    fig.suptitle("Training curves: mean over seeds, band = min..max over seeds", fontsize=10)
    return fig


def plot_curves(panels: Sequence[Panel], path: PathLike) -> Path:
    """:func:`curves_figure` written as a PNG to ``path``."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(figure_png(curves_figure(panels)))
    return out


# ---------------------------------------------------------------------- correlation (Fig. 4)


def correlation_analyses(store: Store, keys: Optional[Collection[str]] = None) -> list[dict[str, Any]]:
    """The stored ``pe_correlation`` of analysed runs as the dicts ``plot_correlation_by_method``
    takes (``key``, ``model``, ``method``, ``dataset``, ``correlation``, ``correlation_note``)."""
    stored = store.analysis()
    only = None if keys is None else set(keys)
    wanted = [k for k in stored if only is None or k in only]
    out = []
    for run in store.runs(keys=wanted) if wanted else []:
        values = stored[run.key]
        if "pe_correlation" not in values:
            continue
        out.append({"key": run.key, "model": run.model, "method": run.method_label,
                    "dataset": run.dataset, "correlation": values["pe_correlation"],
                    "correlation_note": values.get("pe_correlation_note")})
    return out


def correlation_figure(analyses: Sequence[Mapping[str, Any]]) -> Figure:
    """Per-layer Pearson r of token embedding and PE (after their LNs): one line per
    (model, dataset, method), the mean over its runs (seeds), a min..max band, legend by method.
    Methods without a layer-wise PE are listed in a note instead of drawn."""
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for analysis in analyses:
        groups[(analysis["model"], analysis["dataset"], analysis["method"])].append(analysis)
    several_cells = len({(m, d) for m, d, _ in groups}) > 1
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colours = _colours(sorted({method for _, _, method in groups}, key=_label_rank))
    notes: list[str] = []
    depth = 1
    for (model, dataset, method), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], _label_rank(kv[0][2]))):
        name = f"{model} / {method}" if several_cells else method
        series = [{i: float(v) for i, v in enumerate(a.get("correlation") or []) if v is not None}
                  for a in runs]
        band = seed_band(series)
        if band is None:
            note = next((a.get("correlation_note") for a in runs if a.get("correlation_note")), None)
            notes.append(f"{name}: {note or 'no layer-wise PE'}")
            continue
        depth = max(depth, max(len(a.get("correlation") or []) for a in runs))
        _draw_band(ax, band, colours[method], name)
    ax.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlim(-0.5, depth - 0.5)
    ax.set_xticks(range(depth))
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("layer (block index l)")
    ax.set_ylabel("Pearson r  (norm1_l(x), LN'_l(PE))")
    ax.set_title("Token embedding vs PE per layer, mean over seeds (cf. paper Fig. 4)")
    ax.grid(alpha=0.3)
    if len(ax.lines) > 1:  # the zero line is always there
        ax.legend(fontsize=8, loc="best")
    if notes:
        ax.text(0.01, 0.02, "\n".join(notes), transform=ax.transAxes, fontsize=7, va="bottom", color="dimgray")
    return fig


def _label_rank(label: str) -> tuple[int, str]:
    names = list(PRESETS)
    return (names.index(label) if label in names else len(names), label)


def plot_correlation_by_method(analyses: Sequence[Mapping[str, Any]], path: PathLike) -> Path:
    """:func:`correlation_figure` written as a PNG to ``path`` (a drop-in for
    the per-run figure it replaced: it takes the same list of analysis dicts)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(figure_png(correlation_figure(analyses)))
    return out
