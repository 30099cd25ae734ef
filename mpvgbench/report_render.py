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
    from mpvgbench.report import Column, ReportTable

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
        return width is None or Measurement.get(console, console.options, candidate).maximum <= width

    everything = range(len(table.columns))
    full = _rich_table(table, everything, table.title)
    if fits(full):
        return full
    constant = [i for i, col in enumerate(table.columns) if col.kind == "label" and table.rows
                and len({table.cell_text(col, row[i]) for row in table.rows}) == 1]
    kept = [i for i in everything if i not in constant]
    moved = ", ".join(f"{table.columns[i].name} {table.cell_text(table.columns[i], table.rows[0][i])}"
                      for i in constant)
    title = table.title + (f" ({moved})" if moved else "")
    candidate = _rich_table(table, kept, title)
    if fits(candidate):
        return candidate
    candidate = _rich_table(table, kept, title, n_in_header=True)
    if fits(candidate):
        return candidate
    return _rich_table(table, kept, title, n_in_header=True, open_box=True)


def _uniform_n(table: "ReportTable", index: int) -> Optional[int]:
    from mpvgbench.report import Measured

    ns = {v.n for row in table.rows if isinstance(v := row[index], Measured) and v.n}
    return ns.pop() if len(ns) == 1 else None


def _rich_table(table: "ReportTable", indexes: Iterable[int], title: str, *, n_in_header: bool = False,
                open_box: bool = False) -> Any:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    indexes = list(indexes)
    header_n = {i: _uniform_n(table, i) if n_in_header and table.columns[i].kind == "measured" else None
                for i in indexes}
    rich_table = Table(title=escape(title), caption=escape("\n".join(table.notes)) or None,
                       caption_justify="left", box=box.SIMPLE_HEAD if open_box else box.HEAVY_HEAD,
                       pad_edge=not open_box)
    texts_by_row = [[table.cell_text(table.columns[i], row[i], with_n=header_n[i] is None) for i in indexes]
                    for row in table.rows]
    for position, i in enumerate(indexes):
        col = table.columns[i]
        name = col.name + (f" (n={header_n[i]})" if header_n[i] is not None else "")
        words = [w for texts in texts_by_row for w in texts[position].split()]
        # Headers wrap at spaces; a value folds only between its words ("80.28 ± 7.26" / "(n=3)").
        rich_table.add_column(escape(name), justify="left" if col.kind == "label" else "right",
                              overflow="fold", min_width=max(map(len, words), default=1))
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
        return [f"{column.name} {part}" for part in ("diff", "ci_low", "ci_high", "p", *_PAIRED_SEED_FIELDS)]
    return [column.name]


def _csv_cells(column: "Column", value: Any, seed: Optional[int]) -> list[Any]:
    from mpvgbench.report import Measured

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
    from mpvgbench.report import Measured

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
