"""The run directory: the only thing a worker writes (docs/architecture.md, "Run directory").

Every write here is atomic (temporary file in the same directory, flush, fsync, ``os.replace``),
so a process killed mid-write leaves the previous version of the file intact: a reader sees the
old file or the new one, never half of one. Readers turn unreadable files into a one-line
:class:`RunDirError` that names the file and the fix.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]  # includes RunDir


from mpvgbench.errors import RunDirError, one_line  # noqa: E402 - RunDirError re-exported


# The files of a run directory (docs/architecture.md), by the RunDir attribute that names them.
RUN_FILES: dict[str, str] = {
    "config": "config.json", "job": "job.json", "checkpoint": "checkpoint.pt",
    "metrics": "metrics.jsonl", "progress": "progress.json", "result": "result.json",
    "error": "error.json", "stdout": "stdout.log", "stderr": "stderr.log",
}

@dataclass(frozen=True)
class RunDir:
    """Paths of one run directory, ``<runs_root>/<key>/``."""

    path: Path

    config: Path
    job: Path
    checkpoint: Path
    metrics: Path
    progress: Path
    result: Path
    error: Path
    stdout: Path
    stderr: Path

    def __init__(self, path: PathLike) -> None:
        object.__setattr__(self, "path", Path(path))
        for attribute, name in RUN_FILES.items():
            object.__setattr__(self, attribute, self.path / name)

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:  # a RunDir is usable wherever a path is
        return str(self.path)


# ---------------------------------------------------------------------------------------- writes


@contextmanager
def _atomic_file(path: PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Yield a temp file next to ``path``; on success fsync it and rename it over ``path``.

    Same directory so ``os.replace`` is a rename on one filesystem (atomic on POSIX). On any
    exception (including KeyboardInterrupt) the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable across a power loss; not all filesystems allow it.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: PathLike, obj: Any) -> None:
    with _atomic_file(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True, allow_nan=True)
        f.write("\n")


def atomic_write_jsonl(path: PathLike, rows: list[dict[str, Any]]) -> None:
    """Rewrite a whole JSON-lines file atomically (metrics.jsonl is small: one line per epoch)."""
    with _atomic_file(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")


def atomic_torch_save(path: PathLike, obj: Any) -> None:
    import torch

    with _atomic_file(path, "wb") as f:
        torch.save(obj, f)


def retire_stale_error(run_dir: PathLike) -> None:
    """Move an earlier attempt's error.json aside (to error.json.prev): this attempt decides
    anew, and nobody may read the old record as this attempt's outcome. The one place that does
    it (executors before launch, the worker at start)."""
    rd = RunDir(run_dir)
    try:
        os.replace(rd.error, rd.path / "error.json.prev")
    except FileNotFoundError:
        pass


def remove_leftover_tmp_files(run_dir: PathLike) -> list[Path]:
    """Delete the temp files (``.<name>.*.tmp``) of atomic writes that a kill interrupted; only
    the process that owns the run directory may call this (a live writer's file would vanish)."""
    removed = []
    for tmp in RunDir(run_dir).path.glob(".*.tmp"):
        try:
            tmp.unlink()
            removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed


# ----------------------------------------------------------------------------------------- reads


def read_json(path: PathLike, *, missing_ok: bool = False) -> Optional[dict[str, Any]]:
    """Parse a JSON object; a missing file is None (if ``missing_ok``), anything else unreadable raises."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        if missing_ok:
            return None
        raise RunDirError(f"run dir {path.parent}: {path.name} is missing") from None
    return _json_object(text, path, path.name)


def _json_object(text: str, path: Path, what: str) -> dict[str, Any]:
    """``text`` as a JSON object, or a RunDirError naming ``what`` (a file or one of its lines)."""
    try:
        obj = json.loads(text)
        if not isinstance(obj, dict):
            raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    except ValueError as exc:
        raise RunDirError(
            f"run dir {path.parent}: {what} is corrupted ({one_line(exc, limit=200)}); "
            f"delete it{_fix_for(path.name)}"
        ) from None
    return obj


def _fix_for(name: str) -> str:
    return {
        "result.json": " to retrain (or resume) the run",
        "checkpoint.pt": " to restart the run from scratch",
        "metrics.jsonl": " (and checkpoint.pt) to restart the run from scratch",
        "config.json": " and the run directory, then launch the job again",
        "job.json": " and the run directory, then launch the job again",
    }.get(name, "")


def read_jsonl(path: PathLike) -> list[dict[str, Any]]:
    """All rows of a JSON-lines file ([] when missing); a bad line raises RunDirError."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [_json_object(line, path, f"{path.name} line {i}")
            for i, line in enumerate(lines, 1) if line.strip()]


def read_checkpoint(path: PathLike, map_location: Any = "cpu") -> Optional[dict[str, Any]]:
    """Load checkpoint.pt (a run dir or the file itself); None when there is none yet."""
    import torch

    path = Path(path)
    if path.is_dir():
        path = RunDir(path).checkpoint
    if not path.exists():
        return None
    try:
        # weights_only: the training loop stores only tensors and plain Python values, so the safe
        # unpickler suffices and a foreign/malicious file cannot execute code.
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(ckpt, dict) or "model" not in ckpt:
            raise ValueError("not an mpvgbench checkpoint (no 'model' entry)")
    except Exception as exc:  # zip/pickle/EOF errors all mean the same thing to the user
        if is_interruption(exc):
            raise  # a time-out signal landed during the load: the file is fine
        raise RunDirError(
            f"run dir {path.parent}: {path.name} is corrupted ({type(exc).__name__}: "
            f"{one_line(exc, limit=200)}); delete it to restart the run from scratch"
        ) from None
    return ckpt


def is_interruption(exc: BaseException) -> bool:
    """An exception raised into the process from outside (a signal handler: submitit's
    ``UncompletedJobError`` on a last time-out, KeyboardInterrupt, SystemExit), not by the work."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return True
    try:
        from submitit.core.utils import UncompletedJobError
    except ImportError:  # pragma: no cover - submitit is a dependency
        return False
    return isinstance(exc, UncompletedJobError)


def read_config(run_dir: PathLike) -> Any:
    """config.json as a TrainConfig."""
    from pydantic import ValidationError

    from mpvgbench.config import TrainConfig

    rd = RunDir(run_dir)
    data = read_json(rd.config)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        from mpvgbench.errors import first_validation_error

        raise RunDirError(
            f"run dir {rd.path}: config.json is not a valid TrainConfig "
            f"({first_validation_error(exc, model=TrainConfig)}); "
            "delete the run directory and launch the job again"
        ) from None


# Operational job.json settings (never part of the job key), their defaults, and what they mean:
# amp/compile: auto|on|off (train.train_job); checkpoints every N steps and/or M minutes.
JOB_OPERATIONAL_DEFAULTS: dict[str, Any] = {
    "amp": "auto",
    "compile": "auto",
    "checkpoint_every_steps": None,
    "checkpoint_every_min": 10.0,
}


def read_job(run_dir: PathLike) -> dict[str, Any]:
    """job.json with defaults filled in: key, data_root, device, num_workers."""
    rd = RunDir(run_dir)
    job = read_json(rd.job)
    assert job is not None
    job.setdefault("data_root", None)
    job.setdefault("device", "auto")
    job.setdefault("num_workers", 0)
    for name, default in JOB_OPERATIONAL_DEFAULTS.items():
        job.setdefault(name, default)
    if job["device"] not in ("auto", "cpu", "cuda") and not str(job["device"]).startswith("cuda:"):
        raise RunDirError(
            f"run dir {rd.path}: job.json has device {job['device']!r}; use auto, cpu or cuda"
        )
    for name in ("amp", "compile"):
        if job[name] not in ("auto", "on", "off"):
            raise RunDirError(f"run dir {rd.path}: job.json has {name} {job[name]!r}; use auto, on or off")
    return job


def read_result(run_dir: PathLike) -> Optional[dict[str, Any]]:
    return read_json(RunDir(run_dir).result, missing_ok=True)


def is_finished(run_dir: PathLike) -> bool:
    """A run is finished iff result.json exists and parses (architecture.md)."""
    try:
        return read_result(run_dir) is not None
    except RunDirError:
        return False


# --------------------------------------------------------------------------------- environment


def _git(args: list[str], cwd: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5,
                             check=True, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):  # no git, not a repo, timeout
        return None
    return out.stdout.strip()


def git_revision() -> dict[str, Any]:
    """``{"git_commit", "git_dirty", "git_root"}`` of the code being benchmarked: the working
    directory when it is a git checkout (the user's experiment repo), else the checkout
    mpvgbench itself runs from (`pip install -e`); Nones when neither is one."""
    for where in (os.getcwd(), str(Path(__file__).resolve().parent)):
        commit = _git(["rev-parse", "HEAD"], where)
        if commit:
            status = _git(["status", "--porcelain", "--untracked-files=no"], where)
            return {"git_commit": commit, "git_dirty": None if status is None else bool(status),
                    "git_root": _git(["rev-parse", "--show-toplevel"], where)}
    return {"git_commit": None, "git_dirty": None, "git_root": None}


def collect_env(device: Optional[str] = None, num_processes: int = 1,
                run_dir: Optional[PathLike] = None) -> dict[str, Any]:
    """Where a result came from. Cheap and never raises (each field falls back to None)."""
    env: dict[str, Any] = {
        "host": None,
        "torch": None,
        "timm": None,
        "python": platform.python_version(),
        "device": device,
        "git_commit": None,
        "git_dirty": None,
        "num_processes": num_processes,
    }
    try:
        env["host"] = socket.gethostname()
    except Exception:
        pass
    for name in ("torch", "timm"):
        try:  # the loaded module's version; package metadata avoids importing timm (seconds)
            mod = sys.modules.get(name)
            env[name] = str(mod.__version__) if mod is not None else importlib.metadata.version(name)
        except Exception:
            pass
    try:
        import torch

        if device is not None and device.startswith("cuda") and torch.cuda.is_available():
            env["device"] = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    except Exception:
        pass
    # What the coordinator recorded in job.json (executors.base.source_revision: a Slurm job's
    # node may not even have the checkout); else, here: the user's working directory when it is
    # a git repository, or the repository mpvgbench itself runs from (`pip install -e`).
    source = {}
    if run_dir is not None:
        try:
            source = (read_json(RunDir(run_dir).job, missing_ok=True) or {}).get("source") or {}
        except RunDirError:
            source = {}
    if not (isinstance(source, dict) and source.get("git_commit")):
        source = git_revision()
    if source.get("git_commit"):
        env["git_commit"], env["git_dirty"] = source["git_commit"], source.get("git_dirty")
        env["git_repo"] = source.get("git_root")
    return env


__all__ = [
    "RunDir",
    "RunDirError",
    "atomic_torch_save",
    "atomic_write_json",
    "atomic_write_jsonl",
    "collect_env",
    "is_finished",
    "is_interruption",
    "remove_leftover_tmp_files",
    "retire_stale_error",
    "read_checkpoint",
    "read_config",
    "read_job",
    "read_json",
    "read_jsonl",
    "read_result",
]
