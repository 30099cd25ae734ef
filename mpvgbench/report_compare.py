"""Two or more runs side by side (``mpvgbench compare KEY KEY...``): what differs in their
configs, their final numbers, and their training curves overlaid.

:func:`compare_runs` returns two :class:`~mpvgbench.report_table.ReportTable` objects (one
column per run), so every report format renders them; :func:`compare_figure` draws validation
top-1, train loss and validation loss per epoch, one line per run, each with its own colour, line
style and marker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mpvgbench.curves import CURVE_METRICS, PRESET_STYLES, line_style
from mpvgbench.errors import MpvgbenchError
from mpvgbench.report_runs import flatten
from mpvgbench.report_table import Column, ReportTable
from mpvgbench.store import Store
from mpvgbench.store_schema import RunRow

#: result numbers shown when a run has them (dense runs keep theirs in ``extra``)
_METRICS = ("top1", "top5", "ap_box", "ap_mask", "miou")  # each under its own column
#: (line style, marker) per run when the runs share a method (two seeds, two lrs)
_RUN_STYLES: tuple[tuple[str, str], ...] = (("-", "o"), ("--", "s"), ("-.", "^"), (":", "D"), ("-", "v"), ("--", "P"))


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_value(v)}" for k, v in value.items())
    return str(value)


def run_labels(runs: Sequence[RunRow]) -> list[str]:
    """A column name per run: its key's first 8 digits (more when two share them)."""
    length = 8
    while len({r.key[:length] for r in runs}) < len(runs) and length < 16:
        length += 1
    return [r.key[:length] for r in runs]


def compare_runs(store: Store, keys: Sequence[str]) -> tuple[ReportTable, ReportTable]:
    """(config differences, final numbers) of the runs ``keys`` (full keys, in that order)."""
    by_key = {r.key: r for r in store.runs(keys=list(keys))}
    missing = [k for k in keys if k not in by_key]
    if missing:
        raise MpvgbenchError(f"no run {missing[0]} in the database; `mpvgbench status --all` lists the runs")
    runs = [by_key[k] for k in keys]
    labels = run_labels(runs)
    columns = [Column("field", "label")] + [Column(label, "label") for label in labels]

    # a method reads as its label (mpvg[last_ln_pe=5]), not as five knobs
    flat = [{**flatten(r.config), "method": r.method_label} for r in runs]
    names = sorted({n for f in flat for n in f})
    differing = [n for n in names if len({repr(f.get(n)) for f in flat}) > 1]
    diff = ReportTable("Config: the fields that differ", "final", list(columns))
    for name in differing:
        diff.add_row([name] + [_value(f.get(name)) for f in flat])
    diff.notes.append(f"{len(names) - len(differing)} other field(s) identical" if differing
                      else f"all {len(names)} fields identical")

    results = {r.key: r for r in store.results_frame(keys=list(keys))}
    numbers = ReportTable("Runs and their final numbers", "final", list(columns))
    rows: list[tuple[str, list[Any]]] = [
        ("model", [r.model for r in runs]), ("method", [r.method_label for r in runs]),
        ("dataset", [r.dataset for r in runs]), ("seed", [r.seed for r in runs]),
        ("status", [r.status for r in runs]),
    ]
    rows.append(("primary metric", [results[r.key].primary_metric if r.key in results else None for r in runs]))
    for name in _METRICS:
        for which in ("final", "best"):
            values = [results[r.key].metric(name, which) if r.key in results else None for r in runs]
            if any(v is not None for v in values):
                rows.append((f"{which}_{name}", values))
    rows.append(("epochs", [results[r.key].epochs if r.key in results else None for r in runs]))
    rows += [("wall time (s)", [r.wall_time_s for r in runs]), ("commit", [(r.git_commit or "-")[:10] for r in runs]),
             ("device", [r.device for r in runs])]
    for name, values in rows:
        numbers.add_row([name] + [_value(v) for v in values])
    return diff, numbers


def compare_figure(store: Store, keys: Sequence[str]) -> Any:
    """Validation top-1, train and validation loss per epoch, one line per run (a
    ``matplotlib.figure.Figure``); runs without per-epoch metrics are named in the title."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    runs = {r.key: r for r in store.runs(keys=list(keys))}
    labels = dict(zip(keys, run_labels([runs[k] for k in keys])))
    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(4.4 * len(CURVE_METRICS), 3.6), constrained_layout=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    without = []
    for index, key in enumerate(keys):
        metrics = store.metrics(key)
        if not metrics:
            without.append(labels[key])
            continue
        run = runs[key]
        # one style per run; the method's own style when the runs' methods all differ
        methods = [runs[k].method_label for k in keys]
        style, marker = (line_style(run.method_label) if len(set(methods)) == len(methods)
                         and all(m in PRESET_STYLES for m in methods) else _RUN_STYLES[index % len(_RUN_STYLES)])
        every = max(1, len(metrics) // 12)
        for ax, (metric, _) in zip(axes, CURVE_METRICS):
            points = [(m.epoch, getattr(m, metric)) for m in metrics if getattr(m, metric) is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, color=colours[index % len(colours)], linestyle=style, marker=marker, markersize=5,
                        markevery=every, linewidth=1.8, label=f"{labels[key]} {run.method_label} s{run.seed}")
    for ax, (_, name) in zip(axes, CURVE_METRICS):
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle("Training curves" + (f" (no per-epoch metrics: {', '.join(without)})" if without else ""),
                 fontsize=10)
    return fig


__all__ = ["compare_figure", "compare_runs", "run_labels"]
