"""The process that trains one job: ``python -m mpvgbench.worker RUN_DIR``.

It reads ``config.json`` + ``job.json``, joins a process group when it is one of several tasks
(torchrun's env vars, or ``submitit.JobEnvironment`` under Slurm), picks the job's task
(``train.task_for``) and runs the training loop on it (``train.train_job``, which resumes from
``checkpoint.pt``), and leaves ``result.json`` (exit 0) or ``error.json`` (exit 1).
``run_job`` is the same thing as a function; :class:`CheckpointableJob` wraps it for submitit so
a preempted/timed-out Slurm job is requeued and resumes from its last checkpoint, which the
requeue signal first gets written at a step boundary (``_defer_requeue_signal``).

At start the worker arms PR_SET_PDEATHSIG when an executor passed its pid
(``die_with_parent``) and applies the job's thread plan (``mpvgbench.threads``). error.json
``kind``: user (an ``MpvgbenchError``: bad input the user can fix, e.g. a missing data root),
nonfinite, oom, infra (retrying may succeed: lost peers, a full disk), timeout (submitit's last
time-out, wherever it landed) or exception (a bug).
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import sys
import threading
import traceback
from typing import Any, Callable, Optional

import submitit

from mpvgbench.errors import InfraError, MpvgbenchError, NonFiniteError, one_line
from mpvgbench.rundir import (
    RunDir,
    atomic_write_json,
    read_config,
    read_job,
    read_json,
    retire_stale_error,
)
from mpvgbench.threads import apply_thread_plan, plan_threads

ERROR_KINDS = ("exception", "user", "nonfinite", "oom", "infra", "timeout")

# The local executor puts its pid here; the worker then asks the kernel to kill it when that
# process dies (see die_with_parent).
PARENT_PID_ENV = "MPVGBENCH_PARENT_PID"
PR_SET_PDEATHSIG = 1
# How long a requeue signal waits for the training loop's next step boundary (where it checkpoints)
# before submitit's handler runs anyway; submitit signals 90 s before the time limit.
REQUEUE_GRACE_S = 45.0

# How often progress.json (the heartbeat) is rewritten; an operational knob, so an env var
# rather than part of job.json or the config.
PROGRESS_INTERVAL_ENV = "MPVGBENCH_PROGRESS_INTERVAL_S"


# ------------------------------------------------------------------------------ distributed


def _submitit_env() -> Optional[Any]:
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    try:
        return submitit.JobEnvironment()
    except RuntimeError:
        return None


def setup_distributed(device: str) -> bool:
    """Join a process group when this process is one of several tasks; True if it did.

    torchrun exports RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT. Under submitit with more
    than one task we derive them: the first hostname of the allocation is the master and the port
    comes from the job id, so concurrent jobs sharing a node do not collide.
    """
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return False  # the caller owns the process group (tests, custom launchers)
    env = _submitit_env()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and env is not None and env.num_tasks > 1:
        os.environ.update(
            {
                "RANK": str(env.global_rank),
                "WORLD_SIZE": str(env.num_tasks),
                "LOCAL_RANK": str(env.local_rank),
                "MASTER_ADDR": env.hostnames[0],
                "MASTER_PORT": str(_port_from_job_id(str(env.job_id))),
            }
        )
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return False
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://")
    except Exception as exc:
        raise InfraError(f"could not join the process group of {world_size} tasks: {exc}") from exc
    return True


def _port_from_job_id(job_id: str) -> int:
    digits = "".join(ch for ch in job_id if ch.isdigit()) or "0"
    return 20000 + int(digits) % 20000


# ---------------------------------------------------------------------------------- errors


def classify_error(exc: BaseException, phase: str = "train") -> str:
    """error.json's ``kind``: user, nonfinite, timeout, oom, infra or exception."""
    import torch

    if isinstance(exc, MpvgbenchError):
        return "user"
    if isinstance(exc, NonFiniteError):
        return "nonfinite"
    if isinstance(exc, submitit.core.utils.UncompletedJobError):
        return "timeout"  # submitit's last time-out: Slurm stops the job, no requeue left
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "infra"  # a full disk or quota, e.g. while saving a checkpoint: not the training
    oom_types: tuple[type[BaseException], ...] = (MemoryError,)
    if hasattr(torch, "OutOfMemoryError"):
        oom_types += (torch.OutOfMemoryError,)
    message = str(exc).lower()
    if isinstance(exc, oom_types) or (
        isinstance(exc, RuntimeError)
        and ("out of memory" in message or "can't allocate memory" in message)
    ):
        return "oom"
    dist_error = getattr(torch.distributed, "DistError", None)
    if isinstance(exc, (InfraError, KeyboardInterrupt, SystemExit)) or (
        dist_error is not None and isinstance(exc, dist_error)
    ):
        return "infra"  # interrupted from outside or lost its peers: retrying may succeed
    if phase == "setup" and isinstance(exc, OSError):
        return "infra"
    return "exception"


def error_record(key: Optional[str], exc: BaseException, run_dir: RunDir, phase: str) -> dict[str, Any]:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    epoch: Optional[int] = getattr(exc, "epoch", None)
    step: Optional[int] = getattr(exc, "step", None)
    if epoch is None:  # the heartbeat knows where training was
        try:
            progress = read_json(run_dir.progress, missing_ok=True) or {}
        except ValueError:
            progress = {}
        epoch, step = progress.get("epoch"), progress.get("step")
    kind = classify_error(exc, phase)
    where = getattr(exc, "mpvgbench_phase", None)  # set by train.bookkeeping.phase: load, save, eval
    # a user mistake reads as its message (it names the fix); anything else keeps its type
    message = one_line(exc, with_type=kind != "user", limit=500)
    if kind == "timeout":
        message = f"Slurm time limit reached{f' during {where}' if where else ''}: {message}"
    elif where:
        message = f"during {where}: {message}"
    return {
        "key": key,
        "kind": kind,
        "error": message,
        "traceback_tail": "\n".join(tb.rstrip().splitlines()[-20:]),
        "epoch": epoch,
        "step": step,
    }


# ------------------------------------------------------------------------------------- job


def run_job(run_dir: str) -> dict[str, Any]:
    """Train the job in ``run_dir``; return result.json's dict or write error.json and re-raise."""
    rd = RunDir(run_dir)
    phase = "setup"  # an OSError before training proper (unreadable dir, no port) is "infra"
    key: Optional[str] = rd.path.name  # the directory is named by the key; job.json confirms it
    owns_group = False
    rank = int(os.environ.get("RANK", "0"))
    dist: Any = None
    tracker: Any = None
    try:
        job = read_job(rd)
        key = job.get("key")
        # before torch's first import where possible: OpenMP reads its env var once, at load
        threads = plan_threads(int(job["num_workers"]))
        apply_thread_plan(threads)
        import torch.distributed as dist

        config = read_config(rd)
        owns_group = setup_distributed(job["device"])
        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank()
        if rank == 0:
            retire_stale_error(rd)
            tracker = open_job_tracker(job, config, rd)
        phase = "train"
        from mpvgbench.train import task_for, train_job

        return train_job(
            config,
            rd.path,
            task=task_for(config),
            data_root=job["data_root"],
            download=bool(job.get("download", False)),
            device=job["device"],
            num_workers=threads.loader_workers,
            amp=job["amp"],
            compile=job["compile"],
            checkpoint_every_steps=job["checkpoint_every_steps"],
            checkpoint_every_min=job["checkpoint_every_min"],
            on_requested_checkpoint=_defer_requeue_signal(),
            progress_interval_s=float(os.environ.get(PROGRESS_INTERVAL_ENV, "5")),
            tracker=tracker,
        )
    except BaseException as exc:
        if _REQUEUED and not isinstance(exc, submitit.core.utils.UncompletedJobError):
            # submitit's signal handler requeued this job and now exits the process (SystemExit,
            # sometimes surfacing as another error): the job goes on, this is no failure.
            raise
        record = error_record(key, exc, rd, phase)
        # rank 0's error wins; another rank records its own only when rank 0 has not (it may be
        # stuck in a collective waiting for the rank that failed).
        if rank == 0 or not rd.error.exists():
            try:
                atomic_write_json(rd.error, record)
            except OSError:
                pass
        raise
    finally:
        if tracker is not None:
            tracker.close()
        if owns_group and dist is not None and dist.is_initialized():
            dist.destroy_process_group()


def open_job_tracker(job: dict[str, Any], config: Any, rd: RunDir) -> Any:
    """The tracking backends job.json names (``mpvgbench.tracking``), None when it names none."""
    if not job.get("tracking"):
        return None
    from mpvgbench.tracking import TrackingSettings, open_tracker

    settings = TrackingSettings.model_validate(job["tracking"])
    return open_tracker(settings, rd.path, str(job.get("experiment") or "mpvgbench"), str(job["key"]),
                        config.model_dump(mode="json"))


def _defer_requeue_signal() -> Optional[Callable[[], None]]:
    """Under submitit: let its requeue signal (SIGUSR2) first get a checkpoint written.

    submitit's own handler requeues (or, on the last time-out, raises UncompletedJobError) at
    whatever line the signal lands on, losing the steps since the last checkpoint. Ours asks the
    training loop for a checkpoint at its next step boundary (``train.request_checkpoint``) and
    returns; the loop then calls the function returned here, which runs submitit's handler.
    Should no step boundary come within REQUEUE_GRACE_S (a long eval), the signal is re-sent to
    this process with submitit's handler back in place, so the job is still requeued in time.
    Returns None (nothing to do) outside submitit.
    """
    if _submitit_env() is None:
        return None
    try:
        sig = submitit.JobEnvironment._usr_sig()
    except (AttributeError, RuntimeError):
        sig = signal.SIGUSR2
    original = signal.getsignal(sig)
    if not callable(original):
        return None
    received: list[tuple[int, Any]] = []
    timers: list[threading.Timer] = []

    from mpvgbench.train.bookkeeping import request_checkpoint  # not inside the handler

    def on_signal(signum: int, frame: Any) -> None:
        received.append((signum, frame))
        signal.signal(sig, original)  # a second signal goes straight to submitit
        request_checkpoint()
        timer = threading.Timer(REQUEUE_GRACE_S, os.kill, (os.getpid(), sig))
        timer.daemon = True
        timer.start()
        timers.append(timer)

    def after_checkpoint() -> None:
        for timer in timers:
            timer.cancel()
        if received:
            signum, frame = received[-1]
            original(signum, frame)  # requeue and exit, or UncompletedJobError

    signal.signal(sig, on_signal)
    return after_checkpoint


def die_with_parent(environ: "os._Environ[str]" = os.environ) -> None:
    """Ask the kernel to SIGKILL this worker when the executor that started it dies.

    The executor passes its pid in MPVGBENCH_PARENT_PID. Done here, in the worker itself, rather
    than in a ``preexec_fn`` between fork and exec, which is unsafe in a process with threads.
    If the parent is already gone (it died before prctl), the worker exits at once: nobody would
    collect its result and a successor may be training the same run directory.
    """
    parent = environ.pop(PARENT_PID_ENV, None)  # not inherited by whatever this process starts
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):
        print(f"mpvgbench.worker: its executor (pid {parent}) is gone; exiting", file=sys.stderr)
        os._exit(3)


_REQUEUED = False  # set once submitit asked this process for a checkpoint (timeout, preemption)


class CheckpointableJob(submitit.helpers.Checkpointable):
    """What the Slurm executor submits: ``CheckpointableJob()(run_dir)``.

    On preemption/timeout submitit calls :meth:`checkpoint`, which requeues the same call; the
    training loop then resumes from the run directory's checkpoint.pt, so no state travels in the pickle.
    """

    def __call__(self, run_dir: str) -> dict[str, Any]:
        return run_job(run_dir)

    def checkpoint(self, run_dir: str) -> submitit.helpers.DelayedSubmission:  # type: ignore[override]
        global _REQUEUED
        _REQUEUED = True
        return submitit.helpers.DelayedSubmission(CheckpointableJob(), run_dir)


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    die_with_parent()
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m mpvgbench.worker RUN_DIR", file=sys.stderr)
        return 2
    try:
        result = run_job(args[0])
    except BaseException as exc:  # error.json holds the record; stderr.log gets the traceback
        traceback.print_exc()
        print(f"mpvgbench.worker: {one_line(exc, with_type=True, limit=500)}", file=sys.stderr)
        return 1
    metric = result.get("primary_metric", "top1")
    print(f"mpvgbench.worker: finished {result.get('key')} {metric}={result.get('final_top1')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
