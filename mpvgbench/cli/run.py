"""`mpvgbench run`: expand a spec, check it, run the jobs not yet finished."""

from __future__ import annotations

import math
import signal
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from mpvgbench.cli.common import (DEFAULT_RUNS_DIR, cli, db_option, open_store,
                                   resolve_runs_root, user_errors)
from mpvgbench.cli.preflight import (adopt_finished_run_dirs, check_data_roots, check_init_from,
                                     check_run_dirs, check_writable_dir, clear_training_state,
                                     preflight_device, revive_parents, warn_about_slurm_timing)

if TYPE_CHECKING:
    from mpvgbench.executors.base import RunContext
    from mpvgbench.matrix import Job
    from mpvgbench.spec import Spec
    from mpvgbench.store import Store


@cli.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False, path_type=Path))
@db_option
@click.option("--runs-dir", default=None, help=f"Where run directories go (default ./{DEFAULT_RUNS_DIR}).")
@click.option("--executor", "executor_name", type=click.Choice(["local", "slurm", "debug"]), default=None,
              help="Override the spec's executor; debug: train each job inside this process, one "
                   "after another (breakpoints work; no isolation).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Local jobs at once (one GPU each when GPUs exist).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Device for local jobs.")
@click.option("--dry-run", is_flag=True, help="Check as run does, print the matrix (key, cell, new/done/failed) with "
                   "each job's estimated GPU-hours and their total, and run nothing.")
@click.option("--smoke", is_flag=True, help="Run the whole matrix on generated stand-ins of its datasets, small size, a few steps.")
@click.option("--force", is_flag=True, help="Rerun finished jobs too.")
@click.option("--retry-failed", is_flag=True, help="Rerun jobs stored as failed.")
@click.option("--fail-fast", is_flag=True, help="Stop everything at the first failed job.")
@click.option("--wait", is_flag=True, help="Slurm: follow the submitted jobs until they end.")
@click.option("--download", is_flag=True, help="Allow torchvision to download CIFAR-100 into its root.")
@click.option("--compile", "compile_mode", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="torch.compile the training step (auto: on CUDA only). Never part of the job key.")
@click.option("--amp", "amp_mode", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="bf16 autocast (auto: the recipe's setting on CUDA, fp32 on CPU).")
@click.option("--checkpoint-every-min", type=click.FloatRange(min=0.1, max=1e6), default=10.0, show_default=True,
              callback=lambda ctx, param, value: _finite(value, "--checkpoint-every-min"),
              help="Also checkpoint mid-epoch this often (a killed or requeued job resumes exactly).")
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
              help="Override a spec field (YAML value), e.g. --set recipe.epochs=1 --set 'seeds=[0]'. "
                   "Overrides change the job keys of the runs they change. Repeatable.")
@click.option("--only", "only", multiple=True, metavar="AXIS=V[|V],...",
              help="Run only the cells that match, e.g. --only model=deit_tiny,method=mpvg "
                   "(axes: model, method, dataset, seed). Repeatable: a cell matching any is kept.")
@user_errors
def run(spec_path: Path, db: str | None, runs_dir: str | None, executor_name: str | None,
        workers: int | None, device: str | None, dry_run: bool, smoke: bool, force: bool,
        retry_failed: bool, fail_fast: bool, wait: bool, download: bool, compile_mode: str,
        amp_mode: str, checkpoint_every_min: float, overrides: tuple[str, ...], only: tuple[str, ...]) -> None:
    """Expand SPEC into jobs and run the ones not yet finished.

    \b
    Examples:
      mpvgbench run experiments/quickstart.yaml --workers 2
      mpvgbench run experiments/table1.yaml --dry-run
      mpvgbench run experiments/table1.yaml --smoke
      mpvgbench run experiments/quickstart.yaml --set recipe.epochs=1 --set 'seeds=[0]'
      mpvgbench run experiments/table1.yaml --only model=deit_tiny,method=mpvg --dry-run
      mpvgbench run experiments/table1.yaml --executor slurm

    \b
    --smoke runs every cell on generated stand-ins of its dataset in the real file format
    (.smoke/data), through the real readers and transforms, small, for a few steps, on the CPU
    when no GPU is here, into its own database and runs dir (.smoke/), keeping no checkpoints:
    it checks the pipeline, never touches real results.
    """
    from mpvgbench.cli.config_checks import check_configs
    from mpvgbench.matrix import expand, select
    from mpvgbench.spec import load_spec

    spec = load_spec(spec_path, overrides)
    jobs = select(expand(spec, smoke=smoke), only)
    check_configs(spec, jobs)
    if smoke:
        db, runs_dir = _smoke_places(db, runs_dir)
    name = executor_name or spec.executor.name
    device = _preflight(spec, jobs, name, device, download=download, smoke=smoke)
    if dry_run:
        _print_matrix(jobs, db, spec, gpu_name=_local_gpu_name(device, local=name != "slurm"))
        return
    runs_root = resolve_runs_root(runs_dir, spec).resolve()
    check_writable_dir(runs_root, "runs dir", "pass --runs-dir DIR or set results.runs_dir in the spec")
    if name == "slurm":
        warn_about_slurm_timing(spec, jobs)
    store = open_store(db, spec)
    todo = _settle(store, spec, jobs, runs_root, force=force, retry_failed=retry_failed, local=name != "slurm")
    if not todo:
        _exit_unless_finished(store, jobs)  # a rerun that finds failed runs says so in its status
        return
    ctx = _run_context(spec, todo, runs_root, device, fail_fast=fail_fast, download=download,
                       amp=amp_mode, compile_mode=compile_mode, checkpoint_every_min=checkpoint_every_min,
                       smoke=smoke)
    previous_handler = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        _launch(name, spec, jobs, todo, store, ctx, workers, wait, smoke=smoke)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


def _preflight(spec: Spec, jobs: Sequence[Job], name: str, device: str | None, *, download: bool,
               smoke: bool) -> str:
    """Every input is checked before the database is written or a job starts, by `run` and
    `run --dry-run` alike (docs/reliability.md); returns the device the jobs run on."""
    check_data_roots(spec, jobs, local=name != "slurm", download=download or spec.data.download)
    if name != "slurm" and any(job.config.loader == "dali" for job in jobs):
        from mpvgbench.data_dali import require_dali

        require_dali()  # one line, before anything is stored (a cluster may have it: not checked)
    from mpvgbench.tracking import require_libraries

    require_libraries(spec.tracking)  # one line naming `pip install 'mpvgbench[tracking]'`
    return preflight_device(device or spec.executor.device, local=name != "slurm", smoke=smoke)


def _smoke_places(db: str | None, runs_dir: str | None) -> tuple[str, str]:
    """--smoke's database and runs dir: .smoke/ unless given on the command line. MPVGBENCH_DB
    names the real results, so a smoke run never writes there."""
    source = click.get_current_context().get_parameter_source("db")
    if db and source == ParameterSource.ENVIRONMENT:
        click.echo(f"smoke: MPVGBENCH_DB ({db}) is ignored; smoke results go to {SMOKE_DIR}/ "
                   "(--db to choose)", err=True)
        db = None
    return db or str(SMOKE_DIR / "results.db"), runs_dir or str(SMOKE_DIR / "runs")


def _settle(store: Store, spec: Spec, jobs: Sequence[Job], runs_root: Path, *, force: bool,
            retry_failed: bool, local: bool) -> list[Job]:
    """Store the matrix, fold in what the run directories witness (results, live Slurm jobs),
    apply --force/--retry-failed; print the counts and return the jobs to run."""
    from mpvgbench.executors.witness import adopt_live_slurm_jobs

    keys = [job.key for job in jobs]
    states = store.statuses(keys)
    resumed = ("pending", "running", "failed", "cancelled") if retry_failed and not force else ("pending", "running")
    check_run_dirs(jobs, [job for job in jobs if states.get(job.key, "pending") in resumed], runs_root)
    check_init_from(store, jobs)
    store.register_jobs(jobs, spec.name)
    states = store.statuses(keys)
    adopt_finished_run_dirs(store, [job for job in jobs if states.get(job.key) == "pending"], runs_root)
    on_slurm = adopt_live_slurm_jobs(store, [job for job in jobs if states.get(job.key) != "finished"], runs_root)
    states = store.statuses(keys)
    if force:
        # --force retrains from scratch: resuming would only re-read a finished run's last
        # checkpoint. Files first, then the database: killed in between, the rows still say
        # finished, so the next --force clears again (the other order lost the force).
        ended = [job.key for job in jobs if states.get(job.key) in ("finished", "failed", "cancelled")]
        for key in ended:
            clear_training_state(runs_root / key)
        store.reset(ended)
    elif retry_failed:
        store.reset([job.key for job in jobs if states.get(job.key) in ("failed", "cancelled")])
    revive_parents(store, jobs, runs_root)
    states = store.statuses(keys)
    todo = [job for job in jobs if states.get(job.key) in ("pending", "running")
            and not (local and job.key in on_slurm)]
    counts = Counter(states.get(job.key) for job in jobs)
    ended_text = f"{counts['failed']} failed" + (f", {counts['cancelled']} cancelled" if counts["cancelled"] else "")
    retry = " (rerun with --retry-failed)" if counts["failed"] or counts["cancelled"] else ""
    click.echo(f"{spec.name}: {len(jobs)} jobs, {counts['finished']} finished, {ended_text}{retry}, {len(todo)} to run")
    if local and on_slurm:
        click.echo(f"{len(on_slurm)} job(s) queued or running on Slurm (their run dirs say so): not "
                   "started here; `mpvgbench status SPEC` follows them", err=True)
    return todo


def _run_context(spec: Spec, todo: Sequence[Job], runs_root: Path, device: str, *, fail_fast: bool,
                 download: bool, amp: str, compile_mode: str, checkpoint_every_min: float,
                 smoke: bool) -> RunContext:
    from mpvgbench.data import default_num_workers
    from mpvgbench.executors.base import RunContext

    data_roots = {d: root for d in {job.dataset for job in todo} if (root := spec.data_root(d))}
    if smoke:  # real-format stand-ins (ImageNet JPEGs, CIFAR pickles), generated once under .smoke/data
        from mpvgbench.data_standins import smoke_data_roots

        data_roots.update(smoke_data_roots({job.dataset for job in todo}, SMOKE_DIR))
    return RunContext(
        runs_root=runs_root,
        data_roots=data_roots,
        device=device,
        num_workers=(spec.data.num_workers if spec.data.num_workers is not None
                     else max(default_num_workers(job.dataset) for job in todo)),
        fail_fast=fail_fast,
        download=download or spec.data.download,
        amp=amp,
        compile=compile_mode,
        checkpoint_every_min=checkpoint_every_min,
        tracking=spec.tracking.model_dump(mode="json") if spec.tracking.libraries() else None,
    )


def _finite(value: float, option: str) -> float:
    if not math.isfinite(value):  # FloatRange lets nan through (every comparison with it is False)
        raise click.BadParameter(f"{value} is not a number of minutes", param_hint=option)
    return value


SMOKE_DIR = Path(".smoke")  # run --smoke's own database and run dirs, never the real ones


def _launch(name: str, spec: Spec, jobs: Sequence[Job], todo: Sequence[Job], store: Store, ctx: Any,
            workers: int | None, wait: bool, *, smoke: bool = False) -> None:
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
    from mpvgbench.cli.live import LiveView

    if name == "debug":
        from mpvgbench.executors.inprocess import InProcessExecutor

        # No live view: its refresh thread would write into the job's redirected output.
        summary = InProcessExecutor(on_event=_echo_event).launch(todo, store, ctx)
    else:
        with LiveView(todo) as view:
            executor = LocalExecutor(workers=workers or exec_settings.workers, on_event=view.handle,
                                     processes_per_job=exec_settings.nproc_per_node)
            summary = executor.launch(todo, store, ctx)
    for message in summary.messages:
        click.echo(message)
    _print_summary(store, jobs)
    if smoke:
        _drop_smoke_checkpoints(store, jobs, ctx.runs_root)
    _exit_unless_finished(store, jobs)


EXIT_NOT_ALL_FINISHED = 1  # the same for every executor: a run that leaves any job unfinished


def _exit_unless_finished(store: Store, jobs: Sequence[Job]) -> None:
    """Exit 1 unless every job of the matrix is finished (failed, cancelled, still running)."""
    states = store.statuses([job.key for job in jobs])
    if any(states.get(job.key) != "finished" for job in jobs):
        sys.exit(EXIT_NOT_ALL_FINISHED)


def _drop_smoke_checkpoints(store: Store, jobs: Sequence[Job], runs_root: Path) -> None:
    """A finished smoke run keeps its metrics and result, not its weights (GBs for DeiT-B),
    unless other runs start from it (init_from): another spec's smoke (Table 4 after Table 3)
    adopts the finished parent and still needs its weights."""
    states = store.statuses([job.key for job in jobs])
    parents = {job.depends_on for job in jobs}
    if all(states.get(job.key) == "finished" for job in jobs):
        for job in jobs:
            if job.key not in parents:
                (runs_root / job.key / "checkpoint.pt").unlink(missing_ok=True)
        click.echo(f"smoke results: mpvgbench report --db {store.where}", err=True)


def _echo_event(event: str, job: Job, info: dict[str, Any]) -> None:
    if event in ("started", "finished", "failed", "retry", "skipped"):
        click.echo(f"[{event}] {job.key} {job.model} {job.method_label} {job.dataset} seed={job.seed}",
                   err=event != "finished")


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _local_gpu_name(device: str, *, local: bool) -> str | None:
    """The CUDA device local jobs run on (the cost estimate's GPU); None on Slurm or the CPU."""
    if not local or device not in ("auto", "cuda"):
        return None
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _print_matrix(jobs: Sequence[Job], db: str | None, spec: Spec, *, gpu_name: str | None) -> None:
    """The matrix, one row per job with its state and estimated cost, then the totals."""
    from mpvgbench.catalog import task_of
    from mpvgbench.cost import assumption_for, estimate, read_throughputs, throughput_path
    from mpvgbench.store_migrations import MissingDatabaseError

    states: dict[str, str] = {}
    try:  # a dry run never creates, upgrades or writes a database
        states = open_store(db, spec, must_exist=True).statuses([job.key for job in jobs])
    except MissingDatabaseError:
        pass  # every job is new
    costs = estimate(jobs, gpu_name, read_throughputs(throughput_path(), gpu_name))
    label = {"finished": "done", "pending": "new", None: "new"}
    from mpvgbench.matrix import sweep_text

    swept = list(spec.sweep)  # each swept recipe field is a column, like any axis
    rows = [(j.key, j.model, j.method_label, j.dataset, str(j.seed), *(sweep_text(j, f) for f in swept),
             label.get(states.get(j.key), states.get(j.key) or "new"),
             _gflop(c.flops_per_image),
             _hours(c.gpu_hours) + ("*" if c.measured else "")) for j, c in zip(jobs, costs)]
    header = ("key", "model", "method", "dataset", "seed", *swept, "state", "GFLOP", "GPU-h")
    state_at = header.index("state")
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    right = {"GFLOP", "GPU-h"}
    # one space between columns: a long method label still fits 80 columns with the cost
    lines = [" ".join(c.rjust(w) if h in right else c.ljust(w) for c, w, h in zip(r, widths, header)).rstrip()
             for r in [header, *rows]]
    counts = {s: sum(r[state_at] == s for r in rows) for s in sorted({r[state_at] for r in rows})}
    lines.append(f"{len(rows)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    todo = [c for r, c in zip(rows, costs) if r[state_at] != "done"]
    unknown = sum(c.gpu_hours is None for c in todo)
    total = sum(c.gpu_hours or 0.0 for c in todo)
    lines.append(f"estimated cost of the {len(todo)} not done: {_hours(total)} GPU-hours (training"
                 + (f"; {unknown} unknown: -" if unknown else "") + "; GFLOP per image)")
    if any(task_of(job.dataset).name == "detection" for job in jobs):
        lines.append("  detection: ViT-Adapter + FPN only (RPN, RoI heads not counted)")
    if any(c.measured for c in costs):
        lines.append(f"  *: measured img/s on {gpu_name} from {throughput_path()}")
    if not all(c.measured for c in costs):
        lines.append(f"  {'others' if any(c.measured for c in costs) else 'from'}: "
                     f"{assumption_for(gpu_name).describe()}")
    click.echo("\n".join(lines))


def _gflop(flops: float) -> str:
    return f"{flops / 1e9:,.0f}" if flops >= 1e11 else f"{flops / 1e9:.3g}"


def _hours(hours: float | None) -> str:
    if hours is None:
        return "-"
    return f"{hours:,.0f}" if hours >= 100 else f"{hours:.2g}" if hours >= 0.01 else "<0.01"


def _print_summary(store: Store, jobs: Sequence[Job]) -> None:
    states = store.statuses([job.key for job in jobs])
    counts: dict[str, int] = {}
    for job in jobs:
        counts[states.get(job.key, "pending")] = counts.get(states.get(job.key, "pending"), 0) + 1
    click.echo("done: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + "  (mpvgbench report)")


