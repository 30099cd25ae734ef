"""Recipe sweeps: ``sweep: {recipe.lr: [5e-4, 1e-3], recipe.weight_decay: [0.05, 0.1]}``.

Each swept field is one more axis of the matrix (Hydra's multirun idea): every combination of
the swept values (a *sweep point*) is crossed with the cells, and each job's recipe carries its
point's values, so its job key differs. A field path is written as for ``--set``
(``recipe.FIELD``) and each value is validated by :class:`mpvgbench.config.Recipe` exactly as
``--set recipe.FIELD=VALUE`` would be. Problems are :class:`mpvgbench.errors.FieldError`\\ s whose
path names the field (``sweep.recipe.lr[1]``), so the spec loader reports them on one line.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from mpvgbench.config import Recipe
from mpvgbench.errors import FieldError, short_repr

#: one point of a sweep: ``(("recipe.lr", 0.001), ("recipe.weight_decay", 0.05))``
SweepPoint = tuple[tuple[str, Any], ...]

__all__ = ["SweepPoint", "check_sweep", "recipe_field", "recipe_value", "sweep_points"]


def recipe_field(path: str) -> str:
    """``recipe.lr`` -> ``lr``; ValueError (a one-line reason) for any other path."""
    head, _, name = path.partition(".")
    if head != "recipe" or not name or "." in name:
        raise ValueError(f"{path!r}: a swept field is recipe.FIELD, e.g. recipe.lr (as in --set recipe.lr=...)")
    if name not in Recipe.model_fields:
        raise ValueError(f"unknown recipe field {name!r}; allowed: {', '.join(Recipe.model_fields)}")
    return name


def recipe_value(name: str, value: Any) -> Any:
    """``value`` as the recipe field ``name`` holds it (``"1e-3"`` -> ``0.001``); ValueError with
    pydantic's reason when the field refuses it."""
    try:
        checked = getattr(Recipe.model_validate({name: value}), name)
    except ValidationError as exc:
        reason = str(exc.errors(include_url=False)[0]["msg"]).removeprefix("Value error, ")
        raise ValueError(f"{reason}; got {short_repr(value)}") from None
    try:
        hash(checked)
    except TypeError:
        raise ValueError(f"recipe.{name} cannot be swept (its values are not comparable)") from None
    return checked


def check_sweep(sweep: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
    """The sweep with every value validated and normalised; FieldError naming the field."""
    checked: dict[str, list[Any]] = {}
    for path, values in sweep.items():
        try:
            name = recipe_field(path)
        except ValueError as exc:
            raise FieldError(path, str(exc)) from None
        if not values:
            raise FieldError(path, "empty sweep; list at least one value, e.g. [5e-4, 1e-3]")
        out: list[Any] = []
        for i, value in enumerate(values):
            try:
                value = recipe_value(name, value)
            except ValueError as exc:
                raise FieldError(f"{path}[{i}]", str(exc)) from None
            if value in out:
                raise FieldError(f"{path}[{i}]", f"duplicate value {short_repr(value)} "
                                 f"(also at [{out.index(value)}])")
            out.append(value)
        checked[path] = out
    return checked


def sweep_points(sweep: Mapping[str, Sequence[Any]]) -> list[SweepPoint]:
    """Every combination of the swept values, the first field varying slowest; ``[()]`` (one
    empty point) without a sweep, so a spec without one expands to exactly its cells."""
    return [tuple(zip(sweep, combo)) for combo in itertools.product(*sweep.values())]
