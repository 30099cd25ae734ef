"""Run jobs in the calling process, one after another (submitit's ``DebugExecutor``, for us).

``mpvgbench run SPEC --executor debug`` trains each job inside the ``mpvgbench`` process itself:
a breakpoint in the trainer stops there, a traceback shows the whole stack, and torch and timm
are imported once instead of once per job (how the test suite smoke-runs whole matrices). The
bookkeeping is the local executor's (claims, run directories, ingest, retries, ``--fail-fast``);
what it gives up is isolation: no per-job thread limit, no kill safety, no parallel jobs, and no
heartbeat while a job trains (a second coordinator must not run the same spec meanwhile).
"""

from __future__ import annotations

import contextlib
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar, Optional

from mpvgbench.executors.base import RunContext, prepare_run_dir, write_attempt_header
from mpvgbench.executors.local import JobEvent, LocalExecutor, RunningJob

if TYPE_CHECKING:
    from mpvgbench.matrix import Job
    from mpvgbench.store import Store


class FinishedProcess:
    """Stands in for the ``Popen`` of a worker that has already ended: the job ran in-process."""

    def __init__(self, returncode: int) -> None:
        self.returncode = returncode

    def poll(self) -> int:
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        return self.returncode

    def terminate(self) -> None:
        """Nothing left to stop."""

    kill = terminate


class InProcessExecutor(LocalExecutor):
    """The local executor's loop with each job trained synchronously in this process."""

    name: ClassVar[str] = "debug"

    def __init__(self, on_event: Optional[JobEvent] = None) -> None:
        super().__init__(workers=1, on_event=on_event)

    def _start(self, job: Job, ctx: RunContext, gpu: Optional[str], store: Store, owner: str,
               attempt: int = 1) -> RunningJob:
        from mpvgbench.worker import run_job

        run_dir = prepare_run_dir(job, ctx)
        store.set_run_dir(job.key, str(run_dir), executor=self.name)
        write_attempt_header(run_dir, attempt, self.name)
        self.on_event("started", job, {"run_dir": run_dir, "gpu": None, "attempt": attempt})
        try:
            returncode = _run_logged(run_job, run_dir)
        except KeyboardInterrupt:
            # Ctrl-C stops the coordinator, not the job's worth: the run goes back to pending
            # (its checkpoint stays) instead of being failed by this attempt's error.json.
            (run_dir / "error.json").unlink(missing_ok=True)
            store.release(job.key, owner)
            self._release_lock(job.key)
            raise
        return RunningJob(job, run_dir, FinishedProcess(returncode), None, [], attempt)  # type: ignore[arg-type]


def _run_logged(run_job: Callable[[str], object], run_dir: Path) -> int:
    """``run_job(run_dir)`` with its output appended to the run's logs, as a worker's would be.

    Returns the worker's exit code: 0 with result.json written, 1 with error.json written.
    KeyboardInterrupt and SystemExit propagate: they stop the coordinator, not just the job.
    """
    with open(run_dir / "stdout.log", "a") as out, open(run_dir / "stderr.log", "a") as err, \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_job(str(run_dir))
        except Exception:  # error.json holds the record; the log gets the traceback
            traceback.print_exc()
            return 1
    return 0
