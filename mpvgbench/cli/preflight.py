"""Checks `mpvgbench run` makes before anything is stored or started: every input that would
fail every job the same way is one line and exit 2 here, not a worker's failure later
(docs/reliability.md); and the adoption of run directories that already hold a result."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mpvgbench.catalog import DATASET_TABLE
from mpvgbench.cli.common import UserError
from mpvgbench.spec import display_path

if TYPE_CHECKING:
    from mpvgbench.matrix import Job
    from mpvgbench.spec import Spec
    from mpvgbench.store import Store


def check_init_from(store: Store, jobs: Sequence[Job]) -> None:
    """A fine-tune whose ``init_from`` key is neither in this matrix nor in the database would
    wait forever: one line instead, before anything is stored."""
    keys = {job.key for job in jobs}
    wanted = sorted({job.depends_on for job in jobs if job.depends_on and job.depends_on not in keys})
    if not wanted:
        return
    missing = sorted(set(wanted) - set(store.statuses(wanted)))
    if missing:
        raise UserError(f"init_from run {missing[0]} is not in the database {store.where} nor in this "
                        "spec; train it first (its spec, same --db) or fix init_from")


def adopt_finished_run_dirs(store: Store, jobs: Sequence[Job], runs_root: Path) -> None:
    """Record runs whose directory already holds a valid result.json (a new database next to an
    old runs dir; a coordinator killed between the result and its recording): read the files,
    start no worker, train nothing twice."""
    from mpvgbench.store_schema import result_problem
    from mpvgbench.rundir import RunDirError, read_result

    for job in jobs:
        run_dir = runs_root / job.key
        try:
            if result_problem(read_result(run_dir)) is None:
                store.ingest_run_dir(run_dir)
        except (RunDirError, OSError):
            continue  # damaged: the executor sets it aside and trains the job


def revive_parents(store: Store, jobs: Sequence[Job], runs_root: Path) -> list[str]:
    """A child about to train whose init_from run is finished but has no checkpoint.pt left
    (deleted, or a smoke run that kept none) gets its parent retrained first, instead of failing
    with "train that run first": the parent is a job of the same matrix, so this is its rerun."""
    by_key = {job.key: job for job in jobs}
    states = store.statuses(list(by_key))
    parents = {job.depends_on for job in jobs
               if job.depends_on in by_key and states.get(job.key) in ("pending", "running")}
    gone = sorted(key for key in parents if states.get(key) == "finished"
                  and not (runs_root / key / "checkpoint.pt").is_file())
    for key in gone:
        clear_training_state(runs_root / key)
    if gone:
        store.reset(gone)
        click.echo(f"{len(gone)} finished init_from run(s) have no checkpoint.pt left: retrained "
                   "first for the runs that start from them", err=True)
    return gone


def warn_about_slurm_timing(spec: Spec, jobs: Sequence[Job]) -> None:
    """Warn when a Slurm job's time limit leaves almost nothing to train in: Slurm sends the
    requeue signal up to 60 s before the time asked (--signal), and a start costs a minute or
    two (imports, data, the checkpoint), so a few-minute limit requeues without progress."""
    from mpvgbench.slurm_settings import MIN_USEFUL_MINUTES, SlurmSettings

    settings = spec.slurm or SlurmSettings()
    left = settings.useful_minutes()
    if left < MIN_USEFUL_MINUTES:
        click.echo(f"warning: slurm.time {settings.timeout_min} min leaves {max(left, 0):.1f} min "
                   f"to train after start-up and the requeue signal (sent up to "
                   f"{settings.signal_delay_s + 60} s early); each requeue may make no progress; raise "
                   "slurm.time (docs/slurm.md, \"Time limits\")", err=True)


def preflight_device(device: str, *, local: bool, smoke: bool) -> str:
    """Fail before any job starts when every job would fail the same way: CUDA asked, none here.
    A smoke run checks the pipeline, not the hardware: it falls back to the CPU and says so."""
    if device != "cuda" or not local:
        return device
    import torch

    if torch.cuda.is_available():
        return device
    if smoke:
        click.echo("smoke: no CUDA device here, running on the CPU (a smoke run checks the "
                   "pipeline, not the hardware)", err=True)
        return "cpu"
    raise UserError("device 'cuda' requested (executor.device or --device) but torch sees no CUDA "
                    "device here; use --device cpu, or --smoke to check the pipeline on CPU")


def check_writable_dir(path: Path, what: str, fix: str) -> None:
    """One line, before anything is stored, when ``path`` cannot hold run directories."""
    import os

    existing = path
    try:
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent  # nothing is created before the inputs are known to be good
    except OSError as exc:  # ENAMETOOLONG and the like
        raise UserError(f"{what} {display_path(path)} cannot hold run directories ({exc.strerror}); {fix}") from None
    problem = None
    if not existing.is_dir():
        problem = "not a directory" if existing == path else f"{existing} is not a directory"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = "not writable" if existing == path else f"{existing} is not writable"
    if problem:
        raise UserError(f"{what} {display_path(path)} cannot hold run directories ({problem}); {fix}")


ROOT_FREE_DATASETS = frozenset(d.name for d in DATASET_TABLE.values() if not d.needs_root)  # bundled or generated


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
        elif dataset == "coco":
            for part in ("train2017", "val2017", "annotations/instances_train2017.json",
                         "annotations/instances_val2017.json"):
                if not (path / part).exists():
                    raise DataError(f"{spec.source}: data.roots.coco: {root!r} has no {part}; point "
                                    "it at the folder holding train2017/, val2017/ and annotations/")
        elif dataset == "ade20k":
            base = path if path.name == "ADEChallengeData2016" else path / "ADEChallengeData2016"
            for part in ("images/training", "images/validation", "annotations/training",
                         "annotations/validation"):
                if not (base / part).is_dir():
                    raise DataError(f"{spec.source}: data.roots.ade20k: {root!r} has no "
                                    f"ADEChallengeData2016/{part}; point it at ADEChallengeData2016/ "
                                    "or the folder holding it")
        else:
            for split in ("train", "val"):
                if not (path / split).is_dir():
                    raise DataError(
                        f"{spec.source}: data.roots.{dataset}: {root!r} has no {split}/ folder; "
                        f"expected {split}/<class>/<image> under it"
                    )


RUN_LOGS = ("stdout.log", "stderr.log")


def check_run_dirs(jobs: Sequence[Job], resumed: Sequence[Job], runs_root: Path) -> None:
    """A RunDirError (one line, exit 2) when a job's run directory is a link or a file, or a log
    is not a file; or when a job about to resume has a corrupted result.json or checkpoint.pt,
    instead of a worker failing on it (or --force deleting outside the runs root)."""
    import zipfile

    from mpvgbench.executors.witness import check_not_a_link
    from mpvgbench.rundir import RunDir, RunDirError, read_result

    for job in jobs:
        check_not_a_link(runs_root / job.key)
        for name in RUN_LOGS:
            log = runs_root / job.key / name
            if log.is_symlink() or (log.exists() and not log.is_file()):
                raise RunDirError(f"run dir {log.parent}: {name} is not a regular file; move it away "
                                  "(the run's output is appended to it)")
    for job in resumed:
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
    for leftover in run_dir.glob(".*.tmp"):  # a checkpoint being written when a run was killed
        leftover.unlink(missing_ok=True)
