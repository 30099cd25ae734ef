"""Terminal tables that fit 80 columns without cutting a value a user needs.

Rules, shared by ``status``, ``models``, ``run --dry-run``, the live view and ``report``: no
ellipsis anywhere (a cell that does not fit folds onto the next line), run keys shown as their
shortest unique prefix of at least 8 digits (every command that takes a KEY accepts a prefix),
model names in the paper's short form, and long free text (errors) below the table, not in it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Optional

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mpvgbench.paper import MODEL_NAMES

KEY_PREFIX = 8


def short_keys(keys: Iterable[str], minimum: int = KEY_PREFIX) -> dict[str, str]:
    """Each key -> its shortest prefix (>= ``minimum`` digits) that no other listed key shares."""
    keys = sorted(set(keys))
    out: dict[str, str] = {}
    for i, key in enumerate(keys):
        length = minimum
        for other in (keys[i - 1] if i else "", keys[i + 1] if i + 1 < len(keys) else ""):
            common = next((n for n, (a, b) in enumerate(zip(key, other)) if a != b), len(other))
            length = max(length, common + 1)
        out[key] = key[: min(length, len(key))]
    return out


def model_name(name: str) -> str:
    """The paper's short name of a model (DeiT-Ti), or the catalog name for models it lacks."""
    return MODEL_NAMES.get(name, name)


def narrow_table(columns: Sequence[str], *, title: Optional[str] = None,
                 right: Iterable[str] = ()) -> Table:
    """A borderless table whose cells fold instead of being cut with an ellipsis."""
    right_aligned = set(right)
    # No box: its column separators cost a character per column on an 80-column terminal.
    table = Table(title=title, box=None, pad_edge=False, padding=(0, 1), expand=False,
                  title_justify="left", header_style="bold underline")
    for column in columns:
        table.add_column(column, overflow="fold", justify="right" if column in right_aligned else "left")
    return table


def fit_numbers(table: Table, rows: Sequence[Sequence[Any]]) -> None:
    """Keep each column at least as wide as its longest single word, so numbers never fold."""
    for index, column in enumerate(table.columns):
        words = [w for row in rows for w in str(row[index]).split()]
        if words:
            column.min_width = max(len(w) for w in words)


def add_plain_row(table: Table, cells: Sequence[str]) -> None:
    """A row of plain text: ``mpvg[last_ln_pe=5]`` is a method label, not rich markup."""
    table.add_row(*(escape(str(cell)) for cell in cells))


def shared_columns(columns: Sequence[str], rows: Sequence[dict[str, str]], candidates: Iterable[str]) -> list[str]:
    """Columns (of ``candidates``) that hold one value in every row of a multi-row table: shown
    once above the table instead of in every row, so the table fits 80 columns."""
    if len(rows) < 2:
        return []
    return [c for c in candidates if c in columns and len({row[c] for row in rows}) == 1]


def console() -> Console:
    """stdout; rich takes the width from the terminal, or COLUMNS, or 80 when piped."""
    return Console(highlight=False)
