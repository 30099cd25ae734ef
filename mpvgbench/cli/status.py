"""`mpvgbench status`: counts by state, then the runs that are not finished (80 columns)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mpvgbench.cli.common import UserError, cli, db_option, end_quietly_on_closed_pipe, open_store, user_errors

if TYPE_CHECKING:
    from mpvgbench.spec import Spec
    from mpvgbench.store import Store
    from mpvgbench.store_schema import RunRow

STALE_AFTER_S = 120.0  # RunContext.stale_after_s: a claim this quiet belongs to nobody


@cli.command()
@click.argument("spec_path", metavar="[SPEC]", required=False, type=click.Path(dir_okay=False, path_type=Path))
@db_option
@click.option("--all", "show_all", is_flag=True, help="List finished runs too.")
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
              help="As for `run`: the spec with this override (the runs `run --set` made).")
@click.option("--only", "only", multiple=True, metavar="AXIS=V[|V],...",
              help="As for `run`: only the cells that match (and the runs they start from).")
@click.option("--smoke", is_flag=True, help="The runs of `run --smoke` (database .smoke/results.db).")
@user_errors
def status(spec_path: Path | None, db: str | None, show_all: bool, overrides: tuple[str, ...],
           only: tuple[str, ...], smoke: bool) -> None:
    """Reconcile running jobs with their run directories and the scheduler, then list them.

    With SPEC, exactly the jobs `run SPEC` makes with the same --set/--only/--smoke.

    \b
    Examples:
      mpvgbench status
      mpvgbench status experiments/table1.yaml --all
      mpvgbench status experiments/table1.yaml --smoke --only method=mpvg
    """
    from mpvgbench.cli.tables import (add_plain_row, console, fit_numbers, model_name, narrow_table,
                                      shared_columns, short_keys)
    from mpvgbench.executors.job_view import job_view
    from mpvgbench.executors.local import owner_is_alive

    store, runs, swept = _selected_runs(spec_path, overrides, only, smoke, db)
    counts = Counter(row.status for row in runs)
    active = counts["running"] + counts["pending"]
    summary = ", ".join(f"{counts[s]} {s}" for s in STATUS_ORDER if counts[s]) or "no runs"
    click.echo(f"{summary}{'' if active else '; nothing running'}")
    shown = [row for row in runs if show_all or row.status != "finished"]
    pending = [row for row in shown if row.status == "pending"]
    if not show_all and len(pending) > MAX_PENDING_SHOWN:
        # A 100k-job matrix is mostly pending rows: list the ones that say something.
        keep = {row.key for row in pending[:MAX_PENDING_SHOWN]}
        shown = [row for row in shown if row.status != "pending" or row.key in keep]
    if not shown:
        return
    keys = short_keys(row.key for row in shown)
    sweep_fields = list(next(iter(swept.values()), {}))  # a spec's swept recipe fields: columns
    header = ["key", "model", "method", "dataset", "seed", *sweep_fields, "state", "att", "epoch", "executor"]
    rows = []
    for row in shown:
        view = job_view(row)  # the scheduler's state, requeues counted, epoch n/N
        state = view.state
        if state == "running" and row.executor == "local" and row.owner and not owner_is_alive(row.owner):
            state = "running (coordinator gone: rerun to resume)"
        rows.append(dict(zip(header, [keys[row.key], model_name(row.model), row.method_label, row.dataset,
                                      str(row.seed), *swept.get(row.key, {}).values(), state,
                                      str(view.attempts), view.epoch,
                                      row.executor or "-"])))
    shared = shared_columns(header, rows, ("model", "method", "dataset", "seed", *sweep_fields, "executor"))
    if shared:
        click.echo("all: " + ", ".join(f"{c} {rows[0][c]}" for c in shared))
    columns = [c for c in header if c not in shared]
    table = narrow_table(columns, right=("seed", "att", "epoch"))
    fit_numbers(table, [[r[c] for c in columns] for r in rows])
    for r in rows:
        add_plain_row(table, [r[c] for c in columns])
    out = console()
    out.on_broken_pipe = end_quietly_on_closed_pipe  # type: ignore[method-assign] # rich: exit 1
    out.print(table)
    if not show_all and len(pending) > MAX_PENDING_SHOWN:
        click.echo(f"... and {len(pending) - MAX_PENDING_SHOWN} more pending (mpvgbench status --all)")
    for row in shown:
        if row.error:
            click.echo(f"{keys[row.key]}: {row.error}")


STATUS_ORDER = ("running", "pending", "finished", "failed", "cancelled")
MAX_PENDING_SHOWN = 20


def _selected_runs(spec_path: Path | None, overrides: tuple[str, ...], only: tuple[str, ...], smoke: bool,
                   db: str | None) -> "tuple[Store, list[RunRow], dict[str, dict[str, str]]]":
    """The database (``.smoke/`` with --smoke), reconciled, and its runs: with a spec, the jobs
    its matrix makes with the same --set/--only/--smoke (selected by job key, so a renamed copy
    or an override shows exactly its own runs); without, every run. Last, per job key, the
    values of the spec's swept fields (``{key: {"recipe.lr": "0.001"}}``; empty without a sweep)."""
    if (overrides or only) and spec_path is None:
        raise UserError("--set/--only change a spec's matrix; pass the SPEC they apply to")
    spec = None
    if spec_path is not None:
        from mpvgbench.spec import load_spec

        spec = load_spec(spec_path, overrides)
    if smoke and db is None:
        from mpvgbench.cli.run import SMOKE_DIR

        db = str(SMOKE_DIR / "results.db")
    store = open_store(db, None if smoke else spec, must_exist=True)
    reconcile_runs(store, spec)
    if spec is None:
        return store, store.runs(), {}
    from mpvgbench.matrix import expand, select, sweep_text

    jobs = select(expand(spec, smoke=smoke), only)
    swept = {job.key: {f: sweep_text(job, f) for f in spec.sweep} for job in jobs} if spec.sweep else {}
    return store, store.runs(keys=[job.key for job in jobs]), swept


def reconcile_runs(store: Store, spec: Spec | None) -> None:
    """Bring running runs up to date: ingest finished run dirs; ask Slurm about the rest."""
    from mpvgbench.executors.local import owner_is_alive

    if not store.writable:  # a read-only database shows what it holds; `run` adopts them later
        return
    running = store.runs(spec_name=spec.name if spec else None, status="running")
    for row in running:
        # The coordinator owns recording: a reader that ingested a live coordinator's run would
        # make it believe it lost its claim (issue: status during run). Only orphans are adopted.
        stale = row.heartbeat_at is None or time.time() - row.heartbeat_at > STALE_AFTER_S
        if row.run_dir and row.executor != "slurm" and (stale or not (row.owner and owner_is_alive(row.owner))):
            store.ingest_run_dir(Path(row.run_dir))
    slurm_rows = [r for r in store.runs(spec_name=spec.name if spec else None, status="running") if r.executor == "slurm"]
    if slurm_rows:
        from mpvgbench.executors.slurm import reconcile

        for message in reconcile(store, slurm_rows):
            click.echo(message, err=True)
