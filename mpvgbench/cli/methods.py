"""`mpvgbench methods` and `mpvgbench check-method`: the PE methods, built in or from plugins."""

from __future__ import annotations

from pathlib import Path

import click

from mpvgbench.cli.common import UserError, cli, user_errors

_PLUGIN_OPTION = click.option(
    "--plugin", "plugins", multiple=True, type=click.Path(dir_okay=False),
    help="A PE-method plugin file to load first (repeatable; installed entry points load anyway).",
)


def _load(plugins: tuple[str, ...]) -> None:
    from mpvgbench.pe_plugins import load_configured_plugins, load_plugin_file

    for path in plugins:
        load_plugin_file(path)
    load_configured_plugins()


@cli.command()
@_PLUGIN_OPTION
@user_errors
def methods(plugins: tuple[str, ...]) -> None:
    """List the position-embedding methods: presets, their knobs, and where each comes from.

    \b
    A spec names a preset ("mpvg", "rope_mixed", a plugin's name) or knobs on a base:
    {base: mpvg, last_ln_pe: 5}, {base: peg, pool: avg}.
    Example:
      mpvgbench methods --plugin my_pe.py
    """
    from mpvgbench.cli.tables import add_plain_row, console, fit_numbers, narrow_table
    from mpvgbench.methods import ENCODINGS, KNOBS, PRESETS

    _load(plugins)
    rows = []
    for name, method in PRESETS.items():
        info = ENCODINGS.get(method.encoding)
        source = "built in" if info is None or info.identity is None else f"{Path(info.source).name} {info.identity}"
        knobs = [str(getattr(method, k)).lower() if getattr(method, k) is not None else "-" for k in KNOBS]
        rows.append([name, method.encoding, *knobs, source])
    # short headers so the table fits 80 columns: pool, add_to_input, layerwise_from, hierarchical, last_ln_pe
    table = narrow_table(["name", "method", "pool", "input", "layerwise", "hier", "last_ln", "source"],
                         title="position-embedding methods (knobs: pool, add_to_input, layerwise_from, "
                               "hierarchical, last_ln_pe)")
    fit_numbers(table, rows)
    for cells in rows:
        add_plain_row(table, cells)
    console().print(table)


@cli.command("check-method")
@click.argument("name")
@click.option("--family", "families", multiple=True, help="Only these model families (default: every one it claims).")
@_PLUGIN_OPTION
@user_errors
def check_method(name: str, families: tuple[str, ...], plugins: tuple[str, ...]) -> None:
    """Run the contract every shipped PE method passes; print each failure on one line.

    \b
    Per claimed family: forward (and gradients), parameter count, zero graph breaks under
    torch.compile, checkpoint round trip, a DDP step on gloo, the eval-time fold if claimed.
    Exit status 1 when a check fails.
    Example:
      mpvgbench check-method rope_mixed --family micro
      mpvgbench check-method my_pe --plugin my_pe.py
    """
    from mpvgbench.methods import resolve_method
    from mpvgbench.models.contract import CONTRACT_MODELS, check_method as run_contract, claimed_families

    _load(plugins)
    method = resolve_method(name)
    unknown = sorted(set(families) - set(CONTRACT_MODELS))
    if unknown:
        raise UserError(f"unknown family {unknown[0]!r}; allowed: {', '.join(CONTRACT_MODELS)}")
    claimed = claimed_families(method)
    refused = [f for f in families if f not in claimed]
    if refused:
        raise UserError(f"{name} does not claim family {refused[0]!r}; it claims: {', '.join(claimed)}")
    failures = run_contract(method, list(families) or None, report=lambda line: None)
    for failure in failures:
        click.echo(str(failure))
    checked = ", ".join(families or claimed)
    click.echo(f"check-method {name}: {'all checks passed' if not failures else f'{len(failures)} failed'} ({checked})")
    if failures:
        raise SystemExit(1)
