"""One static HTML page of everything stored: tables, training curves, analysis figures.

``build_html(store)`` returns the page as a string; it needs no network to be read: the CSS is
inline, every image is a ``data:image/png;base64`` URI, and there is no JavaScript. Sections:

1. the pivot of the selected runs and every paper table with at least one measured value, or
   the one table asked for (the :class:`~mpvgbench.report.ReportTable` objects of
   :func:`mpvgbench.report.build_table`); each measured cell links to its provenance;
2. provenance (:mod:`mpvgbench.report_provenance`): per configuration of a cell, its recipe, full
   config, and per seed the run's key, value, git commit and environment;
3. training curves (:mod:`mpvgbench.curves`): top-1 and losses per epoch, mean and min..max band
   over seeds, one line (colour, line style and marker) per method, one row per (model, dataset);
4. analysis (``mpvgbench analyze``): the token/PE correlation per method from the numbers in the
   database, and the PNG figures it wrote, found through the database (``pe_figures``) and under
   the ``analysis_dirs`` given (e.g. ``--analysis analysis``).

The page names no absolute path: the database by its name only, figures by run or file name.
"""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from mpvgbench.curves import (
    collect_curves, correlation_analyses, correlation_figure, curves_figure, figure_png, method_order,
)
from mpvgbench.paper import TABLES, TableId
from mpvgbench.report import Measured, ReportTable, build_table
from mpvgbench.report_provenance import database_name, provenance_anchor, provenance_html
from mpvgbench.report_runs import spec_selection
from mpvgbench.stats import PairedDifference
from mpvgbench.store import Store
from mpvgbench.store_schema import RunRow

__all__ = ["MAX_FIGURES", "build_html", "compare_html", "measured_tables", "png_data_uri", "table_html"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: analysis PNGs embedded at most (a large matrix has four per run; the page must stay loadable)
MAX_FIGURES = 60
MAX_FIGURE_BYTES = 2_000_000

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2rem; margin-top: 2.5rem; }
h3 { font-size: 1.05rem; margin-top: 1.6rem; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .9rem; }
caption { text-align: left; font-weight: 600; padding-bottom: .3rem; }
th, td { padding: .25rem .6rem; border-bottom: 1px solid #e3e3e3; }
th { background: #f3f5f7; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.pos { color: #17803d; } td.neg { color: #b42318; } td.none { color: #999; }
td.sig { font-weight: 600; } td.smoke { background: #fff4d6; }
td a { color: inherit; text-decoration: none; border-bottom: 1px dotted #999; }
details { margin: .4rem 0 .8rem; } pre { font-size: .8rem; background: #f7f7f7; padding: .5rem; overflow-x: auto; }
ul.notes { color: #555; font-size: .85rem; margin-top: .2rem; }
figure { margin: 1rem 0; } figcaption { color: #555; font-size: .85rem; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.meta { color: #666; font-size: .85rem; }
nav a { margin-right: 1rem; }
"""


# ------------------------------------------------------------------------------------ tables


def measured_tables(store: Store, *, metric: str = "final", spec: Optional[str] = None,
                    selection: Optional[Mapping[str, str]] = None, baseline: Optional[str] = None) -> list[ReportTable]:
    """The pivot, then each paper table (1-6, fig5) that has at least one measured value."""
    tables = [build_table(store, None, metric=metric, spec=spec, selection=selection, baseline=baseline)]
    for table_id in TABLES:
        table = build_table(store, table_id, metric=metric, spec=spec, selection=selection, baseline=baseline)
        if any(isinstance(v, Measured) and v.n for row in table.rows for v in row):
            tables.append(table)
    return tables


def _cell(table: ReportTable, column: Any, value: Any, link: Optional[str] = None) -> str:
    text = html.escape(table.cell_text(column, value))
    if column.kind == "label":
        return f"<td>{text}</td>"
    classes = ["num"]
    if value is None or (isinstance(value, Measured) and value.n == 0):
        classes.append("none")
    elif column.kind == "diff" and isinstance(value, float):
        classes.append("pos" if value >= 0 else "neg")
    elif isinstance(value, PairedDifference) and value.significant:
        classes.append("sig")
    if isinstance(value, Measured) and value.smoke and value.n:
        classes.append("smoke")
    if link is not None:
        text = f'<a href="#{link}" title="provenance">{text}</a>'
    return f'<td class="{" ".join(classes)}">{text}</td>'


def table_html(table: ReportTable) -> str:
    """A ReportTable as an HTML ``<table>`` (with caption) and its notes as a list; a measured
    cell links to its configuration's provenance (:func:`provenance_anchor`)."""
    head = "".join(f'<th scope="col">{html.escape(c.name)}</th>' for c in table.columns)

    def link(row_index: int, column_index: int) -> Optional[str]:
        variants = table.variants[row_index] if row_index < len(table.variants) else {}
        variant = variants.get(column_index)
        return provenance_anchor(variant) if variant is not None else None

    body = "\n".join("<tr>" + "".join(_cell(table, c, v, link(r, i))
                                             for i, (c, v) in enumerate(zip(table.columns, row)))
                     + "</tr>" for r, row in enumerate(table.rows))
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in table.notes)
    return (f"<table>\n<caption>{html.escape(table.title)}</caption>\n<thead><tr>{head}</tr></thead>\n"
            f"<tbody>\n{body}\n</tbody>\n</table>\n" + (f'<ul class="notes">{notes}</ul>\n' if notes else ""))


# ------------------------------------------------------------------------------------ images


def png_data_uri(data: bytes) -> str:
    """``data:image/png;base64,...`` of PNG bytes (anything else is a bug: assert)."""
    assert data.startswith(PNG_SIGNATURE), "not a PNG"
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figure(data: bytes, alt: str, caption: str) -> str:
    return (f'<figure><img src="{png_data_uri(data)}" alt="{html.escape(alt, quote=True)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>\n")


def _readable_png(path: Path) -> Optional[bytes]:
    # a figure that was deleted, is huge or is not a PNG is skipped: the page is still useful
    try:
        if not path.is_file() or path.stat().st_size > MAX_FIGURE_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    return data if data.startswith(PNG_SIGNATURE) else None


def analysis_pngs(store: Store, analysis_dirs: Sequence[Path], *, keys: Optional[Collection[str]] = None,
                  skip_top_correlation: bool = False) -> list[Path]:
    """PNGs of ``mpvgbench analyze``: those the database names (``pe_figures``; of the runs
    ``keys`` if given), then every ``*.png`` under ``analysis_dirs`` (without their
    ``correlation.png`` if ``skip_top_correlation``); de-duplicated, in a stable order."""
    found: list[Path] = []
    for key, values in store.analysis().items():
        figures = values.get("pe_figures") if keys is None or key in keys else None
        if isinstance(figures, dict):
            found += [Path(p) for p in figures.values() if isinstance(p, str)]
    for folder in analysis_dirs:
        found += sorted(Path(folder).rglob("*.png"))
    if skip_top_correlation:  # the page draws its own, one line per method
        found = [p for p in found if not (p.name == "correlation.png" and Path(p).parent.resolve()
                                          in {Path(d).resolve() for d in analysis_dirs})]
    seen: set[Path] = set()
    unique = []
    for path in found:
        resolved = path.resolve()
        if resolved not in seen:
            seen.add(resolved)
            unique.append(path)
    return unique


def _figure_caption(path: Path, runs: dict[str, RunRow]) -> str:
    # analyze writes <out>/<key>/<figure>.png: name the run, not only its hash
    run = runs.get(path.parent.name)
    if run is None:  # a file name, never its folder: the page may travel
        return path.name
    return f"{run.model} / {run.method_label} / {run.dataset} seed {run.seed} ({run.key[:8]}): {path.stem}"


def _figure_order(paths: Sequence[Path], runs: dict[str, RunRow]) -> list[Path]:
    """Figures of known runs grouped like the tables (model, dataset, method, seed), then the rest."""
    rank = {m: i for i, m in enumerate(method_order([r.method for r in runs.values()]))}

    def key(item: tuple[int, Path]) -> tuple[Any, ...]:
        position, path = item
        run = runs.get(path.parent.name)
        if run is None:
            return (1, position)
        return (0, run.model, run.dataset, rank[run.method], run.seed, run.key, path.stem)

    return [path for _, path in sorted(enumerate(paths), key=key)]


# ---------------------------------------------------------------------------------- the page


def _section(anchor: str, title: str, body: Iterable[str]) -> str:
    return f'<section id="{anchor}">\n<h2>{html.escape(title)}</h2>\n' + "".join(body) + "</section>\n"


def build_html(store: Store, *, metric: str = "final", spec: Optional[str] = None,
               selection: Optional[Mapping[str, str]] = None, analysis_dirs: Sequence[Path] = (),
               title: str = "mpvgbench report", table: Optional[TableId] = None,
               baseline: Optional[str] = None) -> str:
    """The whole page (see the module docstring). ``selection`` (job key -> dataset, from a
    spec's matrix) restricts tables, curves and analysis to those runs (``spec`` names them);
    ``table``: only that paper table (or the pivot, ``"pivot"``), else every measured one;
    ``baseline``: paired differences to that method; ``analysis_dirs`` are folders of
    ``mpvgbench analyze --out``."""
    if selection is None and spec is not None:
        selection = spec_selection(store, spec)
    if table is None:
        tables = measured_tables(store, metric=metric, spec=spec, selection=selection, baseline=baseline)
    else:
        chosen = None if table == "pivot" else table
        tables = [build_table(store, chosen, metric=metric, spec=spec, selection=selection, baseline=baseline)]
    sections = [_section("tables", "Tables", (table_html(t) for t in tables)),
                _section("provenance", "Provenance", [provenance_html(tables)])]

    panels = collect_curves(store, keys=selection)
    curve_note = ("<p>Per epoch: validation top-1, train loss and validation loss. Line: mean over "
                  "seeds; band: min..max over seeds; each method has its own colour, line style and "
                  "marker.</p>\n")
    curves = [curve_note, _figure(figure_png(curves_figure(panels)), "training curves",
                                  f"{len(panels)} (model, dataset) panel(s)")] if panels else \
        ["<p>No finished run has per-epoch metrics yet.</p>\n"]
    sections.append(_section("curves", "Training curves", curves))
    sections.append(_section("analysis", "Analysis", _analysis_parts(store, selection, analysis_dirs)))

    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    scope = f", spec {spec}" if spec else ""
    meta = (f'<p class="meta">database {html.escape(database_name(store.where))}{html.escape(scope)}; '
            f"metric: {metric} epoch; written {stamp}</p>\n")
    nav = ('<nav><a href="#tables">Tables</a><a href="#provenance">Provenance</a><a href="#curves">Curves</a>'
           '<a href="#analysis">Analysis</a></nav>\n')
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n{meta}{nav}" + "".join(sections) + "</body>\n</html>\n")


def _analysis_parts(store: Store, selection: Optional[Mapping[str, str]], analysis_dirs: Sequence[Path]) -> list[str]:
    parts: list[str] = []
    keys = None if selection is None else list(selection)
    runs = {r.key: r for r in store.runs(keys=keys)}
    correlations = correlation_analyses(store, keys)
    if correlations:
        parts.append(_figure(figure_png(correlation_figure(correlations)), "correlation by method",
                             f"token/PE correlation per layer of {len(correlations)} analysed run(s), "
                             "one line per method (mean over seeds, band min..max)"))
    pngs = _figure_order(analysis_pngs(store, analysis_dirs, keys=None if keys is None else set(keys),
                                       skip_top_correlation=bool(correlations)), runs)
    embedded = 0
    for path in pngs:
        if embedded >= MAX_FIGURES:
            parts.append(f"<p>{len(pngs) - MAX_FIGURES} more figure(s) not embedded (at most {MAX_FIGURES}).</p>\n")
            break
        data = _readable_png(path)
        if data is not None:
            parts.append(_figure(data, path.stem, _figure_caption(path, runs)))
            embedded += 1
    if not parts:
        parts.append("<p>No analysis yet: <code>mpvgbench analyze SPEC --out analysis</code>, "
                     "then <code>mpvgbench report --format html --analysis analysis -o report.html</code>.</p>\n")
    return parts


def compare_html(diff: ReportTable, numbers: ReportTable, figure: Any, title: str = "mpvgbench compare") -> str:
    """``mpvgbench compare --format html``: the config differences, the final numbers and the
    curves (a matplotlib figure) on one static page."""
    body = (table_html(diff) + table_html(numbers)
            + _figure(figure_png(figure), "training curves", "one line per run: colour, line style and marker"))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n{body}</body>\n</html>\n")
