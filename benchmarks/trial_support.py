"""What the adversarial trial's cases share (benchmarks/trial_adversarial.py): running
mpvgbench as a process or in this one, the checks every case makes, and a trained baseline run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's mpvgbench, in this process as in the CLI processes
FAST = {"name": "fast", "models": ["vit_micro"], "methods": ["default"], "datasets": ["digits"], "seeds": [0],
        "recipe": {"epochs": 3, "max_steps_per_epoch": 8}, "data": {"num_workers": 0},
        "executor": {"name": "local", "device": "cpu"}}
BUG = "this is a bug"


@dataclass
class Case:
    category: str
    name: str
    check: Callable[[Path], None]  # raises AssertionError (or anything) when mpvgbench broke
    timeout_s: float = 60.0


class Broke(AssertionError):
    pass


# ------------------------------------------------------------------------------ helpers


def cli(*args: Any, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """mpvgbench as a user runs it: a process of its own (a hang is killed by the timeout)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    env.pop("MPVGBENCH_DB", None)
    return subprocess.run([sys.executable, "-m", "mpvgbench", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL, cwd=cwd)


def invoke(*args: Any) -> Any:
    """mpvgbench in this process (fast: no torch import per case); exit code and output."""
    from click.testing import CliRunner

    from mpvgbench.cli import cli as group

    return CliRunner().invoke(group, [str(a) for a in args], catch_exceptions=True, prog_name="mpvgbench")


def expect_user_error(result: Any, *words: str) -> None:
    code = getattr(result, "exit_code", getattr(result, "returncode", None))
    output = getattr(result, "output", None) or (getattr(result, "stdout", "") + getattr(result, "stderr", ""))
    if code != 2 or "Traceback" in output or BUG in output:
        raise Broke(f"exit {code}: {output.strip()[-300:]}")
    for word in words:
        if word not in output:
            raise Broke(f"{word!r} not in: {output.strip()[-300:]}")


def expect_no_bug(result: Any, codes: tuple[int, ...] = (0, 1, 2)) -> None:
    code = getattr(result, "exit_code", getattr(result, "returncode", None))
    output = getattr(result, "output", None) or (getattr(result, "stdout", "") + getattr(result, "stderr", ""))
    if code not in codes or "Traceback" in output or BUG in output:
        raise Broke(f"exit {code}: {output.strip()[-300:]}")


def write(path: Path, doc: Any) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False) if not isinstance(doc, (str, bytes)) else doc) \
        if not isinstance(doc, bytes) else path.write_bytes(doc)
    return path


def attempts(run_dir: Path) -> int:
    """Worker starts recorded in the run's log (one header line each)."""
    try:
        return (run_dir / "stdout.log").read_text(errors="replace").count("===== mpvgbench attempt")
    except OSError:
        return 0


BASELINE: dict[str, Any] = {}


def baseline(tmp: Path) -> tuple[Path, str]:
    """A finished run (trained once per trial, copied into each case's directory)."""
    if not BASELINE:
        home = Path(tempfile.mkdtemp(prefix="trial-base-"))
        write(home / "fast.yaml", FAST)
        proc = cli("run", home / "fast.yaml", "--executor", "debug", "--db", home / "results.db",
                   "--runs-dir", home / "runs", timeout=300)
        assert proc.returncode == 0, proc.stderr
        from mpvgbench.matrix import expand
        from mpvgbench.spec import load_spec

        (job,) = expand(load_spec(home / "fast.yaml"))
        BASELINE.update(home=home, key=job.key)
    home, key = BASELINE["home"], BASELINE["key"]
    for name in ("fast.yaml", "results.db"):
        shutil.copy(home / name, tmp / name)
    shutil.copytree(home / "runs", tmp / "runs")
    return tmp / "runs" / key, key


def spawn(tmp: Path, *args: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("MPVGBENCH_DB", None)
    return subprocess.Popen([sys.executable, "-m", "mpvgbench", *map(str, args)], cwd=tmp, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def job_keys(tmp: Path, spec: Path) -> list[str]:
    from mpvgbench.matrix import expand
    from mpvgbench.spec import load_spec

    return [job.key for job in expand(load_spec(spec))]


def workers_on(run_dir: Path) -> int:
    """Worker processes (not their forks) whose command line names ``run_dir``."""
    count = 0
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mpvgbench.worker" in argv and str(run_dir).encode() in argv:
            count += 1
    return count
