"""Run jobs on Slurm through submitit: one job array per group of jobs with equal resources.

The coordinator (``mpvgbench run --executor slurm``) claims the jobs, writes their run
directories, submits ``SlurmJob()(run_dir)`` (the worker's CheckpointableJob plus a record of
each start, :mod:`.slurm_job`) as array tasks and
returns. Each task trains in its run directory; on a time limit or preemption submitit sends
USR2, the job requeues itself (at most ``max_requeues`` times for time limits) and resumes
from its last epoch checkpoint. ``reconcile`` (run by ``mpvgbench status``) folds finished run
directories into the store and asks ``squeue`` (never sacct alone: many clusters have no
accounting database) about the rest: a job gone from the queue without result.json or
error.json (scancel, node failure, time limit after the last requeue) is recorded as failed
with the tail of its submitit log. Every scheduler call has a timeout: an unreachable
controller leaves the runs as they are and says so.

Besides the architecture's run-directory files, the executor writes ``slurm.json`` into each
run directory at submission: ``{"job_id", "folder", "stdout": [...], "stderr": [...],
"submitted_at", "timeout_min", "max_requeues", "dependency", "mem", "job_name"}`` (one log pair
per task), and ``slurm_state.json`` whenever it asks squeue (see :mod:`.slurm_queue`).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from pydantic import ValidationError

from mpvgbench.errors import first_validation_error
from mpvgbench.executors.base import Executor, LaunchSummary, RunContext, new_owner_id, prepare_run_dir
from mpvgbench.executors.slurm_queue import (
    ACTIVE_STATES, SCHEDULER_TIMEOUT_S, SLURM_STATE_JSON, SchedulerUnreachable, first_line, max_array_size, record_state,
    scheduler, squeue_jobs, squeue_states,
)
from mpvgbench.executors.witness import is_locked
from mpvgbench.slurm_settings import SlurmSettings, parse_time_minutes

if TYPE_CHECKING:
    from mpvgbench.matrix import Job
    from mpvgbench.spec import Spec
    from mpvgbench.store import Store
    from mpvgbench.store_schema import RunRow

__all__ = [
    "ACTIVE_STATES", "SlurmError", "SlurmExecutor", "SlurmSettings", "SchedulerUnreachable",
    "cancel_jobs", "log_paths", "max_array_size", "parse_time_minutes", "reconcile", "squeue_states",
]

SLURM_JSON = "slurm.json"

from mpvgbench.errors import SlurmError  # noqa: E402 - re-exported


# --------------------------------------------------------------------------- run-dir helpers


def _read_slurm_json(run_dir: Optional[str | Path]) -> dict[str, Any]:
    if not run_dir:
        return {}
    from mpvgbench.rundir import RunDirError, read_json

    try:
        return read_json(Path(run_dir) / SLURM_JSON, missing_ok=True) or {}
    except RunDirError:
        return {}


def log_paths(row_or_run_dir: RunRow | str | Path) -> list[Path]:
    """submitit's stdout/stderr files of a run (``%j_%t_log.out/.err``, one pair per task)."""
    run_dir = row_or_run_dir if isinstance(row_or_run_dir, (str, Path)) else row_or_run_dir.run_dir
    info = _read_slurm_json(run_dir)
    out: list[Path] = []
    for stdout, stderr in zip(info.get("stdout", []), info.get("stderr", [])):
        out += [Path(stdout), Path(stderr)]
    return out


def _tail(paths: Sequence[Path], lines: int = 30) -> str:
    chunks = []
    for path in paths:
        try:
            text = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            continue
        if text:
            chunks.append(f"==> {path} <==\n" + "\n".join(text))
    return "\n".join(chunks)


def _exists(run_dir: Optional[str], *names: str) -> bool:
    return bool(run_dir) and any((Path(str(run_dir)) / name).exists() for name in names)


# ------------------------------------------------------------------------------ reconcile


# final Slurm states without result.json/error.json -> the failure kind stored
_KIND_OF_STATE = {"TIMEOUT": "timeout", "DEADLINE": "timeout", "OUT_OF_MEMORY": "oom"}


def reconcile(store: Store, runs: Iterable[RunRow], *, timeout_s: float = SCHEDULER_TIMEOUT_S) -> list[str]:
    """Bring running Slurm runs up to date; returns lines to show the user (possibly none).

    Every job's squeue state is recorded in its run dir (slurm_state.json) before anything else:
    that is what keeps TIMEOUT/OUT_OF_MEMORY/CANCELLED once the job leaves the queue. A run dir
    with result.json/error.json is ingested once its Slurm job has left the active queue (a
    requeued job may hold a stale error.json until it restarts). A job gone from the queue
    without either is failed with its log tail. Nothing here calls sacct.
    """
    rows = [r for r in runs if r.status == "running"]
    if not rows:
        return []
    try:
        entries = squeue_jobs([r.external_id for r in rows if r.external_id], timeout_s)
        states: Optional[dict[str, str]] = {job_id: e.state for job_id, e in entries.items()}
        problem = ""
    except SchedulerUnreachable as exc:
        entries, states, problem = {}, None, str(exc)
    alive: list[RunRow] = []
    failed = 0
    for row in rows:
        record: dict[str, Any] = {}
        if states is not None and row.external_id:
            record = record_state(row.run_dir, row.external_id, entries.get(row.external_id))
        state = states.get(row.external_id or "") if states is not None else None
        if _exists(row.run_dir, "result.json"):  # finished, whatever the queue says
            store.ingest_run_dir(str(row.run_dir))
            continue
        if states is None or not row.external_id:
            continue  # unreachable scheduler, or claimed but not submitted yet: leave as is
        if state in ACTIVE_STATES:
            alive.append(row)  # error.json of a requeued job is stale until it restarts
            continue
        if _exists(row.run_dir, "error.json") and store.ingest_run_dir(str(row.run_dir)) in ("finished", "failed"):
            continue
        final = state or record.get("final_state")  # seen by an earlier status call
        info = _read_slurm_json(row.run_dir)
        how = f"ended {final}" if final else "left the queue"
        kind = _KIND_OF_STATE.get(final or "", "lost")
        error = f"Slurm job {row.external_id} {how} without writing result.json or error.json"
        logs = [Path(p) for p in info.get("stdout", []) + info.get("stderr", [])]
        if info.get("dependency") and not any(p.exists() for p in logs):
            error = (f"Slurm job {row.external_id} {how} before it started: the run it starts from "
                     f"(init_from, Slurm job {info['dependency']}) did not finish")
        if kind == "timeout":
            error += f" (time limit {info.get('timeout_min', '?')} min, requeued at most {info.get('max_requeues', '?')} times)"
        elif kind == "oom":
            error += f" (over its memory: raise slurm.mem or mem_per_gpu, now {info.get('mem') or 'the default'})"
        tail = _tail([Path(p) for p in info.get("stderr", [])[:1] + info.get("stdout", [])[:1]], lines=20)
        store.mark_failed(row.key, row.owner, error=error, traceback_tail=tail, kind=kind)
        failed += 1
    for owner in {r.owner for r in alive if r.owner}:
        store.heartbeat(owner, [r.key for r in alive if r.owner == owner])
    messages = []
    if failed:
        messages.append(f"{failed} Slurm job(s) left the queue without a result: marked failed")
    if states is None:
        messages.append(f"Slurm scheduler unreachable ({problem}): {len(rows)} run(s) left as running")
    return messages


def cancel_jobs(runs: Iterable[RunRow], *, timeout_s: float = SCHEDULER_TIMEOUT_S) -> list[str]:
    """scancel the runs' Slurm jobs; returns the ids cancelled. Raises SlurmError if scancel fails."""
    ids = sorted({r.external_id for r in runs if r.external_id})
    for start in range(0, len(ids), 200):
        try:
            proc = scheduler(["scancel", *ids[start:start + 200]], timeout_s)
        except SchedulerUnreachable as exc:
            raise SlurmError(f"could not cancel Slurm jobs: {exc}") from None
        if proc.returncode != 0 and "invalid job id" not in proc.stderr.lower():
            raise SlurmError(f"scancel failed: {first_line(proc.stderr) or proc.returncode}")
    return ids


# ------------------------------------------------------------------------------- executor


def _parent(job: Job) -> Optional[str]:
    """The key of the run whose weights ``job`` starts from (matrix.Job.depends_on)."""
    return getattr(job, "depends_on", None)


class SlurmExecutor(Executor):
    """Submits job arrays with submitit; returns once they are queued."""

    name: ClassVar[str] = "slurm"

    def __init__(self, settings: Optional[SlurmSettings] = None,
                 settings_for: Optional[Callable[[Job], SlurmSettings]] = None) -> None:
        self.settings = settings or SlurmSettings()
        self.settings_for = settings_for or (lambda job: self.settings)

    @classmethod
    def from_spec(cls, spec: Spec) -> SlurmExecutor:
        """The spec's validated `slurm:` section, with each model's and dataset's `slurm:`
        overrides for their jobs (model over dataset over spec); `executor.workers` caps the
        array if it is unset; the job name is the spec's name unless set."""
        settings = spec.slurm or SlurmSettings()
        if "array_parallelism" not in settings.model_fields_set and "workers" in spec.executor.model_fields_set:
            settings = settings.model_copy(update={"array_parallelism": spec.executor.workers})
        if settings.job_name is None:
            settings = settings.model_copy(update={"job_name": spec.name})
        base = settings

        @functools.lru_cache(maxsize=None)
        def for_cell(model: str, dataset: str) -> SlurmSettings:
            by_dataset = spec.dataset_overrides.get(dataset)
            by_model = spec.model_overrides.get(model)
            try:
                return base.merged(by_dataset.slurm if by_dataset else None).merged(
                    by_model.slurm if by_model else None)
            except ValidationError as exc:
                raise SlurmError(first_validation_error(
                    exc, prefix=f"{spec.source}: slurm for {model} on {dataset}", model=SlurmSettings)) from None

        return cls(base, lambda job: for_cell(job.model, job.dataset))

    def options(self) -> dict[str, Any]:
        return self.settings.model_dump(exclude_defaults=True)

    # ---------------------------------------------------------------------------- launch

    def launch(self, jobs: Sequence[Job], store: Store, ctx: RunContext) -> LaunchSummary:
        summary = LaunchSummary()
        owner = new_owner_id()
        rows = {r.key: r for r in store.runs(keys=[j.key for j in jobs])}
        queued = {r.key: r.external_id for r in rows.values()
                  if r.status == "running" and r.executor == self.name and r.external_id}
        try:
            states = squeue_states(queued.values()) if queued else {}
        except SchedulerUnreachable as exc:
            raise SlurmError(f"cannot reach the Slurm controller ({exc}); nothing submitted") from None
        claimed: list[Job] = []
        for job in jobs:
            run_dir = ctx.run_dir(job.key)
            if (run_dir / "result.json").exists() and store.ingest_run_dir(run_dir) == "finished":
                summary.finished.append(job.key)
                continue
            if states.get(queued.get(job.key) or "") in ACTIVE_STATES or is_locked(run_dir):
                summary.skipped.append(job.key)  # queued already, or a local worker trains it
                continue
            if not store.claim(job.key, owner, stale_after_s=ctx.stale_after_s, executor=self.name,
                               run_dir=str(run_dir)):
                summary.skipped.append(job.key)
                continue
            claimed.append(job)
        if summary.skipped:
            summary.messages.append(f"{len(summary.skipped)} job(s) already queued or claimed elsewhere: not submitted")
        # a job that starts from another run's weights (init_from) waits for that run: it is
        # submitted after it with --dependency=afterok (and is cancelled if that run fails)
        job_ids = {key: ext for key, ext in queued.items() if states.get(ext) in ACTIVE_STATES}
        claimed_keys = {job.key for job in claimed}
        remaining = claimed
        try:
            while remaining:
                ready = [j for j in remaining if not (_parent(j) in claimed_keys and _parent(j) not in job_ids)]
                ready = ready or remaining  # a cycle cannot come out of matrix.expand; never loop forever
                groups: dict[tuple[str, str], tuple[SlurmSettings, str, list[Job]]] = {}
                for job in ready:
                    settings = self.settings_for(job)
                    parent, dep = _parent(job), ""
                    if parent and parent in job_ids and not (ctx.run_dir(parent) / "result.json").exists():
                        dep = job_ids[parent]
                    groups.setdefault((settings.resources_key(), dep), (settings, dep, []))[2].append(job)
                for settings, dep, group in groups.values():
                    size = max_array_size()
                    for start in range(0, len(group), size):
                        self._submit(group[start:start + size], settings, dep, store, ctx, summary)
                job_ids.update(summary.external_ids)
                done = {j.key for j in ready}
                remaining = [j for j in remaining if j.key not in done]
        except BaseException:
            for job in claimed:  # not submitted: hand the claims back
                if job.key not in summary.external_ids:
                    store.release(job.key, owner)
            raise
        if summary.launched:
            ids = sorted({i.split("_")[0] for i in summary.external_ids.values()}, key=int)
            summary.messages.append(
                f"submitted {len(summary.launched)} job(s) to Slurm as job(s) {', '.join(ids)}; "
                "follow with `mpvgbench status SPEC`, read logs with `mpvgbench logs KEY`, "
                "stop with `mpvgbench cancel SPEC|KEY`")
        return summary

    def _submit(self, chunk: Sequence[Job], settings: SlurmSettings, dependency: str, store: Store,
                ctx: RunContext, summary: LaunchSummary) -> None:
        import submitit

        from mpvgbench.executors.slurm_job import SLURM_JOB_JSON, SlurmJob

        run_dirs = []
        for job in chunk:
            run_dir = prepare_run_dir(job, ctx)
            for stale in (SLURM_JSON, SLURM_STATE_JSON, SLURM_JOB_JSON):  # an earlier attempt's: this one decides anew
                if (run_dir / stale).exists():
                    os.replace(run_dir / stale, run_dir / f"{stale}.prev")
            run_dirs.append(run_dir)
        stamp = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        folder = settings.base_folder(ctx.runs_root) / stamp
        try:
            max_requeues = max(settings.requeues_for(job.config.recipe.epochs) for job in chunk)
            executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm",
                                             slurm_max_num_timeout=max_requeues)
            params = settings.submitit_parameters()
            if dependency:
                params["slurm_dependency"] = f"afterok:{dependency}"
                params["slurm_additional_parameters"] = {
                    **params.get("slurm_additional_parameters", {}), "kill_on_invalid_dep": "yes"}
            executor.update_parameters(**params)
            handles = executor.map_array(SlurmJob(), [str(d) for d in run_dirs])
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            text = str(exc)
            if "srun" in text and "Could not detect" in text:
                text = "srun/sbatch not found: run on a Slurm login node or use --executor local"
            raise SlurmError(f"Slurm submission failed: {first_line(text)}") from None
        from submitit.core.utils import JobPaths

        ntasks = settings.nodes * settings.tasks_per_node
        for job, run_dir, handle in zip(chunk, run_dirs, handles):
            job_id = str(handle.job_id)
            paths = [JobPaths(folder / "%j", job_id=job_id, task_id=t) for t in range(ntasks)]
            from mpvgbench.rundir import atomic_write_json

            atomic_write_json(run_dir / SLURM_JSON, {
                "job_id": job_id, "folder": str(paths[0].folder), "submitted_at": time.time(),
                "stdout": [str(p.stdout) for p in paths], "stderr": [str(p.stderr) for p in paths],
                "timeout_min": settings.timeout_min, "max_requeues": max_requeues,
                "dependency": dependency or None, "mem": settings.mem or settings.mem_per_gpu,
                "job_name": settings.job_name,
            })
            store.set_external_id(job.key, job_id, executor=self.name)
            summary.launched.append(job.key)
            summary.external_ids[job.key] = job_id

    # ------------------------------------------------------------------------ follow-up

    def reconcile(self, store: Store, runs: Iterable[RunRow]) -> list[str]:
        return reconcile(store, runs)

    def logs(self, key: str, store: Store) -> list[Path]:
        return [p for row in store.runs(keys=[key]) for p in log_paths(row)]

    def cancel(self, keys: Sequence[str], store: Store) -> list[str]:
        """scancel the runs' jobs and store them as cancelled; returns the Slurm ids."""
        rows = [r for r in store.runs(keys=keys) if r.status in ("pending", "running")]
        ids = cancel_jobs([r for r in rows if r.executor == self.name])
        store.mark_cancelled([r.key for r in rows])
        return ids

    def follow(self, store: Store, keys: Sequence[str], ctx: Optional[RunContext] = None, *,
               poll_s: float = 5.0, timeout_s: Optional[float] = None,
               echo: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> dict[str, int]:
        """Reconcile every ``poll_s`` until none of ``keys`` is running (or ``timeout_s``);
        returns the final status counts."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last = ""
        while True:
            rows = store.runs(keys=keys)
            for message in reconcile(store, [r for r in rows if r.status == "running"]):
                echo(message)
            counts: dict[str, int] = {}
            for row in store.runs(keys=keys):
                counts[row.status] = counts.get(row.status, 0) + 1
            line = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            if line != last:
                echo(f"slurm: {line}")
                last = line
            if not counts.get("running"):
                return counts
            if deadline is not None and time.monotonic() > deadline:
                return counts
            time.sleep(poll_s)
