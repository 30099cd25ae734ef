"""How `mpvgbench status` describes one run: state, attempts and epoch, for every executor.

The store knows pending/running/finished/failed/cancelled. A Slurm run adds what the scheduler
said when last asked (``slurm_state.json``, written by the executor's reconcile): pending and
requeued jobs are "running" in the store but not on the cluster, requeues are attempts too, and
the final Slurm state (TIMEOUT, OUT_OF_MEMORY, CANCELLED...) stays visible after the job has
left ``squeue``. The job's own ``slurm_job.json`` (written at each start) counts
requeues nobody saw in squeue. The epoch comes from the run directory's progress.json (the worker's heartbeat)
or, without it, from metrics.jsonl.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from mpvgbench.executors.slurm_queue import job_record, read_state, scheduler_view

if TYPE_CHECKING:
    from mpvgbench.store_schema import RunRow

__all__ = ["JobView", "epoch_progress", "job_view"]


@dataclass(frozen=True)
class JobView:
    state: str  # e.g. "running", "requeued (BeginTime)", "failed (TIMEOUT)", "cancelled"
    attempts: int  # claims of the store plus Slurm requeues
    epoch: str  # "3/10", or "" before the first epoch starts


def _total_epochs(row: RunRow) -> Optional[int]:
    config: Any = row.config or {}
    epochs = (config.get("recipe") or {}).get("epochs") if isinstance(config, dict) else None
    return int(epochs) if isinstance(epochs, int) else None


def epoch_progress(run_dir: Optional[str | Path], total: Optional[int]) -> str:
    """``"n/N"``: the epoch under way (progress.json) or the last one done (metrics.jsonl)."""
    if not run_dir:
        return ""
    from mpvgbench.rundir import read_json, read_jsonl

    path = Path(run_dir)
    try:
        progress = read_json(path / "progress.json", missing_ok=True) or {}
        epoch = progress.get("epoch")
        total = progress.get("epochs") or total
        if epoch is None:
            epoch = len(read_jsonl(path / "metrics.jsonl")) or None
    except (OSError, ValueError):  # a half-written or damaged file: show nothing rather than fail
        return ""
    if epoch is None:
        return ""
    return f"{epoch}/{total}" if total else str(epoch)


def job_view(row: RunRow) -> JobView:
    """State, attempts and epoch of one stored run, as `mpvgbench status` shows them."""
    state, attempts = row.status, int(row.attempts or 0)
    if row.executor == "slurm":
        record = read_state(row.run_dir)  # the current submission's (reset at each submission)
        seen, restarts = scheduler_view(record)
        started = job_record(row.run_dir)
        if started.get("job_id") == row.external_id:  # what the job said at its last start
            restarts = max(restarts, int(started.get("restarts") or 0))
        attempts += restarts
        final = record.get("final_state")
        if row.status == "running" and seen:
            state = seen
        elif row.status in ("failed", "cancelled") and final:
            state = f"{row.status} ({final})"
    epoch = epoch_progress(row.run_dir, _total_epochs(row)) if row.status != "pending" else ""
    return JobView(state, attempts, epoch)
