"""Tables from the store: the paper's tables next to the measured runs, or a pivot of the database.

``build_table(store, table)`` returns a :class:`ReportTable`; :func:`render` turns it into
``table`` (rich text), ``markdown``, ``latex`` (booktabs), ``csv`` or ``json``
(:mod:`mpvgbench.report_render`).

Measured numbers are the mean ± sample std over the finished runs of a cell (one run per seed);
a failed or unfinished run never counts. The default metric is the **final** epoch's top-1,
because the paper reports the accuracy of the last epoch (DeiT's protocol), not the best one;
``metric="best"`` uses each run's best epoch instead. A run is matched to a paper row by
``(model, dataset, PEMethod)``. ``selection`` (job key -> dataset, from a spec's matrix) limits
the runs to exactly those; without it, runs of one cell that differ in a configuration field
are shown as separate rows with that field as a column (:mod:`mpvgbench.report_runs`).
Smoke runs (generated data) are marked in every cell and never compared with the paper.

``baseline`` (a method): each cell also gets the paired per-seed difference to that method's
run of the same configuration, its 95% t interval and the paired t-test's p-value
(:mod:`mpvgbench.stats`), marked ``*`` when the interval excludes 0. The paper's tables gain the
difference (to ``default``, or to ``baseline``) whenever a cell has two or more paired seeds.
Notes about runs a table does not show are :attr:`ReportTable.diagnostics`: the CLI prints them
on stderr, no renderer writes them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional, Union

from mpvgbench.errors import MpvgbenchError
from mpvgbench.methods import PRESETS, PEMethod, resolve_method
from mpvgbench.catalog import METRIC_LABELS
from mpvgbench.paper import DATASET_NAMES, MODEL_NAMES, Metric, PaperRow, PaperTable, TableId, get_table
from mpvgbench.report_render import RichText, render, to_rich  # re-exported: one import for callers
from mpvgbench.report_runs import (
    PRIMARY, ReportRun, Variant, column_name, distinguishing_fields, group_variants, load_runs, metric_value,
    spec_selection, stands_in_for,
)
from mpvgbench.report_table import BASELINE_MARK, Column, Measured, ReportTable, paired_text
from mpvgbench.stats import TEST_NAME, PairedDifference, paired_difference
from mpvgbench.store import Store

METRICS: tuple[str, ...] = ("final", "best")
FORMATS: tuple[str, ...] = ("table", "markdown", "latex", "csv", "json")
SMOKE_NOTE = "smoke: trained on generated data to check the pipeline; not a measurement, no Δ"


# ---------------------------------------------------------------------------------- building


def build_table(store: Store, table: Union[TableId, None] = None, *, metric: str = "final",
                spec: Optional[str] = None, selection: Optional[Mapping[str, str]] = None,
                baseline: Optional[str] = None) -> ReportTable:
    """The paper's Table ``table`` (1-6, or "fig5") with measured mean ± std next to the paper's
    values and the difference; ``table=None`` pivots whatever is selected (model x method, by
    dataset). ``metric``: "final" (default, as the paper reports) or "best" epoch.
    ``selection``: job key -> dataset of the runs to show (``spec`` names them in the title;
    alone, it selects the runs registered under that spec name). ``baseline``: a method label or
    preset for paired differences. Out-of-range tables,
    unknown metrics and methods raise a one-line MpvgbenchError."""
    if metric not in METRICS:
        raise MpvgbenchError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    paper_table = None if table is None else get_table(table)
    base = None if baseline is None else resolve_method(baseline)
    if selection is None and spec is not None:
        selection = spec_selection(store, spec)
    runs = load_runs(store, selection)
    if paper_table is None:
        out = _pivot(runs, metric) if base is None else _pivot_vs_baseline(runs, metric, base)
    else:
        out = _paper(paper_table, runs, metric, base, exact=selection is not None)
    if spec is not None:
        out.title += f" (spec {spec})"
    if out.has_smoke:
        out.title += " [smoke]"
        out.notes.append(SMOKE_NOTE)
    return out


def _signature(variant: Variant, fields: Sequence[str]) -> tuple[str, ...]:
    return tuple(variant.runs[0].field_text(f) for f in fields)


def _method_order(methods: Sequence[PEMethod]) -> list[PEMethod]:
    rank = {p: i for i, p in enumerate(PRESETS.values())}
    return sorted(set(methods), key=lambda m: (rank.get(m, len(rank)), m.label))


class _Rows:
    """Pivot rows: (dataset, model, smoke, distinguishing values) -> {method: Variant}."""

    def __init__(self, runs: Sequence[ReportRun]) -> None:
        groups: dict[tuple[str, str, bool], list[ReportRun]] = defaultdict(list)
        for run in runs:
            groups[(run.dataset, run.model, run.smoke)].append(run)
        self.fields = distinguishing_fields(groups.values())
        self.names = [column_name(f, self.fields) for f in self.fields]
        self.rows: dict[tuple[Any, ...], dict[PEMethod, Variant]] = defaultdict(dict)
        for (model, dataset, method), variants in group_variants(runs).items():
            for variant in variants.values():
                key = (dataset, model, variant.smoke, _signature(variant, self.fields))
                self.rows[key][method] = variant
        model_rank = {m: i for i, m in enumerate(MODEL_NAMES)}
        self.order = sorted(self.rows, key=lambda k: (k[0], model_rank.get(k[1], len(model_rank)), k[1], k[2], k[3]))
        self.methods = _method_order([m for row in self.rows.values() for m in row])

    def labels(self, key: tuple[Any, ...]) -> list[str]:
        dataset, model, _, signature = key
        return [DATASET_NAMES.get(dataset, dataset), MODEL_NAMES.get(model, model), *signature]

    def label_columns(self) -> list[Column]:
        return [Column("Dataset", "label"), Column("Model", "label")] + [Column(n, "label") for n in self.names]


def _pivot(runs: Sequence[ReportRun], which: str) -> ReportTable:
    rows = _Rows(runs)
    title = f"All finished runs: {which} top-1 (%), mean ± std (n seeds)"
    first = len(rows.label_columns())
    out = ReportTable(title, which, rows.label_columns() + [Column(m.label, "measured") for m in rows.methods])
    for key in rows.order:
        found = rows.rows[key]
        out.add_row(rows.labels(key) + [Measured.of(found.get(m), PRIMARY, which) for m in rows.methods],
                    {first + i: found[m] for i, m in enumerate(rows.methods) if m in found})
    dense = sorted({r.row.primary_metric for r in runs} - {"top1"})
    if dense:
        out.notes.append("dense-prediction rows show their primary metric ("
                         + ", ".join(METRIC_LABELS[m] for m in dense) + ")")
    if not out.rows:
        out.notes.append("no finished runs in the database yet")
    return out


def _pivot_vs_baseline(runs: Sequence[ReportRun], which: str, base: PEMethod) -> ReportTable:
    rows = _Rows(runs)
    if base not in rows.methods:
        raise MpvgbenchError(f"--baseline {base.label}: no finished run of that method here; use one of "
                             f"{', '.join(m.label for m in rows.methods) or '(none)'}")
    header = f"{which.capitalize()} top-1 (%)"
    out = ReportTable(f"{header} vs {base.label}: paired per-seed difference", which,
                      rows.label_columns() + [Column("Method", "label"), Column(header, "measured"),
                                              Column(f"Δ vs {base.label} [95% CI]", "paired"),
                                              Column("p", "pvalue")], baseline=base.label)
    for key in rows.order:
        found = rows.rows[key]
        reference = found.get(base)
        for method in rows.methods:
            if method not in found:
                continue
            measured = Measured.of(found[method], PRIMARY, which)
            paired: Any = BASELINE_MARK if method == base else _paired(found[method], reference, PRIMARY, which)
            p_value = paired.p_value if isinstance(paired, PairedDifference) else None
            out.add_row(rows.labels(key) + [method.label, measured, paired, p_value],
                        {len(out.columns) - 3: found[method]})
    out.notes += _paired_notes(base.label)
    return out


def _paired(variant: Variant, reference: Optional[Variant], metric: Metric, which: str) -> Optional[PairedDifference]:
    if reference is None:
        return None
    return paired_difference(variant.values(metric, which), reference.values(metric, which))


def _paired_notes(base: str) -> list[str]:
    return [f"Δ: mean over seeds of (method - {base}) for the same seed; [95% CI] from the t "
            f"distribution, * when it excludes 0; p: two-sided {TEST_NAME} (scipy.stats.ttest_rel)"]


# ------------------------------------------------------------------------------ paper tables


class _PaperCells:
    """The variants of each paper row: exactly the selected runs' (``exact``), or every stored
    run's, smoke runs on ``synthetic`` standing in for the row's dataset."""

    def __init__(self, runs: Sequence[ReportRun], exact: bool) -> None:
        self.cells = group_variants(runs)
        self.exact = exact
        self.parents = {run.init_from for run in runs if run.init_from is not None}
        self.fields: list[str] = []

    def variants(self, model: str, dataset: str, method: PEMethod) -> list[Variant]:
        found = list(self.cells.get((model, dataset, method), {}).values())
        if not self.exact:
            synthetic = [r for v in self.cells.get((model, "synthetic", method), {}).values() for r in v.runs]
            chosen = [r for r in synthetic if stands_in_for(r, dataset, self.parents)]
            by_variant: dict[str, Variant] = {}
            for run in chosen:
                by_variant.setdefault(run.variant, Variant()).runs.append(run)
            found += list(by_variant.values())
        return found


def _paper_baseline(table: PaperTable, base: Optional[PEMethod]) -> Optional[PEMethod]:
    if base is not None:
        return base
    default = PRESETS["default"]
    return default if any(row.pe_method == default for row in table.rows) else None


def _paper(table: PaperTable, runs: Sequence[ReportRun], which: str, base: Optional[PEMethod],
           *, exact: bool) -> ReportTable:
    cells = _PaperCells(runs, exact)
    per_row = [cells.variants(row.model, row.dataset, row.pe_method) for row in table.rows]
    fields = distinguishing_fields([[r for v in variants for r in v.runs] for variants in per_row])
    names = [column_name(f, fields) for f in fields]
    reference = _paper_baseline(table, base)

    def baseline_variant(row: PaperRow, variant: Variant) -> Optional[Variant]:
        if reference is None:
            return None
        signature = _signature(variant, fields)
        return next((v for v in cells.variants(row.model, row.dataset, reference)
                     if _signature(v, fields) == signature and v.smoke == variant.smoke), None)

    expanded = [(row, variant) for row, variants in zip(table.rows, per_row) for variant in (variants or [None])]
    # --table N gains the paired difference when asked for, or when a cell has two paired seeds
    with_paired = reference is not None and (base is not None or any(
        (p := _paired(v, baseline_variant(r, v), table.metrics[0], which)) is not None and p.n >= 2
        for r, v in expanded if v is not None and r.pe_method != reference))
    columns = [Column(name, "label") for name in table.label_columns] + [Column(n, "label") for n in names]
    if table.has_params:
        columns.append(Column("Params (M)", "params", 3))
    for m in table.metrics:
        header = f"{which.capitalize()} {m.header}" if m.name == "top1" else m.header
        columns += [Column(f"{header} measured", "measured", m.digits),
                    Column(f"{m.header} paper", "paper", m.digits),
                    Column("Δ" if len(table.metrics) == 1 else f"Δ {m.header}", "diff", m.digits)]
        if with_paired and reference is not None:
            name = f"vs {reference.label} [95% CI]" if len(table.metrics) == 1 else f"{m.header} vs {reference.label}"
            columns.append(Column(name, "paired", m.digits))
    out = ReportTable(table.title, which, columns, baseline=reference.label if with_paired and reference else None)
    for row, variant in expanded:
        signature = list(_signature(variant, fields)) if variant else ["-"] * len(fields)
        cells_out: list[Any] = list(row.labels) + signature
        if table.has_params:
            cells_out.append(row.params_printed)
        linked: dict[int, Variant] = {}
        for m in table.metrics:
            measured = Measured.of(variant, m, which)
            paper = row.values.get(m.name)
            diff = None if measured.mean is None or paper is None or measured.smoke else measured.mean - paper
            if variant is not None:
                linked[len(cells_out)] = variant
            cells_out += [measured, paper, diff]
            if with_paired:
                if row.pe_method == reference:
                    cells_out.append(BASELINE_MARK)
                else:
                    reference_runs = None if variant is None else baseline_variant(row, variant)
                    cells_out.append(None if variant is None else _paired(variant, reference_runs, m, which))
        out.add_row(cells_out, linked)
    if table.downstream:
        out.notes.append(f"dense prediction: experiments/table{table.id}.yaml trains it; its smoke "
                         "stand-in's run shows, marked smoke, until a full run is stored")
        out.notes.extend(_dense_settings_notes(v for _, v in expanded if v is not None))
    out.notes.extend(table.notes)
    out.notes.append(f"measured: mean ± sample std over seeds of the {which} epoch's value; "
                     "Δ = measured mean - paper")
    if with_paired and reference is not None:
        out.notes += _paired_notes(reference.label)
    return out


def _dense_settings_notes(variants: Iterable[Variant]) -> list[str]:
    """The open questions' answers (result.json ``dense_settings``) of the runs shown."""
    seen: Counter[str] = Counter()
    for variant in variants:
        for run in variant.runs:
            settings = run.row.extra.get("dense_settings")
            if isinstance(settings, dict):
                seen[", ".join(f"{k} {v}" for k, v in sorted(settings.items()))] += 1
    return [f"settings of {n} run(s): {text} (docs/downstream.md: open questions)" for text, n in sorted(seen.items())]


__all__ = ["BASELINE_MARK", "Column", "FORMATS", "METRICS", "Measured", "ReportTable", "RichText", "build_table",
           "metric_value", "paired_text", "render", "to_rich"]
