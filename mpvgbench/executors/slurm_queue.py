"""What the Slurm scheduler says about jobs, asked with ``squeue``/``scontrol`` only (never sacct).

Many clusters have no accounting database, so ``sacct`` cannot be relied on, and a job's final
state (TIMEOUT, CANCELLED, OUT_OF_MEMORY...) is visible in ``squeue -t all`` only for
MinJobAge (5 min by default) after it ends. The executor therefore records what it sees in the
run directory's ``slurm_state.json`` every time it looks (``mpvgbench status``, ``run --wait``)::

    {"job_id": "12_3", "state": "PENDING", "reason": "BeginTime", "restarts": 2,
     "seen_at": 1733100000.0, "final_state": null}

``final_state`` is set once a job is seen in a state it will not leave. ``restarts`` never goes
down (squeue forgets it with the job). :func:`scheduler_view` turns the record into the words
``mpvgbench status`` shows.
"""

from __future__ import annotations

import functools
import re
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

__all__ = [
    "ACTIVE_STATES", "FINAL_STATES", "QueueEntry", "SchedulerUnreachable", "job_record",
    "max_array_size", "read_state", "record_state", "scheduler_view", "squeue_jobs", "squeue_states",
]

SLURM_STATE_JSON = "slurm_state.json"
SLURM_JOB_JSON = "slurm_job.json"  # written by the job itself at each start (see .slurm_job)
DEFAULT_MAX_ARRAY_SIZE = 1000
SCHEDULER_TIMEOUT_S = 20.0
# squeue states of a job that may still write its run directory (incl. requeued ones)
ACTIVE_STATES = frozenset({
    "PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
    "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "SPECIAL_EXIT",
})
FINAL_STATES = frozenset({
    "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
    "BOOT_FAIL", "DEADLINE", "REVOKED",
})
# one field per column, "|" between them: reasons may hold spaces, job ids never hold "|"
_SQUEUE_FORMAT = "JobArrayID:|,State:|,Reason:|,RestartCnt:"


class SchedulerUnreachable(RuntimeError):
    """squeue/scancel/scontrol did not answer (missing, timed out, controller down)."""


@dataclass(frozen=True)
class QueueEntry:
    """One line of ``squeue -t all``: array tasks as ``ARRAY_TASK``."""

    state: str
    reason: str = ""
    restarts: int = 0


def scheduler(args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Run a Slurm client command with a timeout; SchedulerUnreachable if it cannot answer."""
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL, check=False)
    except FileNotFoundError:
        raise SchedulerUnreachable(f"{args[0]} not found on PATH (not a Slurm node?)") from None
    except subprocess.TimeoutExpired:
        raise SchedulerUnreachable(f"{args[0]} did not answer within {timeout_s:.0f} s") from None


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _parse_line(line: str) -> Optional[tuple[str, QueueEntry]]:
    parts = [p.strip() for p in (line.split("|") if "|" in line else line.split())]
    if len(parts) < 2 or not parts[0]:
        return None
    reason = parts[2] if len(parts) > 2 and parts[2] not in ("None", "(null)") else ""
    restarts = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 0
    return parts[0], QueueEntry(parts[1], reason, restarts)


def squeue_jobs(job_ids: Iterable[str], timeout_s: float = SCHEDULER_TIMEOUT_S) -> dict[str, QueueEntry]:
    """``{job_id: QueueEntry}`` for the ids squeue still knows. Raises SchedulerUnreachable.

    Ended jobs stay visible for MinJobAge with their final state; purged ones are absent.
    """
    ids = sorted({str(i) for i in job_ids if i})
    entries: dict[str, QueueEntry] = {}
    for start in range(0, len(ids), 200):
        chunk = ids[start:start + 200]
        proc = scheduler(["squeue", "-h", "-r", "-t", "all", "-O", _SQUEUE_FORMAT, "-j", ",".join(chunk)],
                         timeout_s)
        if proc.returncode != 0:
            if "invalid job id" in proc.stderr.lower():
                continue  # every id of the chunk is purged already
            raise SchedulerUnreachable(f"squeue failed: {first_line(proc.stderr) or proc.returncode}")
        for line in proc.stdout.splitlines():
            parsed = _parse_line(line)
            if parsed is not None:
                entries[parsed[0]] = parsed[1]
    return entries


def squeue_states(job_ids: Iterable[str], timeout_s: float = SCHEDULER_TIMEOUT_S) -> dict[str, str]:
    """``{job_id: state}`` for the ids squeue still knows. Raises SchedulerUnreachable."""
    return {job_id: entry.state for job_id, entry in squeue_jobs(job_ids, timeout_s).items()}


@functools.lru_cache(maxsize=1)
def max_array_size(timeout_s: float = 10.0) -> int:
    """Tasks one job array may hold: the cluster's MaxArraySize (cached); 1000 if unknown."""
    try:
        proc = scheduler(["scontrol", "show", "config"], timeout_s)
    except SchedulerUnreachable:
        return DEFAULT_MAX_ARRAY_SIZE
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", proc.stdout, re.MULTILINE)
    return int(m.group(1)) if m and int(m.group(1)) > 0 else DEFAULT_MAX_ARRAY_SIZE


# ----------------------------------------------------------------- the record in the run dir


def read_state(run_dir: Optional[str | Path]) -> dict[str, Any]:
    """The run directory's slurm_state.json; {} when absent or unreadable."""
    if not run_dir:
        return {}
    from mpvgbench.rundir import RunDirError, read_json

    try:
        return read_json(Path(run_dir) / SLURM_STATE_JSON, missing_ok=True) or {}
    except (RunDirError, ValueError):
        return {}


def job_record(run_dir: Optional[str | Path]) -> dict[str, Any]:
    """The job's own slurm_job.json (see :mod:`.slurm_job`); {} when absent or unreadable."""
    if not run_dir:
        return {}
    from mpvgbench.rundir import RunDirError, read_json

    try:
        return read_json(Path(run_dir) / SLURM_JOB_JSON, missing_ok=True) or {}
    except (RunDirError, ValueError, OSError):
        return {}


def record_state(run_dir: Optional[str | Path], job_id: str, entry: Optional[QueueEntry]) -> dict[str, Any]:
    """Fold what squeue says now (None: the job left the queue) into slurm_state.json; returns
    the record. Written only when something changed (a status call on 1000 runs stays cheap)."""
    old = read_state(run_dir)
    if old.get("job_id") != job_id:
        old = {}  # an earlier submission of the same run: start over
    record = {"job_id": job_id, "state": old.get("state"), "reason": old.get("reason", ""),
              "restarts": int(old.get("restarts") or 0), "seen_at": old.get("seen_at"),
              "final_state": old.get("final_state")}
    if entry is not None:
        record.update(state=entry.state, reason=entry.reason, seen_at=time.time(),
                      restarts=max(record["restarts"], entry.restarts))
        if entry.state in FINAL_STATES:
            record["final_state"] = entry.state
        elif entry.state in ACTIVE_STATES:
            record["final_state"] = None  # requeued after an end we saw (e.g. PREEMPTED)
    elif record["state"] in ACTIVE_STATES or record["state"] is None:
        record["state"] = "GONE"  # purged from squeue before we saw how it ended
    if run_dir and {k: v for k, v in record.items() if k != "seen_at"} != \
            {k: old.get(k) for k in record if k != "seen_at"}:
        from mpvgbench.rundir import atomic_write_json

        try:
            atomic_write_json(Path(run_dir) / SLURM_STATE_JSON, record)
        except OSError:
            pass  # a read-only or vanished run dir: the view is lost, the run is not
    return record


def scheduler_view(record: dict[str, Any]) -> tuple[str, int]:
    """``(words, restarts)`` for a running run's record: ``pending (Priority)``, ``requeued
    (BeginTime)``, ``running``, ``suspended``...; ``("", 0)`` without a record."""
    state = str(record.get("state") or "")
    restarts = int(record.get("restarts") or 0)
    reason = str(record.get("reason") or "")
    if not state:
        return "", restarts
    if state == "GONE":
        return "left the queue", restarts
    if state == "REQUEUE_HOLD" or reason.startswith("JobHeld"):
        # `scontrol hold` (or a requeue held by an admin): pending forever until released
        return f"held: `scontrol release {record.get('job_id') or 'JOBID'}`", restarts
    if state in ("PENDING", "REQUEUED", "REQUEUE_FED"):
        word = "requeued" if restarts or state != "PENDING" else "pending"
        return (f"{word} ({reason})" if reason else word), restarts
    if state in ("RUNNING", "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT"):
        return "running", restarts
    return state.lower().replace("_", " "), restarts
