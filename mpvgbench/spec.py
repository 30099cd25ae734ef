"""Experiment specs: a YAML file that declares a matrix of model x method x dataset x seed.

``load_spec(path)`` reads the file with a safe YAML loader (no tags, no duplicate keys),
validates it into a frozen :class:`Spec` (pydantic, ``extra="forbid"`` at every level) and
checks every cell it expands to (``mpvgbench.matrix.check_cells``). Every failure is a
one-line :class:`SpecError`: ``<file>: <field path>: <problem>; <allowed values>``.
Nothing in a spec is ever evaluated, imported or executed.

Format (only ``name``, ``models``, ``methods``, ``datasets`` are required)::

    name: table2                       # [A-Za-z0-9_.-], used in reports
    plugins: [my_pe.py]                # PE-method plugins (mpvgbench.pe_plugins), relative to the spec
    models: [vit_lite_7_4, t2t_vit_7]  # mpvgbench.models short names
    methods: [default, pvg, {base: mpvg, last_ln_pe: 5}, "mpvg[hierarchical=false]"]
    datasets: [cifar100]               # digits, cifar100, imagenet, imagefolder, synthetic, coco, ade20k (deit_tiny)
    seeds: [0, 1, 2]                   # default [0]
    zip: [[models, datasets]]          # pair axes element-wise (equal lengths)
    include: [{model: deit_tiny, method: mpvg, dataset: imagenet, seed: 0}]  # missing key: whole axis
    exclude: [{model: t2t_vit_7, method: default}]  # any subset; method by name, label or knobs
    recipe: {epochs: 100}              # over every family default (mpvgbench.recipes)
    sweep: {recipe.lr: [5e-4, 1e-3]}   # recipe.FIELD: values; each combination is one more axis
    model_overrides:
      t2t_vit_7:
        recipe: {optimizer: sgd}       # over `recipe`
        img_size: 224
        init_from: {dataset: imagenet} # fine-tune from the same model/method/seed on imagenet
                                       # (or a 16-hex run key); also allowed at the top level
    dataset_overrides: {imagefolder: {num_classes: 37, img_size: 224}}
    # model_overrides.M.slurm / dataset_overrides.D.slurm: resources of those cells on Slurm
    # (keys set there replace the spec's `slurm:`; model over dataset over spec)
    data: {roots: {cifar100: /d/c100, imagenet: /d/in1k, imagefolder: /d/x}, num_workers: 8, download: false,
           loader: timm}                # or dali: GPU decode + augmentation (docs/data.md)
    executor: {name: local, workers: 2, device: auto}   # or slurm (+ a `slurm:` section)
    results: {db: results.db, runs_dir: runs}
    tracking: {tensorboard: true, mlflow: {uri: http://host:5000}, wandb: {project: p, mode: offline}}

``data`` (except ``data.loader: dali``, whose augmentation makes another run), ``executor``,
``slurm`` (also inside the overrides), ``results``, ``tracking``, ``name`` and ``description``
never change a job key. ``init_from: {dataset: D}`` applies to a model's cells on other datasets only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field,
                      PositiveInt, PrivateAttr, Strict, Tag, ValidationError, field_validator,
                      model_validator)

from mpvgbench.catalog import model_info
from mpvgbench.config import Recipe
from mpvgbench.errors import FieldError, SpecError, first_validation_error, short_repr
from mpvgbench.methods import PEMethod, resolve_method
from mpvgbench.recipes import dataset_info
from mpvgbench.slurm_settings import SlurmSettings
from mpvgbench.spec_sweep import SweepPoint, check_sweep, recipe_field, sweep_points
from mpvgbench.spec_yaml import (MAX_SPEC_BYTES, MAX_YAML_DEPTH, MAX_YAML_VALUES, unshared_copy,  # noqa: F401
                                 display_path, read_spec_bytes, read_yaml)
from mpvgbench.tracking import TrackingSettings

AXES: tuple[str, ...] = ("models", "methods", "datasets", "seeds")
CELL_KEYS: tuple[str, ...] = ("model", "method", "dataset", "seed")
RUN_KEY_RE = re.compile(r"^[0-9a-f]{16}$")


__all__ = ["Spec", "SpecError", "load_spec", "parse_spec"]


# --------------------------------------------------------------------- value checkers


def _check_model(name: str) -> str:
    model_info(name)  # ValueError: unknown model 'x'; allowed: ...
    return name


def _check_dataset(name: str) -> str:
    dataset_info(name)
    return name


ModelName = Annotated[str, Strict(), AfterValidator(_check_model)]
DatasetName = Annotated[str, Strict(), AfterValidator(_check_dataset)]
MethodValue = Annotated[PEMethod, BeforeValidator(resolve_method)]
Seed = Annotated[int, Strict(), Field(ge=0, le=2**32 - 1)]
RecipeOverride = Recipe
AxisName = Literal["models", "methods", "datasets", "seeds"]


def recipe_overrides(recipe: Optional[Recipe]) -> dict[str, Any]:
    """Only the fields a spec set explicitly (validated values)."""
    if recipe is None:
        return {}
    return {name: getattr(recipe, name) for name in sorted(recipe.model_fields_set)}


# ------------------------------------------------------------------------- sections


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataRoots(_Section):
    cifar100: Optional[str] = None  # the folder that holds cifar-100-python/
    imagenet: Optional[str] = None  # the folder that holds train/ and val/
    imagefolder: Optional[str] = None  # the folder that holds train/<class>/ and val/<class>/
    coco: Optional[str] = None  # the folder that holds train2017/, val2017/ and annotations/
    ade20k: Optional[str] = None  # the folder that holds ADEChallengeData2016/ (or is it)


class DataSection(_Section):
    roots: DataRoots = DataRoots()
    num_workers: Optional[Annotated[int, Field(ge=0, le=256)]] = None  # null: per dataset
    download: bool = False  # fetch CIFAR-100 into data.roots.cifar100 when it is missing
    # the classification input pipeline: timm (the paper's) or dali (GPU decode + augmentation,
    # pip install 'mpvgbench[dali]'; docs/data.md lists how its augmentation differs)
    loader: Literal["timm", "dali"] = "timm"


class ExecutorSection(_Section):
    name: Literal["local", "slurm"] = "local"
    workers: PositiveInt = 1  # jobs at once (local) / array parallelism (slurm)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    nproc_per_node: PositiveInt = 1  # local: processes (GPUs) per job; > 1 runs DDP under torchrun


class ResultsSection(_Section):
    db: Optional[str] = None  # SQLAlchemy URL or a path to a SQLite file
    runs_dir: Optional[str] = None


class InitFrom(_Section):
    """Start from the weights of the same model/method/seed trained on ``dataset``."""

    dataset: DatasetName
    recipe: Optional[RecipeOverride] = None  # overrides of that run's family default recipe


def _init_from_kind(value: Any) -> str:
    return "run_key" if isinstance(value, str) else "run_cell"


# Either the 16-hex key of a finished run or {dataset: ..., recipe: {...}} (a cell of this spec).
InitFromValue = Annotated[
    Union[
        Annotated[str, Field(pattern=RUN_KEY_RE.pattern), Tag("run_key")],
        Annotated[InitFrom, Tag("run_cell")],
    ],
    Discriminator(_init_from_kind),
]


class ModelOverride(_Section):
    recipe: Optional[RecipeOverride] = None
    img_size: Optional[PositiveInt] = None
    init_from: Optional[InitFromValue] = None
    slurm: Optional[SlurmSettings] = None  # keys set here replace the spec's `slurm:` for this model


class DatasetOverride(_Section):
    num_classes: Optional[PositiveInt] = None
    img_size: Optional[PositiveInt] = None
    slurm: Optional[SlurmSettings] = None  # over the spec's `slurm:`; a model's own keys win


class CellPattern(_Section):
    """An ``include`` cell (missing keys: every value of that axis) or an ``exclude`` pattern."""

    model: Optional[ModelName] = None
    method: Optional[MethodValue] = None
    dataset: Optional[DatasetName] = None
    seed: Optional[Seed] = None

    @model_validator(mode="after")
    def _not_empty(self) -> CellPattern:
        if all(getattr(self, k) is None for k in CELL_KEYS):
            raise ValueError(f"empty pattern; give at least one of: {', '.join(CELL_KEYS)}")
        return self


# ----------------------------------------------------------------------------- spec


class Spec(_Section):
    name: Annotated[str, Strict(), Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")]
    description: str = ""
    models: list[ModelName]
    methods: list[MethodValue]
    datasets: list[DatasetName]
    seeds: list[Seed] = [0]
    zip: list[list[AxisName]] = []
    include: list[CellPattern] = []
    exclude: list[CellPattern] = []
    recipe: Optional[RecipeOverride] = None
    # recipe.FIELD -> values: each combination is crossed with the cells (mpvgbench.spec_sweep)
    sweep: dict[str, list[Any]] = {}
    model_overrides: dict[ModelName, ModelOverride] = {}
    dataset_overrides: dict[DatasetName, DatasetOverride] = {}
    init_from: Optional[InitFromValue] = None  # for every model without its own init_from
    data: DataSection = DataSection()
    executor: ExecutorSection = ExecutorSection()
    slurm: Optional[SlurmSettings] = None
    results: ResultsSection = ResultsSection()
    tracking: TrackingSettings = TrackingSettings()  # TensorBoard / MLflow / W&B (mpvgbench.tracking)
    plugins: list[str] = []  # PE-method plugin files; parse_spec loads them before `methods` is read

    _source: str = PrivateAttr(default="<spec>")

    @field_validator("models", "methods", "datasets", "seeds")
    @classmethod
    def _axis_values(cls, values: list[Any], info: Any) -> list[Any]:
        if not values:
            raise ValueError("empty axis; list at least one value")
        seen: dict[Any, int] = {}
        for i, value in enumerate(values):
            ident = value.label if info.field_name == "methods" else value
            if ident in seen:
                raise ValueError(
                    f"duplicate value at [{seen[ident]}] and [{i}]: {short_repr(value)}"
                    + (f" (both are {ident!r})" if info.field_name == "methods" else "")
                )
            seen[ident] = i
        return values

    @field_validator("sweep")
    @classmethod
    def _sweep_values(cls, sweep: dict[str, list[Any]]) -> dict[str, list[Any]]:
        return check_sweep(sweep)

    @model_validator(mode="after")
    def _cross_checks(self) -> Spec:
        for model, override in self.model_overrides.items():
            fixed = override.recipe.model_fields_set if override.recipe is not None else set()
            for path in self.sweep:
                if recipe_field(path) in fixed:  # the override would replace every swept value
                    raise FieldError(f"model_overrides.{model}.recipe.{recipe_field(path)}",
                                     f"also swept by sweep.{path}; remove one of the two")
        zipped: dict[str, int] = {}
        for g, group in enumerate(self.zip):
            if len(group) < 2:
                raise FieldError(f"zip[{g}]", f"a zip group pairs at least 2 axes, got {group}")
            for axis in group:
                if axis in zipped:
                    raise FieldError(
                        f"zip[{g}]", f"axis {axis!r} is already in zip[{zipped[axis]}]"
                    )
                zipped[axis] = g
            lengths = {axis: len(getattr(self, axis)) for axis in group}
            if len(set(lengths.values())) > 1:
                shown = ", ".join(f"{a} has {n}" for a, n in lengths.items())
                raise FieldError(f"zip[{g}]", f"zipped axes need equal lengths; {shown}")
        used = set(self.datasets) | {c.dataset for c in self.include if c.dataset}
        for name, override in self.dataset_overrides.items():
            known = dataset_info(name).num_classes
            if override.num_classes is not None and known is not None and override.num_classes < known:
                raise FieldError(
                    f"dataset_overrides.{name}.num_classes",
                    f"{name} has {known} classes; {override.num_classes} would put labels out of "
                    f"range mid-training; remove the override or set it to at least {known}")
        for name in sorted(used):
            if dataset_info(name).num_classes is None and self.num_classes_for(name) is None:
                raise FieldError(
                    "datasets",
                    f"dataset {name!r} has no default number of classes; set "
                    f"dataset_overrides.{name}.num_classes",
                )
        return self

    # ------------------------------------------------------------------ helpers

    @property
    def source(self) -> str:
        """The file the spec came from (for error messages)."""
        return self._source

    def num_classes_for(self, dataset: str) -> Optional[int]:
        override = self.dataset_overrides.get(dataset)
        if override is not None and override.num_classes is not None:
            return override.num_classes
        return dataset_info(dataset).num_classes

    def data_root(self, dataset: str) -> Optional[str]:
        """The configured root of a dataset (``~`` expanded), or None."""
        root = getattr(self.data.roots, dataset, None)
        return str(Path(root).expanduser()) if root else None

    def sweep_points(self) -> list[SweepPoint]:
        """Every combination of the swept values; ``[()]`` without a sweep."""
        return sweep_points(self.sweep)

    def error(self, field: str, message: str) -> SpecError:
        return SpecError(f"{self._source}: {field}: {message}")


# ---------------------------------------------------------------------------- loading


def apply_overrides(data: Any, overrides: Sequence[str], source: str) -> Any:
    """``--set recipe.epochs=1 --set seeds=[0]``: dotted paths into the spec, values as YAML;
    ``--set sweep.recipe.lr=[5e-4,1e-3]`` sets the sweep's ``recipe.lr`` key."""
    if not overrides:
        return data
    if not isinstance(data, Mapping):
        return data  # parse_spec names the problem
    data = unshared_copy(data)
    for item in overrides:
        path, sep, text = item.partition("=")
        parts = path.strip().split(".")
        if parts[0] == "sweep" and len(parts) > 2:  # a sweep's keys are dotted paths themselves
            parts = [parts[0], ".".join(parts[1:])]
        if not sep or not all(parts):
            raise SpecError(f"--set {item!r}: expected FIELD.PATH=VALUE, e.g. recipe.epochs=1")
        value = read_yaml(text, f"--set {path}")
        target = data
        for depth, part in enumerate(parts[:-1]):
            child = target.get(part)
            if child is None:
                child = target[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise SpecError(f"--set {item!r}: {where} is not a mapping in {source}")
            target = child
        target[parts[-1]] = value
    return data


def parse_spec(data: Any, source: str = "<spec>") -> Spec:
    """Validate already-parsed YAML/JSON data into a Spec (``SpecError`` on any problem)."""
    if not isinstance(data, Mapping):
        got = "nothing (empty file)" if data is None else type(data).__name__
        raise SpecError(f"{source}: the top level must be a mapping of spec fields, got {got}")
    _load_plugins(data.get("plugins"), source)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{source}: {first_validation_error(exc, model=Spec)}") from None
    spec._source = source
    return spec


def _load_plugins(plugins: Any, source: str) -> None:
    """Import the spec's plugin files (relative to the spec file) so their methods have names."""
    if plugins is None:
        return
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise SpecError(f"{source}: plugins: must be a list of Python file paths, got {short_repr(plugins)}")
    from mpvgbench.pe_plugins import load_plugin_file

    base = Path(source).parent if Path(source).is_file() else Path.cwd()
    for plugin in plugins:
        load_plugin_file(base / Path(plugin).expanduser())


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> Spec:
    """Read, parse and validate a spec file; every problem is a one-line ``SpecError``.

    ``overrides``: ``FIELD.PATH=VALUE`` strings applied before validation (``run --set``); they
    become part of the spec and so of the job keys they change."""
    source = display_path(path)
    raw = read_spec_bytes(path, source)
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"{source}: spec is over {MAX_SPEC_BYTES} bytes, the limit")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{source}: not UTF-8 text (byte {exc.start})") from None
    data = apply_overrides(read_yaml(text, source), overrides, source)
    return parse_spec(data, source)
