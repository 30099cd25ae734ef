"""`mpvgbench compare KEY KEY...`: config differences, final numbers and overlaid curves."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from mpvgbench.cli.common import UserError, cli, db_option, open_store, user_errors

if TYPE_CHECKING:
    from mpvgbench.report import ReportTable
    from mpvgbench.store import Store

FORMATS = ("table", "markdown", "csv", "json", "html")


@cli.command()
@click.argument("keys", nargs=-1, required=True, metavar="KEY KEY...")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="html: one page with both tables and the curves; needs -o.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="FILE.png: the curves; with --format: the tables (html: and the curves).")
@db_option
@user_errors
def compare(keys: tuple[str, ...], fmt: str, output: Path | None, db: str | None) -> None:
    """Compare runs: the config fields that differ, final numbers, curves overlaid.

    KEY: a run key or a unique prefix of one (as `status` shows them).

    \b
    Examples:
      mpvgbench compare 3f2a91c0 77d0e4b1
      mpvgbench compare 3f2a91c0 77d0e4b1 -o curves.png
      mpvgbench compare 3f2a91c0 77d0e4b1 --format html -o compare.html
    """
    if len(keys) < 2:
        raise UserError("compare needs two or more runs: mpvgbench compare KEY KEY...")
    if fmt == "html" and output is None:
        raise UserError("--format html writes a file; pass -o compare.html")
    store = open_store(db, must_exist=True)
    full = [_resolve(store, key) for key in keys]
    if len(set(full)) < len(full):
        raise UserError("the same run is named twice; give different keys")
    from mpvgbench.report import render
    from mpvgbench.report_compare import compare_figure, compare_runs

    diff, numbers = compare_runs(store, full)
    if output is not None and output.suffix.lower() == ".png" and fmt == "table":
        from mpvgbench.cli.report import write_output
        from mpvgbench.curves import figure_png

        write_output(output, figure_png(compare_figure(store, full)))
        return
    if fmt == "html":
        from mpvgbench.cli.report import write_output
        from mpvgbench.report_html import compare_html

        assert output is not None  # checked above
        write_output(output, compare_html(diff, numbers, compare_figure(store, full)))
        return
    if fmt == "table" and output is None:
        from mpvgbench.cli.tables import console
        from mpvgbench.report import to_rich

        out = console()
        for table in (diff, numbers):
            out.print(to_rich(table, width=out.width))
        return
    text = "\n".join(render(t, fmt) for t in (diff, numbers)) if fmt != "json" else _json(diff, numbers)
    if output is not None:
        from mpvgbench.cli.report import write_output

        write_output(output, text)
    else:
        click.echo(text, nl=False)


def _json(diff: "ReportTable", numbers: "ReportTable") -> str:
    import json

    from mpvgbench.report import render

    return json.dumps({"config": json.loads(render(diff, "json")), "numbers": json.loads(render(numbers, "json"))},
                      indent=1, ensure_ascii=False) + "\n"


def _resolve(store: "Store", key: str) -> str:
    """A full key from a key or a unique prefix of one."""
    matches = store.keys_with_prefix(key)
    if not matches:
        raise UserError(f"no run with key {key!r}; `mpvgbench status --all` lists the runs")
    if len(matches) > 1 and key not in matches:
        raise UserError(f"key prefix {key!r} is ambiguous ({len(matches)} runs); give more digits")
    return key if key in matches else matches[0]
