"""`mpvgbench report` and `models` (`methods` lives in cli/methods.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from mpvgbench.cli.common import UserError, cli, db_option, open_store, user_errors
from mpvgbench.cli.status import load_optional_spec, reconcile_runs

if TYPE_CHECKING:
    from mpvgbench.store import Store


@cli.command()
@click.option("--table", "table_number", default=None, metavar="1-6|fig5|zoo",
              help="The paper's table (1-6), Fig. 5 or the PE zoo; default: pivot everything stored.")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "latex", "csv", "json", "html"]),
              default="table", show_default=True,
              help="html: one self-contained page (tables, training curves, analysis figures); needs -o.")
@click.option("--metric", type=click.Choice(["final", "best"]), default="final", show_default=True,
              help="Final-epoch top-1 (what the paper reports) or best top-1 over epochs.")
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Only runs of this spec.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write to a file instead of stdout.")
@click.option("--curves", is_flag=True,
              help="Write training curves (top-1 and loss per epoch, mean and band over seeds) as a PNG to -o.")
@click.option("--analysis", "analysis_dirs", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="html: also embed the PNGs under this `analyze --out` folder (repeatable).")
@db_option
@user_errors
def report(table_number: str | None, fmt: str, metric: str, spec_path: Path | None, output: Path | None,
           curves: bool, analysis_dirs: tuple[Path, ...], db: str | None) -> None:
    """Render measured results (mean +- std over seeds) beside the paper's numbers.

    \b
    Examples:
      mpvgbench report
      mpvgbench report --table 1 --format markdown
      mpvgbench report --table 5 --format latex -o table5.tex
      mpvgbench report --format html --analysis analysis -o report.html
      mpvgbench report --curves -o curves.png
    """
    from mpvgbench.paper import get_table
    from mpvgbench.report import build_table, render

    # option conflicts first: a wrong command line reads nothing
    if (fmt == "html" or curves) and output is None:
        what = "--curves" if curves else "--format html"
        raise UserError(f"{what} writes a file; pass -o {'curves.png' if curves else 'report.html'}")
    if curves and (fmt != "table" or table_number is not None):
        raise UserError("--curves draws every stored run's curves; drop --format/--table or run them separately")
    if analysis_dirs and fmt != "html":
        raise UserError("--analysis only applies to --format html; add --format html")
    for folder in analysis_dirs:
        if not folder.is_dir():
            raise UserError(f"--analysis {folder}: no such folder; pass the --out folder of `mpvgbench analyze`")
    table_id = None if table_number is None else get_table(table_number).id  # a bad --table: exit 2, nothing read
    if fmt == "html" and table_id is not None:
        raise UserError("--format html shows every table with measured values; drop --table")
    spec = load_optional_spec(spec_path)
    store = open_store(db, spec, must_exist=True)
    reconcile_runs(store, spec)
    spec_name = spec.name if spec else None
    if curves or fmt == "html":
        assert output is not None  # checked above
        _write_figure_or_page(store, output, curves=curves, metric=metric, spec_name=spec_name,
                              analysis_dirs=analysis_dirs)
        return
    table = build_table(store, table_id, metric=metric, spec=spec_name)
    if fmt == "table" and output is None:
        from mpvgbench.cli.tables import console
        from mpvgbench.report import to_rich

        out = console()
        out.print(to_rich(table, width=out.width))
        return
    text = render(table, fmt)
    if output is not None:
        _write(output, text if isinstance(text, str) else str(text))
    else:
        click.echo(text)


def _write(output: Path, data: str | bytes) -> None:
    try:
        if isinstance(data, bytes):
            output.write_bytes(data)
        else:
            output.write_text(data, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write {output}: {exc.strerror or exc}; pass a writable -o path") from None
    click.echo(f"wrote {output}", err=True)


def _write_figure_or_page(store: "Store", output: Path, *, curves: bool, metric: str, spec_name: str | None,
                          analysis_dirs: tuple[Path, ...]) -> None:
    if curves:
        from mpvgbench.curves import collect_curves, curves_figure, figure_png

        panels = collect_curves(store, spec_name)
        if not panels:
            raise UserError("no finished run with per-epoch metrics; run `mpvgbench run SPEC` first")
        _write(output, figure_png(curves_figure(panels)))
        return
    from mpvgbench.report_html import build_html

    _write(output, build_html(store, metric=metric, spec=spec_name, analysis_dirs=analysis_dirs))


@cli.command()
@click.option("--params", is_flag=True, help="Also count parameters for default/lape/pvg/mpvg (on the meta device: seconds).")
@user_errors
def models(params: bool) -> None:
    """List the registered backbones.

    \b
    Example:
      mpvgbench models --params
    """
    from mpvgbench.cli.tables import add_plain_row, console, fit_numbers, narrow_table
    from mpvgbench.models import count_params, default_img_size, list_models, model_family

    methods = ("default", "lape", "pvg", "mpvg") if params else ()
    rows = []
    for name in list_models():
        cells = [name, model_family(name), str(default_img_size(name))]
        cells += [f"{count_params(name, method):,}" for method in methods]
        rows.append(cells)
    if params:  # Tables 3-4: ViT-Adapter-Ti around DeiT-Ti with Mask R-CNN (80) / UperNet (150)
        import torch

        from mpvgbench.downstream.detection import downstream_param_counts

        with torch.device("meta"):  # shapes only: no memory, no initialisation
            counts = [downstream_param_counts(method) for method in methods]
        for head, img in (("mask_rcnn", "1024"), ("upernet", "512")):
            rows.append(["adapter_ti", head, img, *(f"{c[head]:,}" for c in counts)])
    table = narrow_table(["name", "family", "img", *methods], title="models (timm names: mpvg_*)",
                         right=("img", *methods))
    fit_numbers(table, rows)
    for cells in rows:
        add_plain_row(table, cells)
    console().print(table)
