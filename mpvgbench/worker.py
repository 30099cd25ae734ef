"""The process that trains one job: ``python -m mpvgbench.worker RUN_DIR``.

It reads ``config.json`` + ``job.json``, joins a process group when it is one of several tasks
(torchrun's env vars, or ``submitit.JobEnvironment`` under Slurm), calls ``trainer.train`` (which
resumes from ``checkpoint.pt``), and leaves ``result.json`` (exit 0) or ``error.json`` (exit 1).
``run_job`` is the same thing as a function; :class:`CheckpointableJob` wraps it for submitit so
a preempted/timed-out Slurm job is requeued and resumes from its last epoch.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any, Optional

import submitit

from mpvgbench.rundir import RunDir, atomic_write_json, read_config, read_job, read_json
from mpvgbench.training_parts import NonFiniteLossError

ERROR_KINDS = ("exception", "nonfinite", "oom", "infra")

# How often progress.json (the heartbeat) is rewritten; an operational knob, so an env var
# rather than part of job.json or the config.
PROGRESS_INTERVAL_ENV = "MPVGBENCH_PROGRESS_INTERVAL_S"


class InfraError(RuntimeError):
    """The job could not start or talk to its peers (process group, environment)."""


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
    """error.json's ``kind``: nonfinite, oom, infra or exception."""
    import torch

    if isinstance(exc, NonFiniteLossError):
        return "nonfinite"
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


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= 500 else line[:497] + "..."


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
    return {
        "key": key,
        "kind": classify_error(exc, phase),
        "error": _one_line(exc),
        "traceback_tail": "\n".join(tb.rstrip().splitlines()[-20:]),
        "epoch": epoch,
        "step": step,
    }


# ------------------------------------------------------------------------------------- job


def run_job(run_dir: str) -> dict[str, Any]:
    """Train the job in ``run_dir``; return result.json's dict or write error.json and re-raise."""
    import torch.distributed as dist

    rd = RunDir(run_dir)
    phase = "setup"  # an OSError before training proper (unreadable dir, no port) is "infra"
    key: Optional[str] = rd.path.name  # the directory is named by the key; job.json confirms it
    owns_group = False
    rank = int(os.environ.get("RANK", "0"))
    try:
        job = read_job(rd)
        key = job.get("key")
        config = read_config(rd)
        owns_group = setup_distributed(job["device"])
        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank()
        if rank == 0 and rd.error.exists():
            rd.error.unlink()  # a stale failure of an earlier attempt; this attempt decides anew
        phase = "train"
        from mpvgbench.trainer import train

        return train(
            config,
            rd.path,
            data_root=job["data_root"],
            download=bool(job.get("download", False)),
            device=job["device"],
            num_workers=int(job["num_workers"]),
            progress_interval_s=float(os.environ.get(PROGRESS_INTERVAL_ENV, "5")),
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
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()


_REQUEUED = False  # set once submitit asked this process for a checkpoint (timeout, preemption)


class CheckpointableJob(submitit.helpers.Checkpointable):
    """What the Slurm executor submits: ``CheckpointableJob()(run_dir)``.

    On preemption/timeout submitit calls :meth:`checkpoint`, which requeues the same call; the
    trainer then resumes from the run directory's checkpoint.pt, so no state travels in the pickle.
    """

    def __call__(self, run_dir: str) -> dict[str, Any]:
        return run_job(run_dir)

    def checkpoint(self, run_dir: str) -> submitit.helpers.DelayedSubmission:  # type: ignore[override]
        global _REQUEUED
        _REQUEUED = True
        return submitit.helpers.DelayedSubmission(CheckpointableJob(), run_dir)


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m mpvgbench.worker RUN_DIR", file=sys.stderr)
        return 2
    try:
        result = run_job(args[0])
    except BaseException as exc:  # error.json holds the record; stderr.log gets the traceback
        traceback.print_exc()
        print(f"mpvgbench.worker: {_one_line(exc)}", file=sys.stderr)
        return 1
    print(f"mpvgbench.worker: finished {result.get('key')} top1={result.get('final_top1')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
