"""`mpvgbench recipes`: the resolved training recipe of a cell, every field with its source.

Check a run's hyper-parameters against the paper (Table 7) and the original repositories
before spending GPU-days on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click

from mpvgbench.cli.common import cli, user_errors
from mpvgbench.config import Recipe

# The paper's cells (Tables 1-2): what `mpvgbench recipes` without a model summarises.
PAPER_CELLS: tuple[tuple[str, str], ...] = (
    ("deit_tiny", "imagenet"), ("swin_tiny", "imagenet"), ("ceit_tiny", "imagenet"),
    ("t2t_vit_7", "imagenet"), ("vit_lite_7_4", "cifar100"), ("t2t_vit_7", "cifar100"),
)
_HOME_DATASET = {"vit_lite": "cifar100", "micro": "digits"}  # else imagenet


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "(" + ", ".join(format_value(v) for v in value) + ")"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def format_param_groups(recipe: Recipe) -> str:
    """One line per pattern: its lr (scale x the recipe's lr) or "frozen"; then the rest."""
    if recipe.param_groups is None:
        return "null (every parameter at lr)"
    lines = []
    for group in recipe.param_groups:
        what = "frozen" if group.lr_scale == 0 else (
            f"lr {recipe.scaled_lr() * group.lr_scale:g} (x{group.lr_scale:g})")
        lines += [f"{pattern}: {what}" for pattern in group.match]
    return "\n".join([*lines, f"others: lr {recipe.scaled_lr():g}"])


def resolve_recipe(model: str, dataset: str, spec_path: Optional[Path]) -> tuple[Recipe, dict[str, str]]:
    """The cell's recipe as `run` builds it (family default <- spec.recipe <- model_overrides)
    and the source of every field."""
    from mpvgbench.catalog import model_info
    from mpvgbench.recipes import dataset_info, default_recipe, recipe_sources

    family = model_info(model).family
    dataset_info(dataset)  # an unknown dataset: one-line ValueError
    recipe, sources = default_recipe(family, dataset), recipe_sources(family, dataset)
    if spec_path is not None:
        from mpvgbench.spec import load_spec, recipe_overrides

        spec = load_spec(spec_path)
        layers = [(recipe_overrides(spec.recipe), f"spec {spec.name}: recipe")]
        model_override = spec.model_overrides.get(model)
        if model_override is not None:
            layers.append((recipe_overrides(model_override.recipe),
                           f"spec {spec.name}: model_overrides"))
        for overrides, where in layers:
            recipe = recipe.model_copy(update=overrides)
            sources.update({name: where for name in overrides})
    return recipe, sources


def _recipe_table(model: str, dataset: str, recipe: Recipe, sources: dict[str, str]) -> tuple[Any, list[str]]:
    """The table and its legend: repository sources are long, so cells name them ``repo [n]``
    and the legend spells them out (the table then fits 80 columns without cutting values)."""
    from rich import box
    from rich.table import Table

    table = Table(title=f"{model} on {dataset}: effective lr {recipe.scaled_lr():g} "
                        f"at batch {recipe.batch_size}", title_justify="left", box=box.SIMPLE_HEAD,
                  collapse_padding=True, pad_edge=False)
    for column in ("field", "value", "source"):
        table.add_column(column, no_wrap=column != "source", overflow="fold")
    repos: dict[str, int] = {}
    for name in Recipe.model_fields:
        value = getattr(recipe, name)
        text = format_param_groups(recipe) if name == "param_groups" else format_value(value)
        source = sources[name]
        if "/" in source.split(" ")[0]:  # "owner/repo file": an original repository
            source = f"repo [{repos.setdefault(source, len(repos) + 1)}]"
        table.add_row(name, text, source)
    return table, [f"[{n}] {source}" for source, n in repos.items()]


def _summary_table() -> Any:
    from rich import box
    from rich.table import Table

    from mpvgbench.catalog import model_info
    from mpvgbench.recipes import default_recipe

    table = Table(title="paper recipes; `mpvgbench recipes MODEL DATASET` shows every field",
                  title_justify="left", box=box.SIMPLE_HEAD,
                  collapse_padding=True, pad_edge=False)
    for column in ("model", "dataset", "optimizer", "lr", "wd", "batch", "epochs", "warmup"):
        table.add_column(column, no_wrap=True)
    for model, dataset in PAPER_CELLS:
        r = default_recipe(model_info(model).family, dataset)
        epochs = f"{r.epochs}+{r.cooldown_epochs}" if r.cooldown_epochs else str(r.epochs)
        optimizer = r.optimizer + ("+groups" if r.param_groups else "")
        table.add_row(model, dataset, optimizer, f"{r.scaled_lr():g}", f"{r.weight_decay:g}",
                      str(r.batch_size), epochs, str(r.warmup_epochs))
    return table


@cli.command()
@click.argument("model", required=False)
@click.argument("dataset", required=False)
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="Apply this spec's recipe overrides (its `recipe` and model_overrides).")
@user_errors
def recipes(model: Optional[str], dataset: Optional[str], spec_path: Optional[Path]) -> None:
    """Show the resolved training recipe of MODEL on DATASET and where each value comes from.

    \b
    Sources: paper Table 7, an original repository (named), the family default, or a spec.
    DATASET defaults to the model's dataset in the paper (imagenet; cifar100 for ViT-Lite).
    Examples:
      mpvgbench recipes
      mpvgbench recipes t2t_vit_7 cifar100
      mpvgbench recipes deit_tiny imagenet --spec experiments/table1.yaml
    """
    from rich.console import Console

    console = Console()
    if model is None:
        if spec_path is not None:
            raise click.UsageError("--spec needs a MODEL (and DATASET): mpvgbench recipes MODEL DATASET --spec FILE")
        console.print(_summary_table())
        return
    if dataset is None:
        from mpvgbench.catalog import model_info

        dataset = _HOME_DATASET.get(model_info(model).family, "imagenet")
    recipe, sources = resolve_recipe(model, dataset, spec_path)
    table, legend = _recipe_table(model, dataset, recipe, sources)
    console.print(table)
    for line in legend:
        console.print(line, highlight=False, soft_wrap=False)
