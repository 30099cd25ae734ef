"""`mpvgbench report` and `models` (`methods` lives in cli/methods.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mpvgbench.cli.common import UserError, cli, db_option, open_store, user_errors
from mpvgbench.cli.status import reconcile_runs

if TYPE_CHECKING:
    from mpvgbench.store import Store


@cli.command()
@click.argument("spec_path", metavar="[SPEC]", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--table", "table_number", default=None, metavar="1-6|fig5|zoo",
              help="The paper's table (1-6), Fig. 5 or the PE zoo; default: pivot everything selected.")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "latex", "csv", "json", "html"]),
              default="table", show_default=True,
              help="html: one self-contained page (tables, provenance, curves, analysis figures); needs -o.")
@click.option("--metric", type=click.Choice(["final", "best"]), default="final", show_default=True,
              help="Final-epoch top-1 (what the paper reports) or best top-1 over epochs.")
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
              help="As for `run`: the spec with this override (selects the runs `run --set` made).")
@click.option("--only", "only", multiple=True, metavar="AXIS=V[|V],...",
              help="As for `run`: only the cells that match, e.g. --only method=mpvg.")
@click.option("--smoke", is_flag=True, help="The runs of `run --smoke` (database .smoke/results.db).")
@click.option("--baseline", default=None, metavar="METHOD",
              help="Per cell: paired per-seed difference to METHOD, its 95% t interval and the paired "
                   "t-test's p-value; * when the interval excludes 0.")
@click.option("--spec", "spec_option", type=click.Path(dir_okay=False, path_type=Path), default=None,
              hidden=True, help="The same as SPEC (older form).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write to a file instead of stdout.")
@click.option("--curves", is_flag=True,
              help="Write training curves (top-1 and loss per epoch, mean and band over seeds) as a PNG to -o.")
@click.option("--analysis", "analysis_dirs", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="html: also embed the PNGs under this `analyze --out` folder (repeatable).")
@db_option
@user_errors
def report(spec_path: Path | None, table_number: str | None, fmt: str, metric: str, overrides: tuple[str, ...],
           only: tuple[str, ...], smoke: bool, baseline: str | None, spec_option: Path | None,
           output: Path | None, curves: bool, analysis_dirs: tuple[Path, ...], db: str | None) -> None:
    """Render measured results (mean +- std over seeds) beside the paper's numbers.

    With SPEC, exactly the cells `run SPEC` makes with the same --set/--only/--smoke; without,
    every finished run, runs that differ in a config field as separate rows with that field as
    a column. Notes about runs not shown go to stderr, never into the output.

    \b
    Examples:
      mpvgbench report
      mpvgbench report experiments/quickstart.yaml --baseline default
      mpvgbench report experiments/table1.yaml --set recipe.epochs=1 --only method=mpvg
      mpvgbench report experiments/table2.yaml --smoke --table 2
      mpvgbench report --table 1 --format markdown
      mpvgbench report --table 5 --format latex -o table5.tex
      mpvgbench report --format html --analysis analysis -o report.html
      mpvgbench report --curves -o curves.png
    """
    from mpvgbench.paper import get_table
    from mpvgbench.report import build_table

    # option conflicts first: a wrong command line reads nothing
    if spec_path is not None and spec_option is not None:
        raise UserError("give the spec once: as SPEC or as --spec")
    spec_path = spec_path or spec_option
    if (overrides or only) and spec_path is None:
        raise UserError("--set/--only change a spec's matrix; pass the SPEC they apply to")
    _check_outputs(fmt, output, curves, table_number is not None or baseline is not None, analysis_dirs)
    table_id = None if table_number is None else get_table(table_number).id  # a bad --table: exit 2, nothing read
    store, spec_name, selection = _open_selection(spec_path, overrides, only, smoke, db)
    if curves or fmt == "html":
        assert output is not None  # checked above
        _write_figure_or_page(store, output, curves=curves, metric=metric, spec_name=spec_name,
                              selection=selection, analysis_dirs=analysis_dirs, table_id=table_id,
                              baseline=baseline)
        return
    table = build_table(store, table_id, metric=metric, spec=spec_name, selection=selection, baseline=baseline)
    for line in table.diagnostics:
        click.echo(line, err=True)
    _print_table(table, fmt, output)


def _open_selection(spec_path: Path | None, overrides: tuple[str, ...], only: tuple[str, ...], smoke: bool,
                    db: str | None) -> "tuple[Store, str | None, dict[str, str] | None]":
    """The database to read (``.smoke/`` with --smoke), the spec's name and, with a spec, the job
    keys of exactly the matrix `run SPEC` makes with the same --set/--only/--smoke."""
    from mpvgbench.spec import load_spec

    spec = load_spec(spec_path, overrides) if spec_path is not None else None
    selection = None
    if spec is not None:
        from mpvgbench.cli.selection import matrix_selection

        selection = matrix_selection(spec, smoke=smoke, only=only)
    if smoke and db is None:
        from mpvgbench.cli.run import SMOKE_DIR

        db = str(SMOKE_DIR / "results.db")
    store = open_store(db, None if smoke else spec, must_exist=True)
    reconcile_runs(store, spec)
    if selection is not None:
        _say_what_is_left_out(store, selection)
    return store, (spec.name if spec else None), selection


def _print_table(table: Any, fmt: str, output: Path | None) -> None:
    from mpvgbench.report import render

    if fmt == "table" and output is None:
        from mpvgbench.cli.tables import console
        from mpvgbench.report import to_rich

        out = console()
        out.print(to_rich(table, width=out.width))
        return
    text = render(table, fmt)
    if output is not None:
        write_output(output, text if isinstance(text, str) else str(text))
    else:
        click.echo(text)


def _check_outputs(fmt: str, output: Path | None, curves: bool, has_table_options: bool,
                   analysis_dirs: tuple[Path, ...]) -> None:
    if (fmt == "html" or curves) and output is None:
        what = "--curves" if curves else "--format html"
        raise UserError(f"{what} writes a file; pass -o {'curves.png' if curves else 'report.html'}")
    if curves and (fmt != "table" or has_table_options):
        raise UserError("--curves draws the selected runs' curves; drop --format/--table/--baseline")
    if analysis_dirs and fmt != "html":
        raise UserError("--analysis only applies to --format html; add --format html")
    for folder in analysis_dirs:
        if not folder.is_dir():
            raise UserError(f"--analysis {folder}: no such folder; pass the --out folder of `mpvgbench analyze`")


def _say_what_is_left_out(store: "Store", selection: dict[str, str]) -> None:
    """On stderr: the matrix's cells without a finished run, and stored runs outside it."""
    from mpvgbench.report_provenance import database_name

    finished = {row.key for row in store.results_frame()}
    missing = [key for key in selection if key not in finished]
    if missing:
        click.echo(f"{len(missing)} of {len(selection)} cells of this matrix have no finished run yet "
                   "(mpvgbench status SPEC)", err=True)
    others = len(finished - set(selection))
    if others:
        click.echo(f"{others} other finished run(s) in {database_name(store.where)} are not cells of this "
                   "matrix (runs it starts from, other configurations; `mpvgbench report` without SPEC "
                   "shows every run)", err=True)


def write_output(output: Path, data: str | bytes) -> None:
    """Write ``data`` to ``-o``; an unwritable path is a one-line user error."""
    try:
        if isinstance(data, bytes):
            output.write_bytes(data)
        else:
            output.write_text(data, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write {output}: {exc.strerror or exc}; pass a writable -o path") from None
    click.echo(f"wrote {output}", err=True)


def _write_figure_or_page(store: "Store", output: Path, *, curves: bool, metric: str, spec_name: str | None,
                          selection: dict[str, str] | None, analysis_dirs: tuple[Path, ...],
                          table_id: object = None, baseline: str | None = None) -> None:
    if curves:
        from mpvgbench.curves import collect_curves, curves_figure, figure_png

        panels = collect_curves(store, keys=selection)
        if not panels:
            raise UserError("no finished run with per-epoch metrics; run `mpvgbench run SPEC` first")
        write_output(output, figure_png(curves_figure(panels)))
        return
    from mpvgbench.report_html import build_html

    write_output(output, build_html(store, metric=metric, spec=spec_name, selection=selection,
                              analysis_dirs=analysis_dirs, table=table_id, baseline=baseline))


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
