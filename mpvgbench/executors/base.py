"""The executor seam: how pending jobs become trained run directories.

An executor receives jobs that the store has already registered, claims each one atomically
(so two coordinators never train the same cell), prepares its run directory and launches
``mpvgbench.worker`` on it. Workers write run directories only; the coordinating process
ingests them into the store (``Store.ingest_run_dir``).
"""

from __future__ import annotations

import functools
import os
import socket
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Optional

if TYPE_CHECKING:
    from mpvgbench.matrix import Job
    from mpvgbench.store import Store


@dataclass(frozen=True)
class RunContext:
    """Operational settings shared by every job of one `mpvgbench run` (not part of job keys)."""

    runs_root: Path
    data_roots: Mapping[str, str] = field(default_factory=dict)  # dataset name -> local root
    device: str = "auto"  # auto | cpu | cuda
    num_workers: int = 0  # DataLoader workers per job
    stale_after_s: float = 120.0  # a running job whose heartbeat is older is reclaimable
    max_infra_retries: int = 1  # automatic retries for infrastructure failures only
    fail_fast: bool = False
    download: bool = False
    amp: str = "auto"  # auto | on | off: bf16 autocast (auto: the recipe's on CUDA, fp32 on CPU)
    compile: str = "auto"  # auto | on | off: torch.compile (auto: on CUDA only)
    checkpoint_every_min: Optional[float] = 10.0  # mid-epoch checkpoints (exact resume)
    # the spec's `tracking:` section (tracking.TrackingSettings as JSON); None: no tracking
    tracking: Optional[Mapping[str, Any]] = None

    def run_dir(self, key: str) -> Path:
        # The directory name is the job key (hex), never a spec value: nothing in a spec can
        # make a worker write outside runs_root.
        assert all(c in "0123456789abcdef" for c in key) and len(key) == 16, key
        return self.runs_root / key


def new_owner_id() -> str:
    """Identifies one coordinating process in the store's claims: ``host:pid:nonce@start``.

    ``start`` is the process's start time (clock ticks since boot, /proc/PID/stat): a later
    process that reuses the pid has another, so a dead coordinator's claims are not mistaken
    for a live one's (``executors.local.owner_is_alive``).
    """
    start = process_start_time(os.getpid())
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}@{start or 0}"


def process_start_time(pid: int) -> Optional[int]:
    """The start time of ``pid`` in clock ticks since boot (Linux), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rpartition(")")[2].split()[19])  # field 22 of stat(5)
    except (OSError, IndexError, ValueError):
        return None


@functools.lru_cache(maxsize=1)
def source_revision() -> dict[str, Any]:
    """``rundir.git_revision()``, taken once by the coordinator and written into every job.json:
    the worker cannot find it itself, as it runs in whatever directory the executor or Slurm
    started it in (a Slurm job's node may not even have the checkout)."""
    from mpvgbench.rundir import git_revision

    return git_revision()


def prepare_run_dir(job: Job, ctx: RunContext) -> Path:
    """Write config.json and job.json (the worker's whole input) into the job's run directory."""
    from mpvgbench.rundir import atomic_write_json, retire_stale_error

    run_dir = ctx.run_dir(job.key)
    run_dir.mkdir(parents=True, exist_ok=True)
    retire_stale_error(run_dir)  # --retry-failed: the old record is not this attempt's outcome
    if (run_dir / "result.json").exists() and not valid_result(run_dir):
        # A damaged result.json never counts; set aside, the worker trains (or resumes) again.
        os.replace(run_dir / "result.json", run_dir / "result.json.invalid")
    atomic_write_json(run_dir / "config.json", job.config.model_dump(mode="json"))
    atomic_write_json(
        run_dir / "job.json",
        {
            "key": job.key,
            "data_root": ctx.data_roots.get(job.config.dataset),
            "device": ctx.device,
            "num_workers": ctx.num_workers,
            "download": ctx.download,
            "amp": ctx.amp,
            "compile": ctx.compile,
            "checkpoint_every_min": ctx.checkpoint_every_min,
            "tracking": dict(ctx.tracking) if ctx.tracking else None,
            "experiment": job.spec_name,  # names the tracking backends' experiment
            "source": source_revision(),  # the coordinator's git commit; see source_revision
        },
    )
    return run_dir


def write_attempt_header(run_dir: Path, attempt: int, executor: str) -> None:
    """A line in both logs before each attempt, so attempts appended to one log stay apart."""
    import datetime

    stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    line = f"===== mpvgbench attempt {attempt} · {stamp} · host {socket.gethostname()} · executor {executor} =====\n"
    for name in ("stdout.log", "stderr.log"):
        with open(run_dir / name, "a") as log:
            log.write(line)


# How a full disk reads when torch.save hits it: torch re-raises ENOSPC as a RuntimeError
# ("PytorchStreamWriter failed writing file ...", "unexpected pos N vs M"), which the worker
# records as an exception; it is the machine's failure all the same, and retried.
DISK_FULL_WORDS = ("no space left on device", "disk quota exceeded", "unexpected pos",
                   "pytorchstreamwriter failed writing")


def is_infra_failure(failure: Mapping[str, Any]) -> bool:
    """A failure of the machine rather than of the job (retried automatically): error.json's kind
    ``infra``, or a full disk that surfaced as another exception type."""
    if failure.get("kind") == "infra":
        return True
    text = f"{failure.get('error') or ''} {failure.get('traceback_tail') or ''}".lower()
    return failure.get("kind") == "exception" and any(words in text for words in DISK_FULL_WORDS)


def valid_result(run_dir: Path) -> bool:
    from mpvgbench.rundir import RunDirError, read_result
    from mpvgbench.store_schema import result_problem

    try:
        return result_problem(read_result(run_dir)) is None
    except RunDirError:
        return False


@dataclass
class LaunchSummary:
    """What an executor did with the jobs it was given."""

    launched: list[str] = field(default_factory=list)  # keys started (local) or submitted (slurm)
    skipped: list[str] = field(default_factory=list)  # claimed by another coordinator
    finished: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    external_ids: dict[str, str] = field(default_factory=dict)  # key -> scheduler job id
    messages: list[str] = field(default_factory=list)  # what to tell the user afterwards


class Executor(ABC):
    """A pluggable backend. Subclasses: LocalExecutor (subprocesses), SlurmExecutor (submitit)."""

    name: ClassVar[str]

    @abstractmethod
    def launch(self, jobs: Sequence[Job], store: Store, ctx: RunContext) -> LaunchSummary:
        """Claim, prepare and start every job; return when done (local) or submitted (slurm)."""

    def options(self) -> dict[str, Any]:
        """Executor settings recorded with each run (never part of the job key)."""
        return {}
