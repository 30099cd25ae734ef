"""One rule for CPU threads in every executor: use the CPUs this job was given, no more.

Oversubscription is the expensive mistake here (measured on a 2-core machine: 2 jobs x 2
threads ran 30x slower than 2 x 1 thread), and each executor knows the job's share differently:

* the local executor: ``MPVGBENCH_CPUS``, the share it hands each of its concurrent jobs
  (first, so a local run inside a Slurm allocation still splits it);
* Slurm: ``SLURM_CPUS_PER_TASK`` (``--cpus-per-task``), else ``SLURM_CPUS_ON_NODE`` divided by
  the tasks on the node;
* anything else: the CPUs this process may run on (``os.sched_getaffinity``).

The DataLoader workers get what is left after one CPU for the training process, at most the
number asked for (``job.json``'s ``num_workers``); the training process gets the rest as its
torch/OpenMP/MKL threads. An explicit ``OMP_NUM_THREADS`` is the operator's choice and wins.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

CPUS_ENV = "MPVGBENCH_CPUS"  # set by the local executor: this job's share of the machine
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class ThreadPlan:
    cpus: int  # the CPUs this job was given
    source: str  # where that number came from (logged when it surprises someone)
    threads: int  # torch intra-op / OpenMP / MKL threads of the training process
    loader_workers: int  # DataLoader worker processes


def _positive_int(text: Optional[str]) -> Optional[int]:
    try:
        value = int(str(text).split("(")[0])  # SLURM_TASKS_PER_NODE looks like "2(x3)"
    except ValueError:
        return None
    return value if value > 0 else None


def _affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def job_cpus(environ: Mapping[str, str] = os.environ) -> tuple[int, str]:
    """(CPUs this job was given, the variable that said so)."""
    available = _affinity_cpus()
    share = _positive_int(environ.get(CPUS_ENV))  # first: an executor's share is the most precise
    if share:
        return min(share, available), CPUS_ENV
    per_task = _positive_int(environ.get("SLURM_CPUS_PER_TASK"))
    if per_task:
        return min(per_task, available), "SLURM_CPUS_PER_TASK"
    on_node = _positive_int(environ.get("SLURM_CPUS_ON_NODE"))
    if on_node:
        tasks = _positive_int(environ.get("SLURM_NTASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE")) or 1
        return min(max(1, on_node // tasks), available), "SLURM_CPUS_ON_NODE"
    return available, "sched_getaffinity"


def plan_threads(requested_loader_workers: int, environ: Mapping[str, str] = os.environ) -> ThreadPlan:
    """Threads and loader workers for one training process (see the module docstring)."""
    cpus, source = job_cpus(environ)
    loader_workers = max(0, min(requested_loader_workers, cpus - 1))
    threads = max(1, cpus - loader_workers)
    explicit = _positive_int(environ.get("OMP_NUM_THREADS"))
    if explicit:
        threads, source = explicit, f"{source}; OMP_NUM_THREADS"
    return ThreadPlan(cpus=cpus, source=source, threads=threads, loader_workers=loader_workers)


def apply_thread_plan(plan: ThreadPlan, environ: "os._Environ[str]" = os.environ) -> None:
    """Set the thread counts: the env vars first (read by OpenMP/MKL when they start, so this
    must run before torch is first imported where possible), then torch's own setting, which
    also covers a torch that is already loaded."""
    for name in THREAD_ENV_VARS:
        environ[name] = str(plan.threads)
    import torch

    torch.set_num_threads(plan.threads)
