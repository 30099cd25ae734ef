"""Renderers of a :class:`~mpvgbench.report.ReportTable`: rich text, Markdown, LaTeX, CSV, JSON.

Every renderer writes the table's rows and its notes (what the numbers mean), never its
diagnostics (which runs were left out: the CLI prints those on stderr), so an output can be
pasted into a paper draft as it is. Smoke cells say ``smoke`` in every format (a ``smoke`` field
in CSV and JSON). CSV and JSON carry the per-seed values; a table with paired differences has
one CSV row per seed (the cell's statistics repeated on each).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Optional

from mpvgbench.errors import MpvgbenchError
from mpvgbench.stats import PairedDifference

if TYPE_CHECKING:
    from mpvgbench.report_table import Column, ReportTable

FORMATS: tuple[str, ...] = ("table", "markdown", "latex", "csv", "json")


# ------------------------------------------------------------------------------- rich (terminal)


def to_rich(table: "ReportTable", width: Optional[int] = None) -> Any:
    """A ``rich.table.Table``, Δ in green/red. Text is escaped: labels like
    ``mpvg[last_ln_pe=5]`` are not rich markup.

    ``width``: the terminal's. When the table would not fit, it is narrowed step by step until
    it does: label columns that hold one value in every row (the quickstart's dataset and
    model) move into the title; a column whose cells all have the same number of seeds says
    ``(n=3)`` once in its header instead of in every cell; the box loses its vertical lines.
    Headers wrap; numbers never fold and nothing is cut with an ellipsis.
    """
    from rich.console import Console
    from rich.measure import Measurement

    console = Console(width=10_000)

    def fits(candidate: Any) -> bool:
        return Measurement.get(console, console.options, candidate).maximum <= width

    everything = range(len(table.columns))
    full = _rich_table(table, everything, table.title)
    if width is None or fits(full):
        return full
    constant = [i for i, col in enumerate(table.columns) if col.kind == "label" and table.rows
                and len({table.cell_text(col, row[i]) for row in table.rows}) == 1]
    kept = [i for i in everything if i not in constant]
    moved = ", ".join(f"{table.columns[i].name} {table.cell_text(table.columns[i], table.rows[0][i])}"
                      for i in constant)
    title = table.title + (f" ({moved})" if moved else "")
    candidate = _rich_table(table, kept, title)
    if fits(candidate):
        _fix_widths(candidate, width)
        return candidate
    for narrower in ({"n_in_header": True}, {"n_in_header": True, "open_box": True},
                     {"n_in_header": True, "open_box": True, "compact": True}):
        candidate = _rich_table(table, kept, title, **narrower)
        if fits(candidate):
            break
    _fix_widths(candidate, width)
    return candidate


def _fix_widths(rich_table: Any, width: int) -> None:
    """Column widths for ``width`` set here: each column gets its minimum (its longest number or
    word), and the rest of the line goes to the columns that want more, the least hungry first
    (rich's own squeeze shrinks every column alike, numbers too, and then cuts the last one)."""
    from rich.console import Console

    console = Console(width=10_000)
    padding = rich_table.padding[1] + rich_table.padding[3]
    measured = [rich_table._measure_column(console, console.options, c) for c in rich_table.columns]
    # (an edge column without edge padding measures one less: min_width is the true floor)
    lows = [max(m.minimum - padding, c.min_width or 0) for m, c in zip(measured, rich_table.columns)]
    highs = [max(m.maximum - padding, low) for m, low in zip(measured, lows)]
    spare = width - rich_table._extra_width - padding * len(lows) - sum(lows)
    widths = list(lows)
    order = sorted(range(len(lows)), key=lambda i: highs[i] - lows[i])
    for position, i in enumerate(order):
        give = min(highs[i] - lows[i], max(spare, 0) // (len(order) - position))
        widths[i] += give
        spare -= give
    for column, value in zip(rich_table.columns, widths):
        column.width = value


def _uniform_n(table: "ReportTable", index: int) -> Optional[int]:
    from mpvgbench.report_table import Measured

    ns = {v.n for row in table.rows if isinstance(v := row[index], Measured) and v.n}
    return ns.pop() if len(ns) == 1 else None


def _rich_table(table: "ReportTable", indexes: Iterable[int], title: str, *, n_in_header: bool = False,
                open_box: bool = False, compact: bool = False) -> Any:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    indexes = list(indexes)
    header_n = {i: _uniform_n(table, i) if n_in_header and table.columns[i].kind == "measured" else None
                for i in indexes}
    notes = table.notes + (["±: half-width of the 95% interval"] if compact and table.baseline else [])
    # open_box: no lines at all (as `status` draws), the header underlined; each column then
    # costs its two padding characters only
    rich_table = Table(title=escape(title), caption=escape("\n".join(notes)) or None,
                       caption_justify="left", box=None if open_box else box.HEAVY_HEAD,
                       pad_edge=not open_box, show_edge=not open_box,
                       header_style="bold underline" if open_box else "bold")
    texts_by_row = [[table.cell_text(table.columns[i], row[i], with_n=header_n[i] is None, compact=compact)
                     for i in indexes] for row in table.rows]
    for position, i in enumerate(indexes):
        col = table.columns[i]
        name = col.name + (f" (n={header_n[i]})" if header_n[i] is not None else "")
        texts = [row_texts[position] for row_texts in texts_by_row]
        # Headers and labels wrap at spaces; a number never folds: "80.28 ± 7.26" stays one line
        # (a measured cell may still fold before its "(n=3)").
        if col.kind == "label":
            widest = max((len(w) for t in texts for w in t.split()), default=1)
        else:
            widest = max((len(t.split(" (")[0]) for t in texts), default=1)
        rich_table.add_column(escape(name), justify="left" if col.kind == "label" else "right",
                              overflow="fold", min_width=widest)
    for row, texts in zip(table.rows, texts_by_row):
        cells = []
        for position, i in enumerate(indexes):
            col, value, text = table.columns[i], row[i], escape(texts[position])
            if col.kind == "diff" and isinstance(value, float):
                text = f"[{'green' if value >= 0 else 'red'}]{text}[/]"
            elif isinstance(value, PairedDifference) and value.significant:
                text = f"[bold]{text}[/]"
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


def _rich_text(table: "ReportTable") -> str:
    from rich.console import Console

    renderable = to_rich(table)
    buf = io.StringIO()
    Console(file=buf, width=240, color_system=None, force_terminal=False).print(renderable)
    return RichText(buf.getvalue(), renderable)


# --------------------------------------------------------------------------- markdown, LaTeX


def _markdown(table: "ReportTable") -> str:
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


def _latex(table: "ReportTable") -> str:
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


# -------------------------------------------------------------------------------- CSV, JSON

_PAIRED_SEED_FIELDS = ("seed value", "seed baseline", "seed diff")


def _csv_header(column: "Column") -> list[str]:
    if column.kind == "measured":
        return [f"{column.name} {part}" for part in ("mean", "std", "n", "smoke")]
    if column.kind == "paired":
        name = column.name.replace(" [95% CI]", "")
        return [f"{name} {part}" for part in ("diff", "ci_low", "ci_high", "p", *_PAIRED_SEED_FIELDS)]
    if column.kind == "pvalue":  # the paired column carries it
        return []
    return [column.name]


def _csv_cells(column: "Column", value: Any, seed: Optional[int]) -> list[Any]:
    from mpvgbench.report_table import Measured

    def blank(v: Any) -> Any:
        return "" if v is None else v

    if isinstance(value, Measured):
        return [blank(value.mean), blank(value.std), value.n, str(value.smoke).lower()]
    if column.kind == "paired":
        if not isinstance(value, PairedDifference):
            return [blank(value), "", "", "", "", "", ""]
        pair = next((p for p in value.pairs if p.seed == seed), None)
        per_seed = [pair.value, pair.baseline, pair.diff] if pair else ["", "", ""]
        return [value.mean, blank(value.low), blank(value.high), blank(value.p_value), *per_seed]
    if column.kind == "pvalue":
        return []
    return [blank(value)]


def _csv(table: "ReportTable") -> str:
    paired = [i for i, c in enumerate(table.columns) if c.kind == "paired"]
    header = ["seed"] if paired else []
    for c in table.columns:
        header += _csv_header(c)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in table.rows:
        seeds = sorted({p.seed for i in paired if isinstance(row[i], PairedDifference) for p in row[i].pairs})
        for seed in seeds or [None]:
            out: list[Any] = ["" if seed is None else seed] if paired else []
            for c, v in zip(table.columns, row):
                out += _csv_cells(c, v, seed)
            writer.writerow(out)
    return buf.getvalue()


def _json_value(value: Any) -> Any:
    from mpvgbench.report_table import Measured

    if isinstance(value, (Measured, PairedDifference)):
        return value.as_dict()
    return value


def _json(table: "ReportTable") -> str:
    rows = [{c.name: _json_value(v) for c, v in zip(table.columns, row)} for row in table.rows]
    doc = {"title": table.title, "metric": table.metric, "baseline": table.baseline, "smoke": table.has_smoke,
           "columns": [{"name": c.name, "kind": c.kind} for c in table.columns],
           "rows": rows, "notes": table.notes}
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


_RENDERERS = {"table": _rich_text, "markdown": _markdown, "latex": _latex, "csv": _csv, "json": _json}


def render(table: "ReportTable", fmt: str = "table") -> str:
    """``fmt``: table (plain text drawn by rich; a rich Console prints it as the coloured table),
    markdown, latex, csv or json. An unknown format is a one-line MpvgbenchError."""
    if fmt not in _RENDERERS:
        raise MpvgbenchError(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}")
    return _RENDERERS[fmt](table)


__all__ = ["FORMATS", "RichText", "render", "to_rich"]
