"""`mpvgbench run` and `mpvgbench status`."""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mpvgbench.cli.common import DEFAULT_DB, DEFAULT_RUNS_DIR, cli, db_option, open_store, resolve_runs_root, user_errors

if TYPE_CHECKING:
    from mpvgbench.matrix import Job
    from mpvgbench.spec import Spec
    from mpvgbench.store import Store


@cli.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False, path_type=Path))
@db_option
@click.option("--runs-dir", default=None, help=f"Where run directories go (default ./{DEFAULT_RUNS_DIR}).")
@click.option("--executor", "executor_name", type=click.Choice(["local", "slurm"]), default=None,
              help="Override the spec's executor.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Local jobs at once (one GPU each when GPUs exist).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Device for local jobs.")
@click.option("--dry-run", is_flag=True, help="Print the matrix (key, cell, new/done/failed) and run nothing.")
@click.option("--smoke", is_flag=True, help="Run the whole matrix on synthetic data, small size, a few steps.")
@click.option("--force", is_flag=True, help="Rerun finished jobs too.")
@click.option("--retry-failed", is_flag=True, help="Rerun jobs stored as failed.")
@click.option("--fail-fast", is_flag=True, help="Stop everything at the first failed job.")
@click.option("--wait", is_flag=True, help="Slurm: follow the submitted jobs until they end.")
@click.option("--download", is_flag=True, help="Allow torchvision to download CIFAR-100 into its root.")
@user_errors
def run(spec_path: Path, db: str | None, runs_dir: str | None, executor_name: str | None,
        workers: int | None, device: str | None, dry_run: bool, smoke: bool, force: bool,
        retry_failed: bool, fail_fast: bool, wait: bool, download: bool) -> None:
    """Expand SPEC into jobs and run the ones not yet finished.

    \b
    Examples:
      mpvgbench run experiments/quickstart.yaml --workers 2
      mpvgbench run experiments/table1.yaml --dry-run
      mpvgbench run experiments/table1.yaml --smoke
      mpvgbench run experiments/table1.yaml --executor slurm
    """
    from mpvgbench.data import default_num_workers
    from mpvgbench.executors.base import RunContext
    from mpvgbench.matrix import expand
    from mpvgbench.spec import load_spec

    spec = load_spec(spec_path)
    jobs = expand(spec, smoke=smoke)
    if dry_run:
        _print_matrix(jobs, db, spec)
        return
    name = executor_name or spec.executor.name
    # Every input is checked before the database is written or a job starts (docs/reliability.md).
    check_data_roots(spec, jobs, local=name == "local", download=download or spec.data.download)
    runs_root = resolve_runs_root(runs_dir, spec).resolve()
    store = open_store(db, spec)
    states = store.statuses([job.key for job in jobs])
    resumed = ("pending", "running", "failed", "cancelled") if retry_failed and not force else ("pending", "running")
    check_run_dirs([job for job in jobs if states.get(job.key, "pending") in resumed], runs_root)
    store.register_jobs(jobs, spec.name)
    states = store.statuses([job.key for job in jobs])
    if force:
        # --force retrains from scratch: resuming would only re-read a finished run's last checkpoint
        for key in store.reset([job.key for job in jobs if states.get(job.key) in ("finished", "failed", "cancelled")]):
            clear_training_state(runs_root / key)
    elif retry_failed:
        store.reset([job.key for job in jobs if states.get(job.key) in ("failed", "cancelled")])
    states = store.statuses([job.key for job in jobs])
    todo = [job for job in jobs if states.get(job.key) in ("pending", "running")]
    done = sum(states.get(job.key) == "finished" for job in jobs)
    failed = sum(states.get(job.key) == "failed" for job in jobs)
    cancelled = sum(states.get(job.key) == "cancelled" for job in jobs)
    click.echo(f"{spec.name}: {len(jobs)} jobs, {done} finished, {failed} failed"
               + (f", {cancelled} cancelled" if cancelled else "")
               + f"{' (rerun with --retry-failed)' if failed or cancelled else ''}, {len(todo)} to run")
    if not todo:
        return

    exec_settings = spec.executor
    ctx = RunContext(
        runs_root=runs_root,
        data_roots={d: root for d in {job.dataset for job in todo} if (root := spec.data_root(d))},
        device=device or exec_settings.device,
        num_workers=(spec.data.num_workers if spec.data.num_workers is not None
                     else max(default_num_workers(job.dataset) for job in todo)),
        fail_fast=fail_fast,
        download=download or spec.data.download,
    )
    previous_handler = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        _launch(name, spec, jobs, todo, store, ctx, workers, wait)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


def _launch(name: str, spec: Spec, jobs: Sequence[Job], todo: Sequence[Job], store: Store, ctx: Any,
            workers: int | None, wait: bool) -> None:
    exec_settings = spec.executor
    if name == "slurm":
        from mpvgbench.executors.slurm import SlurmExecutor

        executor = SlurmExecutor.from_spec(spec)
        summary = executor.launch(todo, store, ctx)
        for message in summary.messages:
            click.echo(message)
        if wait:
            executor.follow(store, [job.key for job in todo], ctx)
            _print_summary(store, jobs)
            _exit_unless_finished(store, jobs)
        return

    from mpvgbench.executors.local import LocalExecutor
    from mpvgbench.live import LiveView

    with LiveView(todo) as view:
        executor = LocalExecutor(workers=workers or exec_settings.workers, on_event=view.handle)
        summary = executor.launch(todo, store, ctx)
    for message in summary.messages:
        click.echo(message)
    _print_summary(store, jobs)
    _exit_unless_finished(store, jobs)


EXIT_NOT_ALL_FINISHED = 1  # the same for every executor: a run that leaves any job unfinished


def _exit_unless_finished(store: Store, jobs: Sequence[Job]) -> None:
    """Exit 1 unless every job of the matrix is finished (failed, cancelled, still running)."""
    states = store.statuses([job.key for job in jobs])
    if any(states.get(job.key) != "finished" for job in jobs):
        sys.exit(EXIT_NOT_ALL_FINISHED)


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


ROOT_FREE_DATASETS = frozenset({"digits", "synthetic"})  # bundled or generated: no data.roots entry


def check_data_roots(spec: Spec, jobs: Sequence[Job], *, local: bool, download: bool) -> None:
    """A DataError (one line, exit 2) for a dataset whose root is unset or, for local runs, not
    laid out as expected: before anything is stored or started, not inside a worker.

    Slurm runs only need the root to be set: its path may exist on the cluster only.
    """
    from mpvgbench.data import DataError

    for dataset in sorted({job.dataset for job in jobs} - ROOT_FREE_DATASETS):
        root = spec.data_root(dataset)
        if not root:
            raise DataError(
                f"{spec.source}: data.roots.{dataset} is not set but the spec trains on {dataset}; "
                f"add `data: {{roots: {{{dataset}: /path/to/{dataset}}}}}` to the spec "
                "(or run with --smoke on synthetic data)"
            )
        if not local:
            continue
        path = Path(root)
        if dataset == "cifar100":
            if download:
                continue  # torchvision fetches it into the root
            if not (path / "cifar-100-python" / "train").is_file():
                raise DataError(
                    f"{spec.source}: data.roots.cifar100: {root!r} holds no cifar-100-python/train; "
                    "point it at the folder that holds cifar-100-python/ or set data.download: true"
                )
        elif not path.is_dir():
            raise DataError(f"{spec.source}: data.roots.{dataset}: {root!r} is not a directory; "
                            "fix the path in the spec")
        else:
            for split in ("train", "val"):
                if not (path / split).is_dir():
                    raise DataError(
                        f"{spec.source}: data.roots.{dataset}: {root!r} has no {split}/ folder; "
                        f"expected {split}/<class>/<image> under it"
                    )


def check_run_dirs(jobs: Sequence[Job], runs_root: Path) -> None:
    """A RunDirError (one line, exit 2) when a job about to resume has a corrupted result.json or
    checkpoint.pt, instead of a worker failing on it."""
    import zipfile

    from mpvgbench.rundir import RunDir, RunDirError, read_result

    for job in jobs:
        rd = RunDir(runs_root / job.key)
        if not rd.path.is_dir():
            continue
        read_result(rd.path)  # RunDirError when it does not parse
        if not rd.checkpoint.exists():
            continue
        try:  # torch.save writes a zip archive with <name>/data.pkl; no need to load the tensors
            with zipfile.ZipFile(rd.checkpoint) as archive:
                if not any(name.endswith("data.pkl") for name in archive.namelist()):
                    raise zipfile.BadZipFile("no data.pkl in the archive")
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise RunDirError(
                f"run dir {rd.path}: checkpoint.pt is corrupted ({type(exc).__name__}: {exc}); "
                "delete it to restart the run from scratch"
            ) from None


TRAINING_STATE = ("checkpoint.pt", "result.json", "metrics.jsonl", "progress.json", "error.json")


def clear_training_state(run_dir: Path) -> None:
    for name in TRAINING_STATE:
        (run_dir / name).unlink(missing_ok=True)


def _print_matrix(jobs: Sequence[Job], db: str | None, spec: Spec) -> None:
    target = db or (spec.results.db if spec.results and spec.results.db else None) or DEFAULT_DB
    states: dict[str, str] = {}
    if "://" in target or Path(target).exists():  # a dry run never creates a database
        states = open_store(db, spec).statuses([job.key for job in jobs])
    label = {"finished": "done", "pending": "new", None: "new"}
    rows = [(j.key, j.model, j.method_label, j.dataset, str(j.seed), label.get(states.get(j.key), states.get(j.key) or "new")) for j in jobs]
    header = ("key", "model", "method", "dataset", "seed", "state")
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    counts = {s: sum(r[5] == s for r in rows) for s in sorted({r[5] for r in rows})}
    lines.append(f"{len(rows)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    click.echo("\n".join(lines))


def _print_summary(store: Store, jobs: Sequence[Job]) -> None:
    states = store.statuses([job.key for job in jobs])
    counts: dict[str, int] = {}
    for job in jobs:
        counts[states.get(job.key, "pending")] = counts.get(states.get(job.key, "pending"), 0) + 1
    click.echo("done: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + "  (mpvgbench report)")


@cli.command()
@click.argument("spec_path", metavar="[SPEC]", required=False, type=click.Path(dir_okay=False, path_type=Path))
@db_option
@click.option("--all", "show_all", is_flag=True, help="List finished runs too.")
@user_errors
def status(spec_path: Path | None, db: str | None, show_all: bool) -> None:
    """Reconcile running jobs with their run directories and the scheduler, then list them.

    \b
    Examples:
      mpvgbench status
      mpvgbench status experiments/table1.yaml --all
    """
    from rich.console import Console
    from rich.table import Table

    spec = load_optional_spec(spec_path)
    store = open_store(db, spec, must_exist=True)
    reconcile_runs(store, spec)
    runs = store.runs(spec_name=spec.name if spec else None)
    counts: dict[str, int] = {}
    for row in runs:
        counts[row.status] = counts.get(row.status, 0) + 1
    table = Table(title=", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no runs")
    for column in ("key", "model", "method", "dataset", "seed", "status", "attempts", "epoch", "executor", "error"):
        table.add_column(column)
    from mpvgbench.executors.job_view import job_view
    from mpvgbench.executors.local import owner_is_alive

    for row in runs:
        if show_all or row.status != "finished":
            view = job_view(row)  # scheduler state, requeues counted, epoch n/N
            state = view.state
            if state == "running" and row.executor == "local" and row.owner and not owner_is_alive(row.owner):
                state = "running (coordinator gone: rerun to resume)"
            table.add_row(row.key, row.model, row.method_label, row.dataset, str(row.seed), state,
                          str(view.attempts), view.epoch, row.executor or "", (row.error or "")[:60])
    Console().print(table)


def load_optional_spec(spec_path: Path | None) -> Spec | None:
    if spec_path is None:
        return None
    from mpvgbench.spec import load_spec

    return load_spec(spec_path)


def reconcile_runs(store: Store, spec: Spec | None) -> None:
    """Bring running runs up to date: ingest finished run dirs; ask Slurm about the rest."""
    running = store.runs(spec_name=spec.name if spec else None, status="running")
    for row in running:
        if row.run_dir:
            store.ingest_run_dir(Path(row.run_dir))
    slurm_rows = [r for r in store.runs(spec_name=spec.name if spec else None, status="running") if r.executor == "slurm"]
    if slurm_rows:
        from mpvgbench.executors.slurm import reconcile

        for message in reconcile(store, slurm_rows):
            click.echo(message, err=True)
