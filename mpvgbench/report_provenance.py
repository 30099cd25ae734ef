"""Provenance of every number on the HTML page: per configuration of a cell, its recipe, its full
config, and per seed the run's key, values, git commit and software environment.

A measured cell of a table links to ``#cfg-<variant>`` (:func:`provenance_anchor`), the block
:func:`provenance_html` writes for the runs behind it. Nothing here names a path or a database
host: the page is meant to be sent to a colleague.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

from mpvgbench.paper import DATASET_NAMES, MODEL_NAMES
from mpvgbench.report import ReportTable
from mpvgbench.report_runs import ReportRun, Variant, flatten

#: the recipe values a reader checks first (the full config follows, folded)
RECIPE_FIELDS: tuple[str, ...] = (
    "img_size", "num_classes", "recipe.epochs", "recipe.max_iters", "recipe.batch_size", "recipe.lr",
    "recipe.min_lr", "recipe.warmup_epochs", "recipe.optimizer", "recipe.weight_decay", "recipe.sched",
    "recipe.drop_path", "recipe.label_smoothing", "recipe.mixup", "recipe.cutmix", "recipe.randaugment",
    "recipe.ema", "init_from",
)


def database_name(where: str) -> str:
    """A database by its name only: a SQLite file's name, a server URL's database, never a path,
    host or user."""
    if "://" not in where:
        return Path(where).name
    return where.rsplit("/", 1)[-1].split("?", 1)[0] or "database"


def provenance_anchor(variant: Variant) -> str:
    """The HTML id of a configuration's provenance block."""
    first = variant.runs[0]
    return f"cfg-{first.variant}-{first.dataset}"


def _run_name(run: ReportRun) -> str:
    model = MODEL_NAMES.get(run.model, run.model)
    dataset = DATASET_NAMES.get(run.dataset, run.dataset)
    name = f"{model} / {run.method.label} / {dataset}"
    if run.init_from is not None:  # a fine-tune and its parent are never named alike
        name += f" (fine-tuned from {run.field_text('init_from')[5:]} run {run.init_from[:8]})"
    return name + (" [smoke]" if run.smoke else "")


def _value(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _block(variant: Variant) -> str:
    runs = sorted(variant.runs, key=lambda r: (r.seed, r.key))
    first = runs[0]
    flat = flatten(first.config)
    shown = [name for name in RECIPE_FIELDS if name in flat and (name != "recipe.max_iters" or flat[name] is not None)]
    recipe = "".join(f"<tr><th>{html.escape(name.removeprefix('recipe.'))}</th>"
                     f"<td>{html.escape(_value(flat[name]))}</td></tr>" for name in shown)
    rows = []
    for run in runs:
        p, r = run.provenance, run.row
        cells = [str(run.seed), run.key[:12], _value(r.primary("final")), _value(r.primary("best")), _value(r.epochs),
                 p.commit_text, p.torch or "-", p.timm or "-", p.python or "-", p.device or "-", p.host or "-"]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    head = "".join(f'<th scope="col">{h}</th>' for h in ("seed", "key", "final", "best", "epochs", "commit",
                                                          "torch", "timm", "python", "device", "host"))
    config = json.dumps({k: v for k, v in first.config.items() if k != "seed"}, indent=1, sort_keys=True)
    return (f'<div class="prov" id="{provenance_anchor(variant)}">\n<h3>{html.escape(_run_name(first))}</h3>\n'
            f"<table><caption>recipe</caption><tbody>{recipe}</tbody></table>\n"
            f"<table><caption>runs (one per seed)</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>\n"
            f"<details><summary>full config (every seed's but the seed)</summary><pre>{html.escape(config)}</pre>"
            "</details>\n</div>\n")


def provenance_html(tables: Sequence[ReportTable]) -> str:
    """One block per configuration behind any measured cell of ``tables``, in table order."""
    seen: dict[str, Variant] = {}
    for table in tables:
        for linked in table.variants:
            for variant in linked.values():
                seen.setdefault(provenance_anchor(variant), variant)
    if not seen:
        return "<p>No measured cell yet.</p>\n"
    return "".join(_block(v) for v in seen.values())


__all__ = ["RECIPE_FIELDS", "database_name", "provenance_anchor", "provenance_html"]
