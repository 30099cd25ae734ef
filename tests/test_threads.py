"""threads.plan_threads: the CPUs a job was given, whichever executor gave them; a worker run
under Slurm's variables records what it used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mpvgbench.config import Recipe, TrainConfig
from mpvgbench.threads import job_cpus, plan_threads
from tests.jobs import prepare_job

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def many_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)


@pytest.mark.parametrize(
    ("environ", "cpus", "source"),
    [
        ({"SLURM_CPUS_PER_TASK": "8", "SLURM_CPUS_ON_NODE": "32"}, 8, "SLURM_CPUS_PER_TASK"),
        ({"SLURM_CPUS_ON_NODE": "16", "SLURM_NTASKS_PER_NODE": "4"}, 4, "SLURM_CPUS_ON_NODE"),
        ({"SLURM_CPUS_ON_NODE": "12", "SLURM_TASKS_PER_NODE": "2(x3)"}, 6, "SLURM_CPUS_ON_NODE"),
        ({"MPVGBENCH_CPUS": "3", "SLURM_CPUS_PER_TASK": "8"}, 3, "MPVGBENCH_CPUS"),  # local in Slurm
        ({}, 32, "sched_getaffinity"),
        ({"SLURM_CPUS_PER_TASK": "64"}, 32, "SLURM_CPUS_PER_TASK"),  # never more than we may use
        ({"SLURM_CPUS_PER_TASK": "garbage"}, 32, "sched_getaffinity"),
    ],
)
def test_job_cpus(many_cpus: None, environ: dict[str, str], cpus: int, source: str) -> None:
    assert job_cpus(environ) == (cpus, source)


@pytest.mark.parametrize(
    ("cpus", "requested", "threads", "workers"),
    [(8, 4, 4, 4), (8, 10, 1, 7), (1, 4, 1, 0), (2, 0, 2, 0), (16, 8, 8, 8)],
)
def test_loader_workers_come_from_the_rest(many_cpus: None, cpus: int, requested: int, threads: int,
                                           workers: int) -> None:
    plan = plan_threads(requested, {"SLURM_CPUS_PER_TASK": str(cpus)})
    assert (plan.cpus, plan.threads, plan.loader_workers) == (cpus, threads, workers)


def test_explicit_omp_num_threads_wins(many_cpus: None) -> None:
    plan = plan_threads(2, {"SLURM_CPUS_PER_TASK": "8", "OMP_NUM_THREADS": "3"})
    assert (plan.threads, plan.loader_workers) == (3, 2) and "OMP_NUM_THREADS" in plan.source


def test_worker_under_slurm_records_threads_and_loader_workers(tmp_path: Path) -> None:
    config = TrainConfig(
        model="vit_micro", method={"base": "mpvg"}, dataset="digits", img_size=8, num_classes=10, seed=1,
        recipe=Recipe(epochs=1, warmup_epochs=0, batch_size=32, lr_base_batch=None, ema=False,
                      max_steps_per_epoch=1, eval_max_batches=1),
    )
    run = prepare_job(tmp_path, config, num_workers=3)
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MPVGBENCH_CPUS", "RANK", "WORLD_SIZE")}
    env.update(PYTHONPATH=str(ROOT), SLURM_CPUS_PER_TASK="1")
    done = subprocess.run([sys.executable, "-m", "mpvgbench.worker", str(run)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    recorded = json.loads((run / "result.json").read_text())["env"]
    assert (recorded["threads"], recorded["loader_workers"]) == (1, 0)  # 1 CPU: none left for loaders
