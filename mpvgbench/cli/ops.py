"""`mpvgbench logs` and `mpvgbench cancel`: look at and stop individual runs."""

from __future__ import annotations

import collections
from collections.abc import Iterable
from pathlib import Path

import click

from mpvgbench.cli.common import UserError, cli, db_option, open_store, user_errors


def _resolve_keys(store, target: str) -> list[str]:  # type: ignore[no-untyped-def]
    """TARGET is a spec file (all its runs) or a key / unique key prefix."""
    if not target.strip():
        raise UserError("an empty KEY matches every run; give a key (or a unique prefix of one) "
                        "from `mpvgbench status --all`, or a spec file")
    path = Path(target)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        from mpvgbench.spec import load_spec

        spec = load_spec(path)
        return [row.key for row in store.runs(spec_name=spec.name)]
    matches = store.keys_with_prefix(target)
    if not matches:
        raise UserError(f"no run with key {target!r}; `mpvgbench status --all` lists the keys")
    if len(matches) > 1:
        raise UserError(f"key prefix {target!r} is ambiguous ({len(matches)} runs); give more digits")
    return matches


@cli.command()
@click.argument("key")
@click.option("--stream", type=click.Choice(["both", "stdout", "stderr"]), default="both", show_default=True)
@click.option("--tail", "tail_lines", type=click.IntRange(min=1), default=None,
              help="Only the last N lines of each stream.")
@db_option
@user_errors
def logs(key: str, stream: str, tail_lines: int | None, db: str | None) -> None:
    """Print a run's stdout/stderr (KEY or a unique prefix of it).

    \b
    Example:
      mpvgbench logs 3f2a9c
    """
    store = open_store(db, must_exist=True)
    (full_key,) = _resolve_keys(store, key)
    row = store.runs(keys=[full_key])[0]
    paths: list[Path] = []
    if row.executor == "slurm":
        from mpvgbench.executors.slurm import log_paths

        paths = list(log_paths(row))
    if row.run_dir:
        paths += [Path(row.run_dir) / "stdout.log", Path(row.run_dir) / "stderr.log"]
    wanted = [p for p in paths if stream == "both" or p.name.endswith(("out", "stdout.log") if stream == "stdout" else ("err", "stderr.log"))]
    found = [p for p in wanted if p.is_file() and not p.is_symlink()]  # a link may point anywhere
    if not found and row.run_dir and not Path(row.run_dir).is_dir():
        raise UserError(f"run {full_key}'s directory {row.run_dir} is gone (deleted or moved), and its "
                        f"logs with it (status: {row.status}); `mpvgbench run SPEC --force` retrains it")
    if not found:
        raise UserError(f"run {full_key} has no logs yet (status: {row.status})")
    for path in found:
        click.echo(f"==> {path} <==")
        with open(path, errors="replace") as handle:  # streamed: a log may be gigabytes
            lines: Iterable[str] = collections.deque(handle, maxlen=tail_lines) if tail_lines else handle
            for line in lines:
                click.echo(line, nl=False)


@cli.command()
@click.argument("target", metavar="SPEC|KEY")
@db_option
@user_errors
def cancel(target: str, db: str | None) -> None:
    """Cancel the pending and running jobs of a spec, or one run by key.

    \b
    Slurm jobs are scancel'ed; the runs are stored as cancelled and rerun with --retry-failed.
    Examples:
      mpvgbench cancel experiments/table1.yaml
      mpvgbench cancel 3f2a9c
    """
    store = open_store(db, must_exist=True)
    keys = _resolve_keys(store, target)
    rows = [row for row in store.runs(keys=keys) if row.status in ("pending", "running")]
    slurm_rows = [row for row in rows if row.executor == "slurm" and row.external_id]
    if slurm_rows:
        from mpvgbench.executors.slurm import cancel_jobs

        cancel_jobs(slurm_rows)
    for row in rows:
        store.mark_cancelled(row.key)
    click.echo(f"cancelled {len(rows)} run(s)" + (f", {len(slurm_rows)} on Slurm" if slurm_rows else ""))
