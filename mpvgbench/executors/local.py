"""Run jobs on this machine: one `python -m mpvgbench.worker RUN_DIR` subprocess per job.

Subprocesses rather than threads because a job must be killable at any moment without taking
the coordinator (and the database) with it, and because `CUDA_VISIBLE_DEVICES` pins a GPU per
process. Workers die with the coordinator (PR_SET_PDEATHSIG), so a killed `mpvgbench run`
never leaves an orphan training the same run directory as its successor: the worker sets that
up itself from MPVGBENCH_PARENT_PID (``worker.die_with_parent``), since a ``preexec_fn`` is
unsafe in a process with threads. Each job gets an equal share of this machine's CPUs in
MPVGBENCH_CPUS, from which the worker plans its threads (``mpvgbench.threads``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar, TextIO

from mpvgbench.errors import MpvgbenchError
from mpvgbench.executors.base import (Executor, LaunchSummary, RunContext, is_infra_failure, new_owner_id,
                                      prepare_run_dir, valid_result, write_attempt_header)
from mpvgbench.executors.witness import (WORKER_FILE, live_slurm_jobs, owner_is_alive, process_state,  # noqa: F401
                                         record_worker, try_lock, worker_is_training)
from mpvgbench.threads import CPUS_ENV, job_cpus

if TYPE_CHECKING:
    from mpvgbench.matrix import Job
    from mpvgbench.store import Store

HEARTBEAT_EVERY_S = 10.0
POLL_EVERY_S = 0.2
ELSEWHERE_POLL_S = 2.0  # how often jobs another coordinator runs are looked up


def visible_gpus() -> list[str]:
    """GPU ids this process may hand out, honouring an outer CUDA_VISIBLE_DEVICES."""
    outer = os.environ.get("CUDA_VISIBLE_DEVICES")
    if outer is not None:
        return [g for g in outer.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no CUDA runtime at all
        return []


def take_gpus(free: list[str], count: int, exactly: str | None = None) -> str | None:
    """Remove ``count`` GPU ids from ``free`` (or the ids of ``exactly``); their
    CUDA_VISIBLE_DEVICES value, or None when no GPUs are handed out."""
    if exactly is not None:
        for gpu in exactly.split(","):
            free.remove(gpu)
        return exactly
    if not free:
        return None
    assert len(free) >= count, (free, count)  # launch() starts no more jobs than GPUs allow
    taken, free[:] = free[:count], free[count:]
    return ",".join(taken)


def give_back_gpus(free: list[str], gpus: str | None) -> None:
    """A job that ended, however it ended (finished, failed, killed), frees its GPUs."""
    if gpus is not None:
        free.extend(gpus.split(","))


@dataclass
class RunningJob:
    job: Job
    run_dir: Path
    process: subprocess.Popen[bytes]
    gpu: str | None
    logs: list[TextIO] = field(default_factory=list)
    attempt: int = 1


JobEvent = Callable[[str, "Job", dict[str, Any]], None]  # (event, job, info) for the live view


class LocalExecutor(Executor):
    """Runs up to ``workers`` jobs at once; pins one GPU per job when GPUs exist."""

    name: ClassVar[str] = "local"

    def __init__(self, workers: int = 1, on_event: JobEvent | None = None, processes_per_job: int = 1) -> None:
        if workers < 1:
            raise MpvgbenchError(f"--workers must be >= 1, got {workers}")
        if processes_per_job < 1:
            raise MpvgbenchError(f"executor.nproc_per_node must be >= 1, got {processes_per_job}")
        self.workers = workers
        # > 1: each job is a one-node DDP run under torchrun, one process (and one GPU) per rank
        self.processes_per_job = processes_per_job
        self.on_event = on_event or (lambda event, job, info: None)
        self._locks: dict[str, IO[bytes]] = {}  # run-directory locks this coordinator holds

    def options(self) -> dict[str, Any]:
        return {"workers": self.workers}

    def launch(self, jobs: Sequence[Job], store: Store, ctx: RunContext) -> LaunchSummary:
        owner = new_owner_id()
        summary = LaunchSummary()
        queue = list(jobs)
        free_gpus = visible_gpus() if ctx.device != "cpu" else []  # cpu: no torch import here
        per_job = self.processes_per_job
        if free_gpus and len(free_gpus) < per_job:
            raise MpvgbenchError(f"each job needs {per_job} GPUs (executor.nproc_per_node) but "
                                 f"{len(free_gpus)} are visible; lower nproc_per_node or use more GPUs")
        slots = min(self.workers, len(free_gpus) // per_job) if free_gpus else self.workers
        running: dict[str, RunningJob] = {}
        # Jobs another live coordinator is training: waited for (and taken over if it dies), so
        # this run's exit status says whether the whole matrix finished, whoever trained it.
        elsewhere: dict[str, Job] = {}
        reported_skipped: set[str] = set()
        last_heartbeat = last_elsewhere = time.monotonic()
        stop = False
        try:
            while ((queue or elsewhere) and not stop) or running:
                if elsewhere and time.monotonic() - last_elsewhere >= ELSEWHERE_POLL_S:
                    queue[:0] = self._settled_elsewhere(elsewhere, store, ctx)
                    last_elsewhere = time.monotonic()
                while queue and not stop and len(running) < slots:
                    job = self._pop_ready(queue, store, owner, summary)
                    if job is None:
                        break  # the rest wait for the runs they start from (init_from)
                    if not self._claim(job, store, owner, ctx):
                        if job.key not in reported_skipped:  # once, however often it is retried
                            reported_skipped.add(job.key)
                            summary.skipped.append(job.key)
                            self.on_event("skipped", job, {"reason": "claimed by another run"})
                        elsewhere[job.key] = job
                        continue
                    gpu = take_gpus(free_gpus, per_job)
                    running[job.key] = self._start(job, ctx, gpu, store, owner)
                    summary.launched.append(job.key)
                if queue and not running and not elsewhere and not stop:
                    # Nothing runs here and nothing queued can start: the runs they start from
                    # are trained elsewhere (another coordinator, Slurm). Do not spin.
                    summary.messages.append(
                        f"{len(queue)} job(s) wait for init_from runs trained elsewhere; "
                        "rerun this command once those are finished")
                    break
                if self._reap(running, free_gpus, store, owner, ctx, summary) and ctx.fail_fast:
                    stop = True
                    self._terminate(running, store, owner)
                if running and time.monotonic() - last_heartbeat > HEARTBEAT_EVERY_S:
                    if store.heartbeat(owner, list(running)) < len(running):
                        # `mpvgbench cancel` (or a coordinator that took a run over): stop its worker
                        for key in self._stop_lost(running, store, owner, free_gpus):
                            summary.messages.append(f"{key}: cancelled while running; its worker was stopped")
                    last_heartbeat = time.monotonic()
                    for entry in running.values():
                        self.on_event("progress", entry.job, {"run_dir": entry.run_dir})
                elif running:
                    for entry in running.values():
                        self.on_event("progress", entry.job, {"run_dir": entry.run_dir})
                time.sleep(POLL_EVERY_S)
        except BaseException:
            # Ctrl-C or any crash of the coordinator: stop the workers and hand their claims
            # back; each checkpoint stays, so the next `mpvgbench run` resumes them.
            self._terminate(running, store, owner)
            raise
        if stop and queue:
            summary.messages.append(f"--fail-fast: {len(queue)} job(s) not started")
        return summary

    def _reap(self, running: dict[str, RunningJob], free_gpus: list[str], store: Store, owner: str,
              ctx: RunContext, summary: LaunchSummary) -> bool:
        """Record the jobs whose worker ended (an infra failure starts again); True when one
        of them failed."""
        failed = False
        for key in list(running):
            entry = running[key]
            if entry.process.poll() is None:
                continue
            del running[key]
            for handle in entry.logs:
                handle.close()
            give_back_gpus(free_gpus, entry.gpu)
            outcome = self._finish(entry, store, owner, ctx)
            if outcome == "retry":  # the run's lock stays with this coordinator for the next attempt
                running[key] = self._start(entry.job, ctx, entry.gpu, store, owner, entry.attempt + 1)
                take_gpus(free_gpus, self.processes_per_job, exactly=entry.gpu)
                continue
            self._release_lock(key)
            (summary.finished if outcome == "finished" else summary.failed).append(key)
            failed = failed or outcome != "finished"
        return failed

    def _settled_elsewhere(self, elsewhere: dict[str, Job], store: Store, ctx: RunContext) -> list[Job]:
        """Drop the jobs another coordinator has finished (or failed); return the rest for one
        more claim attempt, which succeeds once that coordinator released them or died (the
        same rule as any claim: dead owner on this host, or a heartbeat older than the limit)."""
        states = store.statuses(list(elsewhere))
        for key in list(elsewhere):
            state = states.get(key)
            if state in ("finished", "failed", "cancelled"):
                self.on_event(state, elsewhere.pop(key), {"run_dir": ctx.run_dir(key), "error": "in another run"})
        retry = list(elsewhere.values())
        elsewhere.clear()
        return retry

    def _pop_ready(self, queue: list[Job], store: Store, owner: str, summary: LaunchSummary) -> Job | None:
        """The first queued job whose init_from run is finished; fails jobs whose parent failed."""
        parents = {job.depends_on for job in queue if job.depends_on}
        states = store.statuses(sorted(parents)) if parents else {}
        for index, job in enumerate(queue):
            state = states.get(job.depends_on) if job.depends_on else "finished"
            if state == "finished":
                return queue.pop(index)
            if state in ("failed", "cancelled") and store.claim(job.key, owner, stale_after_s=1e12):
                queue.pop(index)
                error = f"init_from run {job.depends_on} is {state}; fix it, then rerun with --retry-failed"
                store.mark_failed(job.key, owner, error=error, kind="exception")
                summary.failed.append(job.key)
                self.on_event("failed", job, {"error": error})
                return self._pop_ready(queue, store, owner, summary)
        return None

    def _claim(self, job: Job, store: Store, owner: str, ctx: RunContext) -> bool:
        """The store's claim, then the run directory's lock (another database's coordinator, a
        Slurm job): both or neither. A run whose directory already holds a valid result (its
        coordinator was killed after the worker finished) is recorded, not trained again."""
        if live_slurm_jobs([job], ctx.runs_root):
            return False  # queued or running on Slurm: that job trains it
        if not self._claim_in_store(job, store, owner, ctx):
            return False
        lock = try_lock(ctx.run_dir(job.key))
        if lock is None:
            store.release(job.key, owner)
            return False
        if valid_result(ctx.run_dir(job.key)) and store.ingest_run_dir(ctx.run_dir(job.key)) == "finished":
            lock.close()
            return False  # _settled_elsewhere reports it finished
        self._locks[job.key] = lock
        return True

    def _release_lock(self, key: str) -> None:
        lock = self._locks.pop(key, None)
        if lock is not None:
            lock.close()

    def _claim_in_store(self, job: Job, store: Store, owner: str, ctx: RunContext) -> bool:
        if worker_is_training(ctx.run_dir(job.key), ctx.stale_after_s):
            (row,) = store.runs(keys=[job.key]) or (None,)
            if row is not None and row.status == "running":
                return False  # fenced by the worker's liveness, not only the coordinator's
        if store.claim(job.key, owner, stale_after_s=ctx.stale_after_s):
            return True
        # A coordinator on this host that was killed (kill -9, a closed laptop lid) leaves its
        # runs "running" until the heartbeat goes stale; when its pid is gone we need not wait.
        (row,) = store.runs(keys=[job.key]) or (None,)
        if row is None or row.status != "running" or not row.owner or owner_is_alive(row.owner):
            return False
        return store.claim(job.key, owner, stale_after_s=ctx.stale_after_s, dead_owner=row.owner)

    def worker_argv(self, run_dir: Path) -> list[str]:
        """The worker's command line (a seam for tests of the executor's bookkeeping)."""
        if self.processes_per_job > 1:  # one-node DDP: torchrun (tied to us), RANK/WORLD_SIZE for the worker
            return [sys.executable, "-m", "mpvgbench.ddp_launch", "--standalone",
                    f"--nproc_per_node={self.processes_per_job}", "-m", "mpvgbench.worker", str(run_dir)]
        return [sys.executable, "-m", "mpvgbench.worker", str(run_dir)]

    def _start(
        self, job: Job, ctx: RunContext, gpu: str | None, store: Store, owner: str, attempt: int = 1
    ) -> RunningJob:
        run_dir = prepare_run_dir(job, ctx)
        store.set_run_dir(job.key, str(run_dir), executor=self.name)
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        elif ctx.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        # Concurrent jobs share the cores: N jobs with all threads each oversubscribe the
        # machine (measured here: 2 jobs x 2 threads ran 30x slower than 2 x 1 thread).
        env[CPUS_ENV] = str(max(1, job_cpus()[0] // self.workers))
        env["MPVGBENCH_PARENT_PID"] = str(os.getpid())  # worker.PARENT_PID_ENV: it dies with us
        write_attempt_header(run_dir, attempt, self.name)
        out = open(run_dir / "stdout.log", "a")  # noqa: SIM115 - closed when the job ends
        err = open(run_dir / "stderr.log", "a")  # noqa: SIM115
        process = subprocess.Popen(
            self.worker_argv(run_dir),
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=env,
            pass_fds=(self._locks[job.key].fileno(),),  # the worker holds the run's lock as long as it lives
        )
        record_worker(run_dir, process.pid)
        self.on_event("started", job, {"run_dir": run_dir, "gpu": gpu, "attempt": attempt})
        return RunningJob(job, run_dir, process, gpu, [out, err], attempt)

    def _finish(self, entry: RunningJob, store: Store, owner: str, ctx: RunContext) -> str:
        """Ingest the run directory; returns finished, failed or retry."""
        status = store.ingest_run_dir(entry.run_dir)
        if status == "finished":
            self.on_event("finished", entry.job, {"run_dir": entry.run_dir})
            return "finished"
        if status == "failed":
            failure = store.failure(entry.job.key)
            if failure and is_infra_failure(failure) and entry.attempt <= ctx.max_infra_retries:
                # The machine failed the job (a full disk, a lost port), not the job itself.
                store.reset([entry.job.key])
                if not store.claim(entry.job.key, owner, stale_after_s=ctx.stale_after_s):
                    return "failed"  # taken by another coordinator meanwhile
                self.on_event("retry", entry.job, {"attempt": entry.attempt, **failure})
                return "retry"
            self.on_event("failed", entry.job, failure or {})
            return "failed"
        # No result.json and no error.json: the worker died without a word (killed, segfault).
        # That is an infrastructure failure, the only kind that is retried automatically.
        code = entry.process.returncode
        tail = _tail(entry.run_dir / "stderr.log")
        if entry.attempt <= ctx.max_infra_retries:
            self.on_event("retry", entry.job, {"returncode": code, "attempt": entry.attempt})
            return "retry"
        error = f"worker exited with code {code} and wrote no result (see {entry.run_dir / 'stderr.log'})"
        store.mark_failed(entry.job.key, owner, error=error, traceback_tail=tail, kind="infra")
        self.on_event("failed", entry.job, {"error": error, "kind": "infra"})
        return "failed"

    def _stop_lost(self, running: dict[str, RunningJob], store: Store, owner: str,
                   free_gpus: list[str]) -> list[str]:
        """Stop the workers of runs this coordinator no longer holds; their rows stay as they are."""
        lost = [row.key for row in store.runs(keys=list(running))
                if row.status != "running" or row.owner != owner]
        for key in lost:
            entry = running.pop(key)
            if entry.process.poll() is None:
                entry.process.terminate()
            try:
                entry.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                entry.process.kill()
                entry.process.wait()
            for handle in entry.logs:
                handle.close()
            self._release_lock(key)
            give_back_gpus(free_gpus, entry.gpu)
            self.on_event("cancelled", entry.job, {"run_dir": entry.run_dir})
        return lost

    def _terminate(self, running: dict[str, RunningJob], store: Store, owner: str) -> None:
        for entry in running.values():
            if entry.process.poll() is None:
                entry.process.terminate()
        deadline = time.monotonic() + 10
        for entry in running.values():
            try:
                entry.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                entry.process.kill()
                entry.process.wait()
            for handle in entry.logs:
                handle.close()
            # A worker may have finished in the meantime: keep its result rather than lose it.
            if store.ingest_run_dir(entry.run_dir) not in ("finished", "failed"):
                store.release(entry.job.key, owner)
        running.clear()
        for key in list(self._locks):  # claimed but not started (a job interrupted in-process)
            self._release_lock(key)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
