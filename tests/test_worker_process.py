"""The worker's process set-up: it dies with the executor that started it (PR_SET_PDEATHSIG,
set by the worker itself from MPVGBENCH_PARENT_PID) and exits at once when that parent is gone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARMED_CHILD = (
    "import time; from mpvgbench.worker import die_with_parent; die_with_parent(); "
    "print('armed', flush=True); time.sleep(120)"
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux-only")


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")  # a zombie is dead too


def test_worker_dies_with_its_executor() -> None:
    parent_code = (
        "import os, subprocess, sys, time; "
        f"env = {{**os.environ, 'MPVGBENCH_PARENT_PID': str(os.getpid())}}; "
        f"p = subprocess.Popen([sys.executable, '-c', {ARMED_CHILD!r}], env=env); "
        "print(p.pid, flush=True); time.sleep(120)"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert parent.stdout.readline().strip() == "armed"
        assert _alive(child)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the worker outlived its executor"
    finally:
        parent.kill()


def test_worker_exits_when_its_parent_is_already_gone() -> None:
    done = subprocess.run([sys.executable, "-c", ARMED_CHILD], env=_env(MPVGBENCH_PARENT_PID="1"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and "armed" not in done.stdout
    assert "its executor (pid 1) is gone" in done.stderr


def test_without_the_variable_nothing_is_armed() -> None:
    env = _env()
    env.pop("MPVGBENCH_PARENT_PID", None)
    code = ARMED_CHILD.replace("time.sleep(120)", "import sys; sys.exit(0)")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "armed" in done.stdout
