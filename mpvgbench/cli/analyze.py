"""`mpvgbench analyze`: what the PE does inside trained runs (paper Figs. 2, 4, 6, 7, 8).

Numbers go to the results database (``Store.add_analysis``) and to ``OUT/analysis.json``; figures
to ``OUT/correlation.png`` (all runs) and ``OUT/<key>/{heatmaps,last_ln,token_norms}.png``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import click

from mpvgbench.cli.common import UserError, cli, db_option, open_store, user_errors

if TYPE_CHECKING:
    from mpvgbench.store import Store
    from mpvgbench.store_schema import RunRow

DEFAULT_OUT = "analysis"


def _keys_with_prefix(store: Store, prefix: str) -> list[str]:
    finder = getattr(store, "keys_with_prefix", None)
    if finder is not None:
        return list(finder(prefix))
    return [row.key for row in store.runs() if row.key.startswith(prefix)]


def resolve_runs(store: Store, target: str) -> list[RunRow]:
    """TARGET is a spec file (its finished runs) or a key / unique key prefix (must be finished)."""
    path = Path(target)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        from mpvgbench.cli.status import reconcile_runs
        from mpvgbench.spec import load_spec

        spec = load_spec(path)
        reconcile_runs(store, spec)  # runs that ended since the last `run`/`status` count too
        rows = store.runs(spec_name=spec.name)
        finished = [row for row in rows if row.status == "finished"]
        if not finished:
            raise UserError(f"spec {spec.name!r} has no finished runs ({len(rows)} stored); "
                            f"run `mpvgbench run {target}` first")
        if len(finished) < len(rows):
            click.echo(f"{spec.name}: analysing {len(finished)} finished of {len(rows)} runs", err=True)
        return finished
    matches = _keys_with_prefix(store, target)
    if not matches:
        raise UserError(f"no run with key {target!r} and no spec file of that name; "
                        "`mpvgbench status --all` lists the keys")
    if len(matches) > 1:
        raise UserError(f"key prefix {target!r} is ambiguous ({len(matches)} runs); give more digits")
    (row,) = store.runs(keys=matches)
    if row.status != "finished":
        raise UserError(f"run {row.key} is {row.status}, not finished; only finished runs can be analyzed")
    return [row]


def _classifiers_only(rows: dict[str, RunRow]) -> dict[str, RunRow]:
    """The runs analyze can measure; each dense-prediction run is named with what to analyse
    instead (a spec like table4.yaml holds both: its classifiers are analysed)."""
    from mpvgbench.analyze_run import not_analysable_reason

    reasons = {key: not_analysable_reason(key, row.dataset, row.config.get("init_from"))
               for key, row in rows.items()}
    kept = {key: row for key, row in rows.items() if reasons[key] is None}
    if not kept:
        raise UserError(next(reason for reason in reasons.values() if reason))
    for reason in filter(None, reasons.values()):
        click.echo(f"skipping {reason}", err=True)
    return kept


def _store_values(analysis: dict[str, Any]) -> dict[str, Any]:
    """Flat, named values for ``Store.add_analysis`` (identification lives in the runs table)."""
    values: dict[str, Any] = {
        "pe_images": analysis["images"],
        "pe_weights": analysis["weights"],
        "pe_correlation": analysis["correlation"],
        "pe_correlation_note": analysis["correlation_note"],
        "pe_figures": analysis["figures"],
    }
    values.update({f"last_ln_{name}": value for name, value in analysis["last_ln"].items()})
    return values


def _f(value: Optional[float], digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _g(value: Optional[float]) -> str:
    # variances span orders of magnitude (1e-6 after a few steps, 0.24 in the paper)
    return "n/a" if value is None else f"{value:.2e}"


def paper_reference_line() -> str:
    from mpvgbench.analyze import PAPER_REFERENCE as ref

    return (f"paper (DeiT-Ti, ImageNet-1k): beta var PVG {ref['pvg']['beta_var']} / MPVG "
            f"{ref['mpvg']['beta_var']}; cosine PVG-GAP {ref['pvg']['cosine']} / PVG-cls "
            f"{ref['pvg_cls']['cosine']}")


def print_table(analyses: Sequence[dict[str, Any]]) -> None:
    """One row per run, then the paper's DeiT-Ti / ImageNet reference numbers."""
    from rich.console import Console
    from rich.table import Table

    from mpvgbench.analyze import correlation_summary

    from rich import box

    # A light box and no wrapping: ten numeric columns must fit an 80-column terminal.
    table = Table(title="PE analysis (r: token vs PE after LN, Fig. 4; Last LN, Fig. 6)",
                  caption=paper_reference_line(), box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("key", "model", "method", "top1", "r 1st", "r last", "var β", "var γ", "cos"):
        table.add_column(column, justify="left" if column in ("key", "model", "method") else "right",
                         no_wrap=True)
    for a in analyses:
        first, last, _mean = correlation_summary(a["correlation"])  # the mean is in analysis.json
        stats = a["last_ln"]
        table.add_row(a["key"][:8], a["model"], a["method"], _f(a.get("top1"), 1),
                      _f(first, 2), _f(last, 2),
                      _g(stats["beta_var"]), _g(stats["gamma_var"]), _f(stats["cosine"], 2))
    console = Console()
    if console.width < 100:  # never truncate numbers: on a narrow terminal lines wrap instead
        console = Console(width=100)
    console.print(table)
    for a in analyses:
        if a["correlation"] is None:
            console.print(f"{a['key'][:8]} {a['method']}: {a['correlation_note']}")


@cli.command()
@click.argument("targets", metavar="KEY|SPEC...", nargs=-1, required=True)
@click.option("--images", type=click.IntRange(min=1), default=256, show_default=True,
              help="Validation images to average over (spread evenly over the validation set).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path(DEFAULT_OUT),
              show_default=True, help="Folder for the figures and analysis.json.")
@click.option("--weights", type=click.Choice(["model", "ema"]), default="model", show_default=True,
              help="Checkpoint weights: the trained model (whose top-1 is the result) or its EMA.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--samples", type=click.IntRange(min=1, max=16), default=4, show_default=True,
              help="Single images for the token-norm maps (Fig. 7).")
@click.option("--data-root", default=None, help="Dataset root, if not the one in the run's job.json.")
@db_option
@user_errors
def analyze(targets: tuple[str, ...], images: int, out_dir: Path, weights: str, device: str,
            samples: int, data_root: Optional[str], db: Optional[str]) -> None:
    """Figures and numbers on how the PE acts in finished runs (KEY, a unique prefix, or a SPEC).

    \b
    Per run: token/PE correlation per layer (Fig. 4), heatmaps of tokens and PE per layer
    (Fig. 2), tokens before/after the Last LN with its gamma/beta (Figs. 6, 8), token-norm maps
    of single images (Fig. 7). Numbers are stored in the database and printed.
    Examples:
      mpvgbench analyze experiments/quickstart.yaml --images 256
      mpvgbench analyze 3f2a9c 81bd07 --out figs
    """
    import torch

    from mpvgbench.analyze_run import analyze_run
    from mpvgbench.curves import plot_correlation_by_method

    store = open_store(db, must_exist=True)
    rows: dict[str, RunRow] = {}
    for target in targets:
        rows.update({row.key: row for row in resolve_runs(store, target)})
    rows = _classifiers_only(rows)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    analyses: list[dict[str, Any]] = []
    for row in rows.values():
        if not row.run_dir:
            raise UserError(f"run {row.key} has no run directory in the database; it cannot be analyzed")
        click.echo(f"analysing {row.key} ({row.model} / {row.method_label} / {row.dataset})", err=True)
        analysis = analyze_run(row.run_dir, images=images, out_dir=out_dir, device=device,
                               weights=weights, n_samples=samples, data_root=data_root)
        if store.writable:  # a read-only database: the numbers are in analysis.json only
            store.add_analysis(row.key, _store_values(analysis))
        analyses.append(analysis)
    plot_correlation_by_method(analyses, out_dir / "correlation.png")
    (out_dir / "analysis.json").write_text(json.dumps(analyses, indent=1, sort_keys=True) + "\n")
    print_table(analyses)
    click.echo(f"wrote {out_dir / 'correlation.png'}, {out_dir}/<key>/*.png and {out_dir / 'analysis.json'}", err=True)
