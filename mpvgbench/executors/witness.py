"""The run directory as the second witness: who trains a run, asked of the run directory itself.

The database says who holds a run, but a database can be lost (recreated empty, pointed at by
another URL) or be one of two databases on one runs dir. The run directory outlives both, so
before anything trains a cell, two facts are read from it:

- **its lock** (``.lock``, an ``flock``): held by the local worker that trains it, for as long as
  that worker (or anything it forked) lives. A coordinator takes it before it writes a single file
  of the run and hands it to the worker (``pass_fds``): two coordinators, on one database or two,
  never train one directory at once, and a crashed coordinator's lock ends with its worker. The
  kernel drops it with the last process, so it is never stale (no pid files to trust).
- **its Slurm job** (``slurm.json``): a job id the scheduler still lists as pending, held,
  running or requeued is a live job. It is adopted into the database as running (never
  resubmitted, never trained locally meanwhile).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Optional

from mpvgbench.errors import RunDirError, SlurmError
from mpvgbench.executors.base import process_start_time

if TYPE_CHECKING:
    from mpvgbench.matrix import Job
    from mpvgbench.store import Store

LOCK_FILE = ".lock"
SLURM_JSON = "slurm.json"


# ------------------------------------------------------------------------------------- lock


def try_lock(run_dir: Path) -> Optional[IO[bytes]]:
    """The run directory's lock, held by the returned file (close it to release), or None when
    another process holds it. Creates the directory; never follows a link (RunDirError)."""
    check_not_a_link(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # /proc, a read-only mount, a full disk: the runs dir cannot hold runs
        raise RunDirError(f"cannot create run dir {run_dir} ({exc.strerror}); pass --runs-dir DIR on a "
                          "writable file system") from None
    check_not_a_link(run_dir)  # created by someone else in between
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise RunDirError(f"run dir {run_dir}: cannot open its lock file {LOCK_FILE} ({exc.strerror}); "
                          "remove whatever is in its place") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return os.fdopen(fd, "rb", buffering=0)


def is_locked(run_dir: Path) -> bool:
    """True while some process (a worker, an in-process coordinator) holds the run's lock."""
    if not (run_dir / LOCK_FILE).is_file() or run_dir.is_symlink():
        return False
    handle = try_lock(run_dir)
    if handle is None:
        return True
    handle.close()
    return False


def check_not_a_link(run_dir: Path) -> None:
    """A run directory that is a symbolic link (or a file) is refused: following it would let
    --force delete, and a worker write, outside the runs root."""
    if run_dir.is_symlink():
        raise RunDirError(f"run dir {run_dir} is a symbolic link; mpvgbench never follows links "
                          "inside the runs dir: remove the link (or point --runs-dir at the real folder)")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run dir {run_dir} is a file, not a directory; move it away")


# ------------------------------------------------------------------------- processes

def owner_is_alive(owner: str) -> bool:
    """False only when ``owner`` (host:pid:nonce) is a coordinator on this host whose pid is gone."""
    host, _, rest = owner.partition(":")
    pid_text, _, nonce = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return True  # another machine's coordinator: only its heartbeat can tell
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = nonce.partition("@")[2]
    if started.isdigit() and int(started) and process_start_time(int(pid_text)) not in (None, int(started)):
        return False  # the pid was reused by a process that started later
    # a killed process its parent has not reaped yet is a zombie: dead all the same
    return process_state(int(pid_text)) != "Z"


WORKER_FILE = "worker.json"  # {"host", "pid", "start"} of the run's current worker process


def worker_is_training(run_dir: Path, within_s: float) -> bool:
    """True when the run's worker still trains: a claim whose coordinator went quiet (stopped,
    hung) is not taken over while its worker runs. The run directory's lock answers for workers
    on this machine (and on a shared file system with working locks); a worker elsewhere, by
    having reported progress within ``within_s`` seconds. A worker.json naming a live pid proves
    nothing (the pid may be reused by any process): it is only a record for people."""
    if is_locked(run_dir):
        return True
    try:
        record = json.loads((run_dir / WORKER_FILE).read_text())
        if isinstance(record, dict) and record.get("host") == socket.gethostname():
            return False  # this host's worker would hold the lock
    except (OSError, ValueError):
        pass
    try:
        return time.time() - (run_dir / "progress.json").stat().st_mtime < within_s
    except OSError:
        return False


def process_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat (``Z``: a zombie), None when it cannot be read."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


def _running(pid: int) -> bool:
    """The process exists and is no zombie (a killed worker nobody reaped yet is dead)."""
    return process_state(pid) not in (None, "Z")


def record_worker(run_dir: Path, pid: int) -> None:
    """Who trains this run now, for :func:`worker_is_training`."""
    from mpvgbench.rundir import atomic_write_json

    atomic_write_json(run_dir / WORKER_FILE, {"host": socket.gethostname(), "pid": pid,
                                              "start": process_start_time(pid)})


# ------------------------------------------------------------------------------- Slurm job


def named_slurm_job(run_dir: Path) -> Optional[str]:
    """The Slurm job id the run directory's slurm.json names (None: none, or unreadable)."""
    from mpvgbench.rundir import read_json

    try:
        info = read_json(run_dir / SLURM_JSON, missing_ok=True) or {}
    except (RunDirError, OSError, ValueError):
        return None
    job_id = info.get("job_id") if isinstance(info, dict) else None
    return str(job_id) if isinstance(job_id, (str, int)) and str(job_id) else None


def live_slurm_jobs(jobs: Sequence[Job], runs_root: Path) -> dict[str, str]:
    """``{key: Slurm job id}`` for the jobs whose run directory names a job the scheduler still
    holds (pending, held, running, requeued). Without Slurm on this machine: {} (nothing could
    be live that this machine could see). A scheduler that does not answer: SlurmError, since
    nothing may start while it is unknown whether the job runs."""
    from mpvgbench.executors.slurm_queue import ACTIVE_STATES, SchedulerUnreachable, squeue_jobs

    named = {job.key: job_id for job in jobs if (job_id := named_slurm_job(runs_root / job.key))}
    if not named:
        return {}
    try:
        entries = squeue_jobs(named.values())
    except SchedulerUnreachable as exc:
        if "not found on PATH" in str(exc):
            return {}
        raise SlurmError(f"run directories name Slurm jobs but the scheduler does not answer ({exc}); "
                         "nothing started: rerun once squeue works") from None
    return {key: job_id for key, job_id in named.items()
            if (entry := entries.get(job_id)) is not None and entry.state in ACTIVE_STATES}


def adopt_live_slurm_jobs(store: Store, jobs: Sequence[Job], runs_root: Path) -> dict[str, str]:
    """Record as running on Slurm every job whose run directory names a live Slurm job and whose
    row does not say so (a lost or second database). Returns every live job, adopted or not."""
    from mpvgbench.executors.base import new_owner_id

    live = live_slurm_jobs(jobs, runs_root)
    if not live:
        return {}
    rows = {row.key: row for row in store.runs(keys=list(live))}
    owner = new_owner_id()
    for key, job_id in live.items():
        row = rows.get(key)
        if row is not None and row.status == "running" and row.external_id == job_id:
            continue  # the database knows already
        run_dir = runs_root / key
        if store.claim(key, owner, stale_after_s=0.0, executor="slurm", run_dir=str(run_dir)):
            store.set_external_id(key, job_id, executor="slurm")
            store.set_run_dir(key, str(run_dir), executor="slurm")
    return live

