"""``mpvgbench.ddp_launch``: torchrun whose agent and workers die with the executor that started
it, and whose workers accept the agent as their parent (plain torchrun made them exit at once)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpvgbench.executors.local import process_state

ROOT = Path(__file__).resolve().parents[1]

RANK_SCRIPT = """
import os, pathlib, sys, time
from mpvgbench.worker import die_with_parent
die_with_parent()  # what mpvgbench.worker does first
pathlib.Path(sys.argv[1], f"rank{os.environ['RANK']}.pid").write_text(str(os.getpid()))
time.sleep(float(sys.argv[2]))
"""

EXECUTOR = """
import os, subprocess, sys, time
env = dict(os.environ, MPVGBENCH_PARENT_PID=str(os.getpid()))
agent = subprocess.Popen([sys.executable, "-m", "mpvgbench.ddp_launch", "--standalone", "--nproc_per_node=2",
                          sys.argv[1], sys.argv[2], sys.argv[3]], env=env)
print(agent.pid, flush=True)
sys.exit(agent.wait())
"""


def _gone(pid: int) -> bool:
    return process_state(pid) in (None, "Z")  # a zombie nobody reaped is dead


def _start(tmp_path: Path, sleep_s: float) -> tuple[subprocess.Popen[str], int]:
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    executor = subprocess.Popen([sys.executable, "-c", EXECUTOR, str(tmp_path / "rank.py"), str(tmp_path), str(sleep_s)],
                                stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    assert executor.stdout is not None
    return executor, int(executor.stdout.readline())


def _wait(condition, timeout_s: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_workers_under_the_launcher_run_to_the_end(tmp_path: Path) -> None:
    executor, _ = _start(tmp_path, sleep_s=0.5)
    assert executor.wait(timeout=120) == 0  # no rank exited with "its executor is gone"
    assert sorted(p.name for p in tmp_path.glob("rank*.pid")) == ["rank0.pid", "rank1.pid"]


@pytest.mark.slow
def test_a_killed_executor_takes_the_agent_and_its_workers_with_it(tmp_path: Path) -> None:
    executor, agent = _start(tmp_path, sleep_s=300)
    try:
        assert _wait(lambda: len(list(tmp_path.glob("rank*.pid"))) == 2, 120), "the ranks did not start"
        ranks = [int(p.read_text()) for p in tmp_path.glob("rank*.pid")]
        executor.kill()  # kill -9: no chance to clean up
        executor.wait()
        assert _wait(lambda: all(_gone(pid) for pid in [agent, *ranks]), 30), \
            {pid: process_state(pid) for pid in [agent, *ranks]}
    finally:
        for pid in [agent, *[int(p.read_text()) for p in tmp_path.glob("rank*.pid")]]:
            if not _gone(pid):
                os.kill(pid, 9)


def test_a_launcher_whose_executor_is_already_gone_exits_at_once() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPVGBENCH_PARENT_PID": "1"}  # not our parent
    proc = subprocess.run([sys.executable, "-m", "mpvgbench.ddp_launch", "--standalone", "--nproc_per_node=2",
                           "-c", "pass"], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode != 0 and "is gone" in proc.stderr
