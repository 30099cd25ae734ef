"""The finished runs a report shows, with what tells them apart.

``load_runs(store, selection)`` joins each finished run's result with its config and provenance
into a :class:`ReportRun`. ``selection`` maps job keys to the dataset each one reports as: the
CLI builds it from a spec's matrix (``report SPEC [--set] [--only] [--smoke]``), so a report shows
exactly the runs ``run`` made with the same arguments, and a smoke run on generated data reports
as the cell it stands in for. Without it every finished run is loaded.

A run is **smoke** when it trained on generated data (``synthetic`` or a dense stand-in such as
``coco_synthetic``): its numbers check the pipeline and measure nothing, so every output marks
them and no Δ against the paper is computed for them.

Runs of one cell that differ in a configuration field (epochs, lr, a fine-tune next to its
parent) are *variants*; :func:`distinguishing_fields` names the fields in which the variants of
a group differ, so tables show each variant as its own row with those fields as columns.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from mpvgbench.methods import PEMethod
from mpvgbench.paper import Metric
from mpvgbench.catalog import stood_in_for
from mpvgbench.recipes import DOWNSTREAM_TASKS, SMOKE_DATASETS
from mpvgbench.store import Store
from mpvgbench.store_schema import ResultRow, RunRow

GENERATED_DATASETS: frozenset[str] = frozenset({"synthetic", *SMOKE_DATASETS.values()})


def _reported_as(dataset: str) -> str:
    """A real-format stand-in reports as the dataset it stands in for (ImageNet's stand-in:
    ImageNet); ``synthetic`` tensors keep their name (they keep no trace of what they replaced)."""
    if dataset not in SMOKE_DATASETS.values():
        return dataset
    return next(iter(stood_in_for(dataset)), dataset)
#: config fields that name a cell or a seed, never a variant
_CELL_FIELDS = frozenset({"model", "method", "dataset", "seed"})
#: the dataset the paper pre-trains on; a smoke fine-tune never stands in for it
PRETRAIN_DATASET = "imagenet"


@dataclass(frozen=True)
class Provenance:
    """Where a number came from: code, software and machine."""

    git_commit: Optional[str]
    git_dirty: Optional[bool]
    torch: Optional[str]
    timm: Optional[str]
    python: Optional[str]
    device: Optional[str]
    host: Optional[str]

    @property
    def commit_text(self) -> str:
        if not self.git_commit:
            return "unknown"
        return self.git_commit[:10] + (" (dirty)" if self.git_dirty else "")


@dataclass(frozen=True)
class ReportRun:
    """A finished run as a report sees it."""

    row: ResultRow
    config: dict[str, Any]
    dataset: str  # the dataset it reports as (a selection's cell, or a stand-in's dataset)
    smoke: bool
    provenance: Provenance
    parent_dataset: Optional[str] = None  # a fine-tune: the dataset of the run it started from

    key = property(lambda self: self.row.key)
    model = property(lambda self: self.row.model)
    method = property(lambda self: self.row.method)
    seed = property(lambda self: self.row.seed)
    variant = property(lambda self: self.row.variant)

    @property
    def init_from(self) -> Optional[str]:
        value = self.config.get("init_from")
        return value if isinstance(value, str) else None

    def field_text(self, name: str) -> str:
        """A config field (dotted path, e.g. ``recipe.lr``) as a table shows it."""
        if name == "init_from":
            return "-" if self.init_from is None else f"from {self.parent_dataset or self.init_from[:8]}"
        return _text(flatten(self.config).get(name))


PRIMARY = Metric("primary", "primary metric")  # each run's own: top-1, AP box or mIoU


def metric_value(row: ResultRow, metric: Metric, which: str) -> Optional[float]:
    """The one place a report reads a stored number: ``which`` ("final"/"best") value of
    ``metric``, each from its own column (``PRIMARY``: the run's primary metric, the one its task
    reports: top-1, AP box or mIoU); None when missing or not finite."""
    value = row.primary(which) if metric.name == PRIMARY.name else row.metric(metric.name, which)
    if value is None or not math.isfinite(value):
        return None
    return value


def is_generated(dataset: str) -> bool:
    return dataset in GENERATED_DATASETS


def load_runs(store: Store, selection: Optional[Mapping[str, str]] = None) -> list[ReportRun]:
    """Finished runs (of ``selection``'s keys, reporting as its datasets, if given)."""
    results = store.results_frame(keys=list(selection) if selection is not None else None)
    runs = {r.key: r for r in store.runs(keys=[r.key for r in results])} if results else {}
    parents = {c["init_from"] for r in runs.values() if isinstance((c := r.config).get("init_from"), str)}
    parent_datasets = {r.key: r.dataset for r in store.runs(keys=sorted(parents))} if parents else {}
    out = []
    for row in results:
        run = runs[row.key]
        dataset = selection[row.key] if selection is not None else _reported_as(row.dataset)
        init_from = run.config.get("init_from")
        out.append(ReportRun(row, run.config, dataset, is_generated(row.dataset), _provenance(run, row),
                             parent_datasets.get(init_from) if isinstance(init_from, str) else None))
    return out


def spec_selection(store: Store, spec_name: str) -> dict[str, str]:
    """The runs registered under a spec's *name* (library callers; the CLI selects by matrix)."""
    return {run.key: _reported_as(run.dataset) for run in store.runs(spec_name=spec_name)}


def _provenance(run: RunRow, row: ResultRow) -> Provenance:
    env = row.extra.get("env") if isinstance(row.extra.get("env"), dict) else {}
    return Provenance(run.git_commit, run.git_dirty, run.torch_version or env.get("torch"),
                      run.timm_version or env.get("timm"), env.get("python"), run.device or env.get("device"),
                      run.host or env.get("host"))


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"recipe": {"lr": 1}}`` -> ``{"recipe.lr": 1}`` (lists and tuples stay values)."""
    out: dict[str, Any] = {}
    for name, value in config.items():
        path = f"{prefix}{name}"
        if isinstance(value, Mapping) and name != "method":
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_text(v) for v in value) + "]"
    return str(value)


#: fields that name a difference best, tried first: a fine-tune is told from its parent by
#: ``init_from``, not by the twenty recipe values the transfer recipe also changes
_FIELD_PRIORITY = ("init_from", "recipe.epochs", "recipe.max_iters", "recipe.lr", "recipe.batch_size",
                   "img_size", "recipe.weight_decay", "recipe.optimizer")


def distinguishing_fields(groups: Iterable[Sequence[ReportRun]]) -> list[str]:
    """Config fields (dotted, cell fields excluded) that tell the variants of each group apart:
    per group, fields are added in :data:`_FIELD_PRIORITY` order, then by name, each only if
    it splits variants the fields before it left together, until every variant has its own
    values. ``init_from`` compares by the parent's dataset, so the fine-tunes of several
    methods line up in one row. The union over groups, in the order found."""
    chosen: dict[str, None] = {}
    for runs in groups:
        variants = list({r.variant: r for r in runs}.values())
        if len(variants) < 2:
            continue
        names = sorted({n for r in variants for n in flatten(r.config)} - _CELL_FIELDS,
                       key=lambda n: (_FIELD_PRIORITY.index(n) if n in _FIELD_PRIORITY else len(_FIELD_PRIORITY), n))
        # methods are columns: variants only need telling apart within one method
        signature: dict[str, tuple[Any, ...]] = {r.variant: (r.method,) for r in variants}
        for name in names:
            if len(set(signature.values())) == len(variants):
                break
            split = {r.variant: signature[r.variant] + (r.field_text(name),) for r in variants}
            if len(set(split.values())) > len(set(signature.values())):
                signature = split
                chosen[name] = None
    return list(chosen)


def column_name(name: str, others: Sequence[str]) -> str:
    """``recipe.lr`` -> ``lr`` unless another field ends the same way."""
    short = name.rsplit(".", 1)[-1]
    return short if sum(o.rsplit(".", 1)[-1] == short for o in others) == 1 else name


@dataclass
class Variant:
    """The runs of one configuration of one cell (they differ only by seed), by seed."""

    runs: list[ReportRun] = field(default_factory=list)

    @property
    def smoke(self) -> bool:
        return any(r.smoke for r in self.runs)

    def values(self, metric: Metric, which: str) -> dict[int, float]:
        """``{seed: value}``; a seed trained twice (two keys) keeps the first key's value."""
        out: dict[int, float] = {}
        for run in sorted(self.runs, key=lambda r: (r.seed, r.key)):
            value = metric_value(run.row, metric, which)
            if value is not None:
                out.setdefault(run.seed, value)
        return out


def group_variants(runs: Iterable[ReportRun]) -> dict[tuple[str, str, PEMethod], dict[str, Variant]]:
    """``{(model, dataset, method): {variant: Variant}}``."""
    cells: dict[tuple[str, str, PEMethod], dict[str, Variant]] = defaultdict(dict)
    for run in runs:
        cells[(run.model, run.dataset, run.method)].setdefault(run.variant, Variant()).runs.append(run)
    return cells


def stands_in_for(run: ReportRun, dataset: str, parents: Collection[str]) -> bool:
    """Whether a smoke run on ``synthetic`` (which keeps no trace of the dataset it replaced)
    stands in for a paper row on ``dataset``: never for a dense dataset (those have their own
    stand-ins), a fine-tune never for the pre-training dataset, and a run another run starts
    from (``parents``: its pre-training) never for the fine-tune's dataset."""
    if dataset in DOWNSTREAM_TASKS:
        return False
    if run.init_from is not None:
        return dataset != PRETRAIN_DATASET
    return not (run.key in parents and dataset != PRETRAIN_DATASET)


__all__ = ["GENERATED_DATASETS", "Provenance", "ReportRun", "Variant", "column_name", "distinguishing_fields",
           "PRIMARY", "flatten", "group_variants", "is_generated", "load_runs", "metric_value", "spec_selection",
           "stands_in_for"]
