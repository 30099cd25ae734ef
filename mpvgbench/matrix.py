"""Expand a Spec into jobs: one resolved TrainConfig (and its key) per cell.

Cells are ``product(axes)`` with each ``zip`` group as one paired axis, plus ``include``
(missing keys: every value of that axis), minus ``exclude`` (applied to included cells too);
each is then crossed with every point of the spec's ``sweep`` (``spec.sweep_points()``: one
empty point without a sweep), included cells too. A cell's recipe is
``recipes.default_recipe(family, dataset)`` <- ``spec.recipe`` <- its sweep point <-
``spec.model_overrides[model].recipe`` (which may not set a swept field); a run it starts from
(init_from) takes no sweep value. A cell with ``init_from: {dataset: D}`` starts from
the same model/method/seed trained on ``D`` with D's default recipe; that parent run becomes
a job of its own (``parent_only=True`` unless it is a cell too), listed before its children.
Order is deterministic and every key appears once. ``smoke=True`` runs every cell at the
model's small smoke size with 10 classes and
``recipes.smoke_recipe`` (2 epochs x 2 steps): other keys, same code paths. Each cell runs on
``recipes.smoke_dataset``'s generated stand-in in its dataset's real format (ImageNet's JPEG
folder, CIFAR-100's pickles: the real readers and the recipe's real transforms; dense cells
keep their task on COCO/ADE20K stand-ins, at those stand-ins' sizes).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple, Optional

from mpvgbench.catalog import model_info, stood_in_for
from mpvgbench.config import Recipe, TrainConfig, config_key
from mpvgbench.errors import MpvgbenchError, SpecError
from mpvgbench.methods import DEFAULT_ENCODING, PEMethod
from mpvgbench.recipes import (
    DOWNSTREAM_MODELS, DOWNSTREAM_TASKS, SMOKE_NUM_CLASSES, dataset_info, default_img_size,
    default_recipe, smoke_dataset, smoke_recipe,
)
from mpvgbench.spec import AXES, CELL_KEYS, InitFrom, Spec, recipe_overrides
from mpvgbench.spec_sweep import SweepPoint, recipe_field, recipe_value


MAX_JOBS = 100_000  # cells one spec may expand to


@dataclass(frozen=True)
class Job:
    key: str
    spec_name: str
    config: TrainConfig
    depends_on: Optional[str] = None  # key of the run whose weights this one starts from
    parent_only: bool = False  # True: in the matrix only because another job starts from it

    # The cell, read from the config (one source of truth): job.model, job.method, ...
    model = property(lambda self: self.config.model, doc="short model name")
    method = property(lambda self: self.config.method, doc="the PEMethod")
    method_label = property(lambda self: self.config.method.label, doc="the method's label")
    dataset = property(lambda self: self.config.dataset, doc="dataset name")
    seed = property(lambda self: self.config.seed, doc="seed")

    @property
    def cell(self) -> tuple[str, str, str, int]:
        return (self.model, self.method_label, self.dataset, self.seed)


class Cell(NamedTuple):
    model: str
    method: PEMethod
    dataset: str
    seed: int
    sweep: SweepPoint = ()  # the swept recipe values of this cell


# ---------------------------------------------------------------------------- cells


def cells(spec: Spec) -> list[Cell]:
    """The spec's cells in deterministic order, duplicates removed (no configs built)."""
    axis_values: dict[str, list[Any]] = {
        "models": list(spec.models),
        "methods": list(spec.methods),
        "datasets": list(spec.datasets),
        "seeds": list(spec.seeds),
    }
    group_of = {axis: tuple(group) for group in spec.zip for axis in group}
    units: list[tuple[tuple[str, ...], list[tuple[Any, ...]]]] = []
    emitted: set[str] = set()
    for axis in AXES:  # a zip group is one unit, at the place of its first axis
        if axis in emitted:
            continue
        group = group_of.get(axis, (axis,))
        emitted.update(group)
        units.append((group, list(zip(*(axis_values[a] for a in group)))))
    points = spec.sweep_points()
    size = len(points)
    for _, values in units:
        size *= len(values)
    if size > MAX_JOBS:  # bounded before anything is built: a typo in seeds is not 39 s and 2 GB
        raise spec.error("sweep" if len(points) > 1000 else "seeds" if len(spec.seeds) > 1000 else "models",
                         f"the axes multiply to {size:,} cells; the limit is {MAX_JOBS:,} per spec: "
                         "split the spec or use zip/include")
    position = {axis: i for i, axis in enumerate(AXES)}
    out: dict[Cell, None] = {}
    for combo in itertools.product(*(values for _, values in units)):
        row: list[Any] = [None] * 4
        for (names, _), values in zip(units, combo):
            for name, value in zip(names, values):
                row[position[name]] = value
        out[Cell(*row)] = None
    for pattern in spec.include:
        choices = [
            [pattern.model] if pattern.model is not None else axis_values["models"],
            [pattern.method] if pattern.method is not None else axis_values["methods"],
            [pattern.dataset] if pattern.dataset is not None else axis_values["datasets"],
            [pattern.seed] if pattern.seed is not None else axis_values["seeds"],
        ]
        for row in itertools.product(*choices):
            out[Cell(*row)] = None
    result = [cell._replace(sweep=point) for cell in out for point in points]
    for pattern in spec.exclude:
        want = {
            "model": pattern.model,
            "method": pattern.method,
            "dataset": pattern.dataset,
            "seed": pattern.seed,
        }
        checks = [(i, v) for i, v in enumerate(want.values()) if v is not None]
        result = [c for c in result if not all(c[i] == v for i, v in checks)]
    return result


def check_cells(spec: Spec) -> list[Cell]:
    """Raise ``SpecError`` for a cell no model can train; return the cells."""
    found = cells(spec)
    if not found:
        raise spec.error("exclude", "the spec expands to no jobs (every cell is excluded)")
    for model, method in dict.fromkeys((c.model, c.method) for c in found):
        try:
            method.validate_for_depth(model_info(model).depth)
            method.validate_for_family(model_info(model).family, model)  # e.g. rope on swin: refused
        except MpvgbenchError as exc:
            raise spec.error(_method_field(spec, method), f"{method.label} on {model}: {exc}") from None
    for method, dataset in dict.fromkeys((c.method, c.dataset) for c in found):
        if dataset in DOWNSTREAM_TASKS and method.encoding != DEFAULT_ENCODING:
            # ViT-Adapter runs the backbone's blocks itself, with the paper's PE chain only
            raise spec.error(_method_field(spec, method), f"{method.label} on {dataset}: dense prediction "
                             "takes the paper's learned-PE methods only; exclude the pair")
    for model, dataset in dict.fromkeys((c.model, c.dataset) for c in found):
        if dataset in DOWNSTREAM_TASKS and model not in DOWNSTREAM_MODELS:
            raise spec.error("models", f"{model} on {dataset}: dense prediction (ViT-Adapter-Ti) "
                             f"wraps {', '.join(sorted(DOWNSTREAM_MODELS))} only; exclude the pair")
        _img_size(spec, model, dataset)
        init = _init_from(spec, model)
        if isinstance(init, InitFrom) and init.dataset != dataset:
            _img_size(spec, model, init.dataset, for_parent=True)
    return found


def _method_field(spec: Spec, method: PEMethod) -> str:
    for i, value in enumerate(spec.methods):
        if value == method:
            return f"methods[{i}]"
    for i, pattern in enumerate(spec.include):
        if pattern.method == method:
            return f"include[{i}].method"
    return "methods"


def _img_size(spec: Spec, model: str, dataset: str, *, for_parent: bool = False) -> int:
    override = spec.model_overrides.get(model)
    data_override = spec.dataset_overrides.get(dataset)
    if override is not None and override.img_size is not None and not for_parent:
        size = override.img_size
    elif data_override is not None and data_override.img_size is not None:
        size = data_override.img_size
    else:
        size = default_img_size(model, dataset)
    stride = model_info(model).token_stride
    if stride is not None and size % stride != 0:
        raise spec.error(
            f"model_overrides.{model}.img_size",
            f"{model} on {dataset} at img_size {size}: the size must be a multiple of "
            f"{stride} for this model; set model_overrides.{model}.img_size or exclude the pair",
        )
    return size


def _init_from(spec: Spec, model: str) -> Any:
    override = spec.model_overrides.get(model)
    if override is not None and override.init_from is not None:
        return override.init_from
    return spec.init_from


# ---------------------------------------------------------------------------- expand


def expand(spec: Spec, *, smoke: bool = False) -> list[Job]:
    """Every job of the spec, parents before children, each key once."""
    builder = _Builder(spec, smoke)
    jobs: dict[str, Job] = {}
    for cell in check_cells(spec):
        job = builder.job(cell)
        if job.depends_on is not None and job.depends_on in builder.parents:
            parent = builder.parents[job.depends_on]
            jobs.setdefault(parent.key, parent)
        if job.key in jobs and jobs[job.key].parent_only:
            jobs[job.key] = job  # a parent that is also a cell of its own
        jobs.setdefault(job.key, job)
    return list(jobs.values())


class _Builder:
    """Caches everything a cell shares with other cells: one validated config per group of seeds."""

    def __init__(self, spec: Spec, smoke: bool) -> None:
        self.spec = spec
        self.smoke = smoke
        self.parents: dict[str, Job] = {}
        self._groups: dict[tuple[Any, ...], TrainConfig] = {}
        self._settings: dict[tuple[str, str, bool, SweepPoint], tuple[Recipe, int, int, Any]] = {}

    def job(self, cell: Cell) -> Job:
        recipe, img_size, num_classes, init = self._cell_settings(cell.model, cell.dataset, sweep=cell.sweep)
        depends_on: Optional[str] = None
        if isinstance(init, str):
            depends_on = None if self.smoke else init  # a real run's weights fit no smoke model
        elif isinstance(init, InitFrom) and init.dataset != cell.dataset:
            parent = self._parent(cell, init)
            depends_on = parent.key
        return self._make(cell, recipe, img_size, num_classes, depends_on, parent_only=False)

    def _parent(self, cell: Cell, init: InitFrom) -> Job:
        recipe, img_size, num_classes, _ = self._cell_settings(
            cell.model, init.dataset, parent_overrides=recipe_overrides(init.recipe)
        )
        parent_cell = cell._replace(dataset=init.dataset)
        job = self._make(parent_cell, recipe, img_size, num_classes, None, parent_only=True)
        self.parents.setdefault(job.key, job)
        return job

    def _cell_settings(
        self, model: str, dataset: str, parent_overrides: Optional[dict[str, Any]] = None,
        sweep: SweepPoint = (),
    ) -> tuple[Recipe, int, int, Any]:
        is_parent = parent_overrides is not None
        cache_key = (model, dataset, is_parent, sweep)
        if cache_key not in self._settings:
            spec = self.spec
            info = model_info(model)
            recipe = default_recipe(info.family, dataset)
            if is_parent:
                overrides = dict(parent_overrides or {})
            else:
                overrides = recipe_overrides(spec.recipe)
                overrides.update((recipe_field(path), value) for path, value in sweep)
                model_override = spec.model_overrides.get(model)
                if model_override is not None:
                    overrides.update(recipe_overrides(model_override.recipe))
            if overrides:
                recipe = recipe.model_copy(update=overrides)
            img_size = _img_size(spec, model, dataset, for_parent=is_parent)
            num_classes = spec.num_classes_for(dataset)
            assert num_classes is not None  # Spec._cross_checks
            if self.smoke:
                recipe = smoke_recipe(recipe, info.family, dataset)
                img_size, num_classes = info.smoke_img_size, SMOKE_NUM_CLASSES
                if dataset in DOWNSTREAM_TASKS:  # the dense stand-in's own crop and classes
                    stand_in = dataset_info(smoke_dataset(dataset))
                    img_size, num_classes = stand_in.img_size, stand_in.num_classes or num_classes
            init = None if is_parent else _init_from(spec, model)
            self._settings[cache_key] = (recipe, img_size, num_classes, init)
        return self._settings[cache_key]

    def _make(
        self,
        cell: Cell,
        recipe: Recipe,
        img_size: int,
        num_classes: int,
        init_from: Optional[str],
        *,
        parent_only: bool,
    ) -> Job:
        dataset = smoke_dataset(cell.dataset) if self.smoke else cell.dataset
        group = (cell.model, cell.method, dataset, id(recipe), img_size, num_classes, init_from)
        if group not in self._groups:
            # data.loader picks the classification pipeline; the dense trainer has its own
            loader = "timm" if dataset in DOWNSTREAM_TASKS else self.spec.data.loader
            self._groups[group] = TrainConfig(
                model=cell.model, method=cell.method, dataset=dataset, img_size=img_size,
                num_classes=num_classes, seed=cell.seed, recipe=recipe, init_from=init_from,
                loader=loader,
            )
        # Only the seed varies within a group, and it is a validated spec value: no re-validation.
        config = self._groups[group].model_copy(update={"seed": cell.seed})
        return Job(
            key=config_key(config), spec_name=self.spec.name, config=config,
            depends_on=init_from, parent_only=parent_only,
        )


def select(jobs: list[Job], patterns: Iterable[str]) -> list[Job]:
    """``run --only``: the jobs whose cell matches any pattern ``axis=v1|v2,axis=v``, plus the
    runs they start from (init_from). Axes: model, method, dataset, seed, and any ``recipe.FIELD``
    (a sweep axis: ``recipe.lr=1e-3``, the value read as ``sweep:`` reads it)."""
    parsed = [_parse_pattern(p) for p in patterns]
    if not parsed:
        return jobs
    kept = {job.key for job in jobs if not job.parent_only and any(_matches(job, p) for p in parsed)}
    if not kept:
        raise SpecError(f"--only {' '.join(patterns)}: no cell of the spec matches; "
                        "`mpvgbench run SPEC --dry-run` lists the cells")
    by_key = {job.key: job for job in jobs}
    for key in list(kept):
        parent = by_key[key].depends_on
        while parent is not None and parent in by_key and parent not in kept:
            kept.add(parent)
            parent = by_key[parent].depends_on
    return [job for job in jobs if job.key in kept]


def _parse_pattern(text: str) -> dict[str, set[Any]]:
    from mpvgbench.methods import resolve_method
    from mpvgbench.recipes import dataset_info

    pattern: dict[str, set[Any]] = {}
    if not text.strip(","" "):  # an empty pattern would match every cell: the whole matrix
        raise SpecError(f"--only {text!r}: empty; give AXIS=VALUE[|VALUE], e.g. model=deit_tiny,method=mpvg")
    for item in filter(None, (part.strip() for part in text.split(","))):
        axis, sep, values = item.partition("=")
        axis = axis.strip()
        if not sep or not (axis in CELL_KEYS or axis.startswith("recipe.")) or not values:
            raise SpecError(f"--only {text!r}: expected AXIS=VALUE[|VALUE] with AXIS one of "
                            f"{', '.join(CELL_KEYS)} or a swept recipe.FIELD, e.g. model=deit_tiny,method=mpvg")
        try:
            if axis.startswith("recipe."):
                name = recipe_field(axis)
                pattern[axis] = {recipe_value(name, v) for v in values.split("|")}
            elif axis == "model":
                pattern[axis] = {model_info(v).name for v in values.split("|")}
            elif axis == "method":
                pattern[axis] = {resolve_method(v) for v in values.split("|")}
            elif axis == "dataset":
                pattern[axis] = {v for v in values.split("|") if dataset_info(v)}
            else:
                pattern[axis] = {int(v) for v in values.split("|")}
        except ValueError as exc:
            raise SpecError(f"--only {text!r}: {exc}") from None
    return pattern


def _matches(job: Job, pattern: dict[str, set[Any]]) -> bool:
    cell = {"model": job.model, "method": job.method, "seed": job.seed}
    for axis, values in pattern.items():
        if axis.startswith("recipe."):
            if getattr(job.config.recipe, recipe_field(axis)) not in values:
                return False
        elif axis == "dataset":
            # a --smoke job trains on a stand-in: it matches the dataset it stands in for too
            if not values & {job.dataset, *stood_in_for(job.dataset)}:
                return False
        elif cell[axis] not in values:
            return False
    return True


def sweep_text(job: Job, path: str) -> str:
    """A swept field's value in ``job`` as listings show it (``recipe.lr`` -> ``0.001``)."""
    value = getattr(job.config.recipe, recipe_field(path))
    return f"{value:g}" if isinstance(value, float) else str(value)


def summarize(jobs: Iterable[Job]) -> dict[str, int]:
    """Counts per axis, for ``run --dry-run``."""
    jobs = list(jobs)
    return {
        "jobs": len(jobs),
        "models": len({j.model for j in jobs}),
        "methods": len({j.method_label for j in jobs}),
        "datasets": len({j.dataset for j in jobs}),
        "seeds": len({j.seed for j in jobs}),
    }


__all__ = ["Cell", "Job", "select", "CELL_KEYS", "cells", "check_cells", "expand", "summarize", "sweep_text"]
