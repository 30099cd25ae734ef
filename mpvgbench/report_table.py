"""The table a report builds and every renderer reads: columns, rows of cell values, notes.

A cell is a label (str), a :class:`Measured` (the values of one cell's runs, one per seed), a
:class:`~mpvgbench.stats.PairedDifference`, a float (the paper's number, a Δ) or None.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from mpvgbench.paper import Metric
from mpvgbench.report_runs import Variant
from mpvgbench.stats import PairedDifference

ColumnKind = Literal["label", "params", "measured", "paper", "diff", "paired", "pvalue"]
BASELINE_MARK = "baseline"


@dataclass(frozen=True)
class Measured:
    """The runs of one cell: their values (one per seed), mean and sample std."""

    values: tuple[float, ...] = ()
    digits: int = 2
    seeds: tuple[int, ...] = ()
    smoke: bool = False

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> Optional[float]:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> Optional[float]:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def text(self, pm: str = "±", with_n: bool = True) -> str:
        if self.mean is None:
            return "-"
        std = "" if self.std is None else f" {pm} {self.std:.{self.digits}f}"
        tail = ", ".join(([f"n={self.n}"] if with_n else []) + (["smoke"] if self.smoke else []))
        return f"{self.mean:.{self.digits}f}{std}" + (f" ({tail})" if tail else "")

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n, "values": list(self.values),
                "seeds": list(self.seeds), "smoke": self.smoke}

    @classmethod
    def of(cls, variant: Optional[Variant], metric: Metric, which: str) -> "Measured":
        if variant is None:
            return cls(digits=metric.digits)
        by_seed = variant.values(metric, which)
        return cls(tuple(by_seed.values()), metric.digits, tuple(by_seed), variant.smoke)


@dataclass(frozen=True)
class Column:
    name: str
    kind: ColumnKind
    digits: int = 2


@dataclass
class ReportTable:
    """Columns and rows; a row holds one value per column: str (label), Measured,
    PairedDifference, float or None. ``variants[i]`` maps a column index of row ``i`` to the
    runs behind it (the HTML page's provenance)."""

    title: str
    metric: str
    columns: list[Column]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the numbers mean: rendered
    diagnostics: list[str] = field(default_factory=list)  # about runs not shown: stderr only
    variants: list[dict[int, Variant]] = field(default_factory=list)
    baseline: Optional[str] = None

    @property
    def has_smoke(self) -> bool:
        return any(isinstance(v, Measured) and v.smoke and v.n for row in self.rows for v in row)

    def add_row(self, cells: list[Any], variants: Optional[dict[int, Variant]] = None) -> None:
        self.rows.append(cells)
        self.variants.append(variants or {})

    def cell_text(self, column: Column, value: Any, pm: str = "±", with_n: bool = True,
                  compact: bool = False) -> str:
        if isinstance(value, Measured):
            return value.text(pm, with_n)
        if isinstance(value, PairedDifference):
            return paired_text(value, column.digits, compact)
        if value is None:
            return "-"
        if column.kind == "pvalue" and isinstance(value, float):
            return f"{value:.3f}" if value >= 0.001 else "<0.001"
        if column.kind == "diff" and isinstance(value, float):
            return f"{value:+.{column.digits}f}"
        if isinstance(value, float):
            return f"{value:.{column.digits}f}"
        return str(value)


def paired_text(value: PairedDifference, digits: int = 2, compact: bool = False) -> str:
    """``+0.52 [+0.10, +0.94]*``: mean difference, 95% interval, ``*`` when it excludes 0;
    ``compact``: ``+0.52 ±0.42*`` (± the interval's half-width: narrow terminals)."""
    if value.low is None or value.high is None:
        return f"{value.mean:+.{digits}f} (n={value.n})"
    mark = "*" if value.significant else ""
    if compact:
        return f"{value.mean:+.{digits}f} ±{(value.high - value.low) / 2:.{digits}f}{mark}"
    return f"{value.mean:+.{digits}f} [{value.low:+.{digits}f}, {value.high:+.{digits}f}]{mark}"


__all__ = ["BASELINE_MARK", "Column", "ColumnKind", "Measured", "ReportTable", "paired_text"]
