"""Tables from the store: the paper's tables next to the measured runs, or a pivot of the database.

``build_table(store, table)`` returns a :class:`ReportTable`; :func:`render` turns it into
``table`` (rich text), ``markdown``, ``latex`` (booktabs), ``csv`` or ``json``.

Measured numbers are the mean ± sample std over the finished runs of a cell (one run per seed);
a failed or unfinished run never counts. The default metric is the **final** epoch's top-1,
because the paper reports the accuracy of the last epoch (DeiT's protocol), not the best one;
``metric="best"`` uses each run's best epoch instead. A run is matched to a paper row by
``(model, dataset, PEMethod)``. When one cell holds runs of several configurations
(e.g. a smoke run next to full runs), the configuration with the most epochs (then the most
seeds) is shown and a note says what was left out; ``spec=`` restricts the runs to one spec.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Optional, Union

from mpvgbench.catalog import METRIC_LABELS
from mpvgbench.errors import MpvgbenchError
from mpvgbench.methods import PRESETS, PEMethod
from mpvgbench.recipes import SMOKE_DATASETS
from mpvgbench.paper import DATASET_NAMES, MODEL_NAMES, Metric, PaperTable, TableId, get_table
from mpvgbench.store import Store
from mpvgbench.store_schema import ResultRow

METRICS: tuple[str, ...] = ("final", "best")
PRIMARY = Metric("primary", "primary metric")  # each run's own: top-1, AP box or mIoU
_SMOKE_STAND_IN_FOR = {stand_in: dataset for dataset, stand_in in SMOKE_DATASETS.items()}
FORMATS: tuple[str, ...] = ("table", "markdown", "latex", "csv", "json")
ColumnKind = Literal["label", "params", "measured", "paper", "diff"]


@dataclass(frozen=True)
class Measured:
    """The runs of one cell: their values (one per seed), mean and sample std."""

    values: tuple[float, ...] = ()
    digits: int = 2

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> Optional[float]:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> Optional[float]:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def text(self, pm: str = "±") -> str:
        if self.mean is None:
            return "-"
        std = "" if self.std is None else f" {pm} {self.std:.{self.digits}f}"
        return f"{self.mean:.{self.digits}f}{std} (n={self.n})"

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n, "values": list(self.values)}


@dataclass(frozen=True)
class Column:
    name: str
    kind: ColumnKind
    digits: int = 2


@dataclass
class ReportTable:
    """Columns and rows; a row holds one value per column: str (label), Measured, float or None."""

    title: str
    metric: str
    columns: list[Column]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def cell_text(self, column: Column, value: Any, pm: str = "±") -> str:
        if isinstance(value, Measured):
            return value.text(pm)
        if value is None:
            return "-"
        if column.kind == "diff":
            return f"{value:+.{column.digits}f}"
        if isinstance(value, float):
            return f"{value:.{column.digits}f}"
        return str(value)


# ---------------------------------------------------------------------------------- building

def _metric_value(row: ResultRow, metric: Metric, which: str) -> Optional[float]:
    """A run's value of ``metric``, read from its own column (``primary``: the run's primary
    metric, the one its task reports: top-1, AP box or mIoU)."""
    value = row.primary(which) if metric.name == PRIMARY.name else row.metric(metric.name, which)
    if value is None or not math.isfinite(value):
        return None
    return value


class _Index:
    """Finished runs grouped by cell ``(model, dataset, method)``, one config per cell."""

    def __init__(self, rows: list[ResultRow]) -> None:
        groups: dict[tuple[str, str, PEMethod], dict[str, list[ResultRow]]] = defaultdict(
            lambda: defaultdict(list))
        for row in rows:
            # a smoke stand-in reports as its dataset (a full run, with more epochs, wins the
            # cell below)
            dataset = _SMOKE_STAND_IN_FOR.get(row.dataset, row.dataset)
            groups[(row.model, dataset, row.method)][row.variant].append(row)
        self.cells: dict[tuple[str, str, PEMethod], list[ResultRow]] = {}
        self.notes: list[str] = []
        for cell, variants in groups.items():
            ranked = sorted(variants.values(), key=lambda rs: (_epochs(rs[0]), len(rs)), reverse=True)
            self.cells[cell] = sorted(ranked[0], key=lambda r: (r.seed, r.key))
            dropped = sum(len(rs) for rs in ranked[1:])
            if dropped:
                self.notes.append(
                    f"{cell[0]} / {ranked[0][0].method_label} / {cell[1]}: {dropped} run(s) of "
                    f"{len(ranked) - 1} other configuration(s) not shown (showing the one with "
                    f"{_epochs(ranked[0][0])} epochs); pass a spec to choose")

    def measured(self, model: str, dataset: str, method: PEMethod, metric: Metric, which: str) -> Measured:
        rows = self.cells.get((model, dataset, method), [])
        values = [v for v in (_metric_value(r, metric, which) for r in rows) if v is not None]
        return Measured(tuple(values), metric.digits)


def _epochs(row: ResultRow) -> int:
    return row.epochs or 0


def build_table(store: Store, table: Union[TableId, None] = None, *, metric: str = "final",
                spec: Optional[str] = None) -> ReportTable:
    """The paper's Table ``table`` (1-6, or "fig5") with measured mean ± std next to the paper's
    values and the difference; ``table=None`` pivots whatever the database holds (model x
    method, by dataset). ``metric``: "final" (default, as the paper reports) or "best" epoch.
    Out-of-range tables and unknown metrics raise a one-line MpvgbenchError."""
    if metric not in METRICS:
        raise MpvgbenchError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    paper_table = None if table is None else get_table(table)
    index = _Index(store.results_frame(spec))
    out = _pivot(index, metric) if paper_table is None else _paper(paper_table, index, metric)
    if spec is not None:
        out.title += f" (spec {spec})"
    out.notes.extend(index.notes)
    return out


def _paper(table: PaperTable, index: _Index, which: str) -> ReportTable:
    columns = [Column(name, "label") for name in table.label_columns]
    if table.has_params:
        columns.append(Column("Params (M)", "params", 3))
    for m in table.metrics:
        header = f"{which.capitalize()} {m.header}" if m.name == "top1" else m.header
        columns += [Column(f"{header} measured", "measured", m.digits),
                    Column(f"{m.header} paper", "paper", m.digits),
                    Column("Δ" if len(table.metrics) == 1 else f"Δ {m.header}", "diff", m.digits)]
    out = ReportTable(table.title, which, columns)
    for row in table.rows:
        cells: list[Any] = list(row.labels)
        if table.has_params:
            cells.append(row.params_printed)
        for m in table.metrics:
            measured = index.measured(row.model, row.dataset, row.pe_method, m, which)
            paper = row.values.get(m.name)
            diff = None if measured.mean is None or paper is None else measured.mean - paper
            cells += [measured, paper, diff]
        out.rows.append(cells)
    if table.downstream:
        out.notes.append(f"dense prediction: experiments/table{table.id}.yaml trains it; a "
                         "smoke stand-in's run shows until a full run is stored")
        out.notes.extend(_dense_settings_notes(table, index))
    out.notes.extend(table.notes)
    out.notes.append(f"measured: mean ± sample std over seeds of the {which} epoch's value; "
                     "Δ = measured mean - paper")
    return out


def _dense_settings_notes(table: PaperTable, index: _Index) -> list[str]:
    """The open questions' answers (result.json ``dense_settings``) of the runs shown."""
    seen: Counter[str] = Counter()
    for row in table.rows:
        for run in index.cells.get((row.model, row.dataset, row.pe_method), []):
            settings = run.extra.get("dense_settings")
            if isinstance(settings, dict):
                seen[", ".join(f"{k} {v}" for k, v in sorted(settings.items()))] += 1
    return [f"settings of {n} run(s): {text} (docs/downstream.md: open questions)" for text, n in sorted(seen.items())]


def _pivot(index: _Index, which: str) -> ReportTable:
    preset_order = {p: i for i, p in enumerate(PRESETS.values())}
    model_order = {m: i for i, m in enumerate(MODEL_NAMES)}
    labels = {method: method.label for (_, _, method) in index.cells}
    methods = sorted(labels, key=lambda k: (preset_order.get(k, len(preset_order)), labels[k]))
    title = f"All finished runs: {which} top-1 (%), mean ± std (n seeds)"
    out = ReportTable(title, which, [Column("Dataset", "label"), Column("Model", "label")]
                      + [Column(labels[k], "measured") for k in methods])
    cells = sorted({(d, m) for (m, d, _) in index.cells},
                   key=lambda dm: (dm[0], model_order.get(dm[1], len(model_order)), dm[1]))
    for dataset, model in cells:
        out.rows.append([DATASET_NAMES.get(dataset, dataset), MODEL_NAMES.get(model, model)]
                        + [index.measured(model, dataset, k, PRIMARY, which) for k in methods])
    dense = sorted({r.primary_metric for rows in index.cells.values() for r in rows} - {"top1"})
    if dense:
        out.notes.append("dense-prediction rows show their primary metric ("
                         + ", ".join(METRIC_LABELS[m] for m in dense) + ")")
    if not out.rows:
        out.notes.append("no finished runs in the database yet")
    return out


# --------------------------------------------------------------------------------- rendering

def to_rich(table: ReportTable, width: Optional[int] = None) -> Any:
    """A ``rich.table.Table``, Δ in green/red. Text is escaped: labels like
    ``mpvg[last_ln_pe=5]`` are not rich markup.

    ``width``: the terminal's. When the table would not fit, label columns that hold one value
    in every row (Table 3's model and backbone) move into the title, and headers wrap; numbers
    never fold and nothing is cut with an ellipsis.
    """
    from rich.console import Console
    from rich.measure import Measurement

    full = _rich_table(table, range(len(table.columns)), table.title)
    if width is None:
        return full
    console = Console(width=10_000)
    if Measurement.get(console, console.options, full).maximum <= width:
        return full
    constant = [i for i, col in enumerate(table.columns) if col.kind == "label" and len(table.rows) > 1
                and len({table.cell_text(col, row[i]) for row in table.rows}) == 1]
    kept = [i for i in range(len(table.columns)) if i not in constant]
    moved = ", ".join(f"{table.columns[i].name} {table.cell_text(table.columns[i], table.rows[0][i])}"
                      for i in constant)
    return _rich_table(table, kept, f"{table.title}" + (f" ({moved})" if moved else ""))


def _rich_table(table: ReportTable, indexes: Iterable[int], title: str) -> Any:
    from rich.markup import escape
    from rich.table import Table

    indexes = list(indexes)
    rich_table = Table(title=escape(title), caption=escape("\n".join(table.notes)) or None,
                       caption_justify="left")
    texts_by_row = [[table.cell_text(table.columns[i], row[i]) for i in indexes] for row in table.rows]
    for position, i in enumerate(indexes):
        col = table.columns[i]
        words = [w for texts in texts_by_row for w in texts[position].split()]
        # Headers wrap at spaces; a value folds only between its words ("80.28 ± 7.26" / "(n=3)").
        rich_table.add_column(escape(col.name), justify="left" if col.kind == "label" else "right",
                              overflow="fold", min_width=max(map(len, words), default=1))
    for row, texts in zip(table.rows, texts_by_row):
        cells = []
        for position, i in enumerate(indexes):
            col, value, text = table.columns[i], row[i], escape(texts[position])
            if col.kind == "diff" and value is not None:
                text = f"[{'green' if value >= 0 else 'red'}]{text}[/]"
            cells.append(text)
        rich_table.add_row(*cells)
    return rich_table


class RichText(str):
    """Plain text of a rendered table that a rich Console prints as the (coloured) table itself,
    instead of parsing the text as markup (which would eat ``[...]`` in method labels)."""

    _renderable: Any

    def __new__(cls, text: str, renderable: Any) -> "RichText":
        obj = super().__new__(cls, text)
        obj._renderable = renderable
        return obj

    def __rich__(self) -> Any:
        return self._renderable


def _rich_text(table: ReportTable) -> str:
    import io

    from rich.console import Console

    renderable = to_rich(table)
    buf = io.StringIO()
    Console(file=buf, width=240, color_system=None, force_terminal=False).print(renderable)
    return RichText(buf.getvalue(), renderable)


def _markdown(table: ReportTable) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [f"**{esc(table.title)}**", "",
             "| " + " | ".join(esc(c.name) for c in table.columns) + " |",
             "|" + "|".join(":---" if c.kind == "label" else "---:" for c in table.columns) + "|"]
    for row in table.rows:
        lines.append("| " + " | ".join(esc(table.cell_text(c, v)) for c, v in zip(table.columns, row))
                     + " |")
    lines += [""] + [f"- {esc(note)}" for note in table.notes]
    return "\n".join(lines).rstrip() + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}", "±": r"$\pm$", "Δ": r"$\Delta$"}


def _tex(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def _latex(table: ReportTable) -> str:
    spec = "".join("l" if c.kind == "label" else "r" for c in table.columns)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_tex(table.title)}}}",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(_tex(c.name) for c in table.columns) + r" \\", r"\midrule"]
    for row in table.rows:
        lines.append(" & ".join(_tex(table.cell_text(c, v)) for c, v in zip(table.columns, row))
                     + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [rf"\par\smallskip{{\footnotesize {_tex(note)}}}" for note in table.notes]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def _csv(table: ReportTable) -> str:
    import csv
    import io

    header: list[str] = []
    for c in table.columns:
        header += [f"{c.name} mean", f"{c.name} std", f"{c.name} n"] if c.kind == "measured" else [c.name]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in table.rows:
        out: list[Any] = []
        for c, v in zip(table.columns, row):
            if c.kind == "measured":
                out += ["" if v.mean is None else v.mean, "" if v.std is None else v.std, v.n]
            else:
                out.append("" if v is None else v)
        writer.writerow(out)
    return buf.getvalue()


def _json(table: ReportTable) -> str:
    rows = [{c.name: v.as_dict() if isinstance(v, Measured) else v for c, v in zip(table.columns, row)}
            for row in table.rows]
    doc = {"title": table.title, "metric": table.metric,
           "columns": [{"name": c.name, "kind": c.kind} for c in table.columns],
           "rows": rows, "notes": table.notes}
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


_RENDERERS = {"table": _rich_text, "markdown": _markdown, "latex": _latex, "csv": _csv, "json": _json}


def render(table: ReportTable, fmt: str = "table") -> str:
    """``fmt``: table (plain text drawn by rich; a rich Console prints it as the coloured table),
    markdown, latex, csv or json. An unknown format is a one-line MpvgbenchError."""
    if fmt not in _RENDERERS:
        raise MpvgbenchError(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}")
    return _RENDERERS[fmt](table)


__all__ = ["Column", "FORMATS", "METRICS", "Measured", "ReportTable", "RichText", "build_table", "render",
           "to_rich"]
