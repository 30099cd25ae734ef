"""What the Slurm executor submits: the worker's checkpointable job, plus a record the job keeps.

The coordinator sees a job only when someone asks ``squeue`` (``mpvgbench status``, ``run
--wait``). The job itself knows more and can say it without any poller: each start writes
``slurm_job.json`` into the run directory (task 0 only)::

    {"job_id": "12_3", "restarts": 2, "started_at": ..., "host": "node7",
     "cpus_per_task": "4", "threads": "4", "signalled_at": null}

``restarts`` is Slurm's ``SLURM_RESTART_COUNT`` (requeues by time limit, preemption or
``scontrol requeue``), so ``status`` counts attempts right even if nobody looked while the job
was requeued; ``signalled_at`` is when the time-limit/preemption warning (USR2) arrived.
Training, signals and requeueing stay the worker's (:class:`mpvgbench.worker.CheckpointableJob`).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import submitit

from mpvgbench.executors.slurm_queue import SLURM_JOB_JSON, job_record
from mpvgbench.worker import CheckpointableJob

__all__ = ["SLURM_JOB_JSON", "SlurmJob", "job_record", "slurm_job_id"]


def slurm_job_id() -> str:
    """This job's id as the executor stored it: ``ARRAY_TASK`` for array tasks."""
    array_id, task_id = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_id and task_id:
        return f"{array_id}_{task_id}"
    return os.environ.get("SLURM_JOB_ID", "")


def _write(run_dir: str | Path, **values: Any) -> None:
    if os.environ.get("SLURM_PROCID", "0") != "0":
        return  # one writer per run directory
    from mpvgbench.rundir import atomic_write_json

    record = job_record(run_dir) if "started_at" not in values else {}
    record.update(values)
    try:
        atomic_write_json(Path(run_dir) / SLURM_JOB_JSON, record)
    except OSError:
        pass  # bookkeeping only: never the reason a job fails


class SlurmJob(CheckpointableJob):
    """``CheckpointableJob`` that records each start and each warning signal of its Slurm job."""

    def __call__(self, run_dir: str) -> dict[str, Any]:
        _write(run_dir, job_id=slurm_job_id(), restarts=int(os.environ.get("SLURM_RESTART_COUNT") or 0),
               started_at=time.time(), host=socket.gethostname(),
               cpus_per_task=os.environ.get("SLURM_CPUS_PER_TASK"),
               threads=os.environ.get("OMP_NUM_THREADS"), signalled_at=None)
        return super().__call__(run_dir)

    def checkpoint(self, run_dir: str) -> submitit.helpers.DelayedSubmission:  # type: ignore[override]
        _write(run_dir, signalled_at=time.time())
        delayed = super().checkpoint(run_dir)
        if isinstance(delayed, submitit.helpers.DelayedSubmission) and type(delayed.function) is CheckpointableJob:
            delayed.function = SlurmJob()  # the requeued job keeps recording
        return delayed
