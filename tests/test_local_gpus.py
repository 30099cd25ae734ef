"""Local GPU scheduling without GPUs: the device count is faked, the workers are stand-ins that
record the CUDA_VISIBLE_DEVICES they were given (issue: every GPU path runs in CI)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

import mpvgbench.executors.local as local
from mpvgbench.errors import MpvgbenchError
from mpvgbench.executors.base import RunContext
from mpvgbench.executors.local import LocalExecutor, give_back_gpus, take_gpus
from mpvgbench.store import Store
from tests.cli.conftest import jobs_of, write_spec

# Record the GPUs and the time span, then finish (or die: the "die" marker in the run's config).
RECORD = (
    "import json, os, sys, time, pathlib; d = pathlib.Path(sys.argv[-1]); start = time.time(); "
    "time.sleep(float(os.environ.get('STAND_IN_SLEEP', '0.6'))); "
    "(d / 'gpus.json').write_text(json.dumps({'gpus': os.environ.get('CUDA_VISIBLE_DEVICES'), "
    "'start': start, 'end': time.time()})); "
    "die = json.loads((d / 'config.json').read_text())['seed'] == 0 and os.environ.get('STAND_IN_DIE'); "
    "sys.exit(3) if die else (d / 'result.json').write_text(json.dumps({'key': d.name, 'final_top1': 50.0, "
    "'best_top1': 50.0, 'epochs': 1, 'env': {}}))"
)


class StandIn(LocalExecutor):
    def worker_argv(self, run_dir: Path) -> list[str]:
        return [sys.executable, "-c", RECORD, str(run_dir)]


def launch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, gpus: int, workers: int, per_job: int,
           jobs: int, die: bool = False) -> list[dict]:
    monkeypatch.setattr(local, "visible_gpus", lambda: [str(i) for i in range(gpus)])
    if die:
        monkeypatch.setenv("STAND_IN_DIE", "1")
    spec = write_spec(tmp_path / "spec.yaml", seeds=list(range(jobs)))
    all_jobs = jobs_of(spec)
    with Store(tmp_path / "results.db") as store:
        store.register_jobs(all_jobs, "tiny")
        StandIn(workers=workers, processes_per_job=per_job).launch(
            all_jobs, store, RunContext(runs_root=tmp_path / "runs", device="cuda", max_infra_retries=0))
    return [json.loads((tmp_path / "runs" / job.key / "gpus.json").read_text()) for job in all_jobs]


def overlapping(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_concurrent_jobs_get_disjoint_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = launch(tmp_path, monkeypatch, gpus=4, workers=4, per_job=1, jobs=6)
    assert all(r["gpus"] in {"0", "1", "2", "3"} for r in records)
    for i, a in enumerate(records):
        for b in records[i + 1:]:
            if overlapping(a, b):
                assert a["gpus"] != b["gpus"]


def test_a_job_needing_k_gpus_waits_for_k_free_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = launch(tmp_path, monkeypatch, gpus=3, workers=3, per_job=2, jobs=3)
    assert all(len(r["gpus"].split(",")) == 2 for r in records)
    # 3 GPUs hold one 2-GPU job at a time: no two jobs ever overlap
    for i, a in enumerate(records):
        for b in records[i + 1:]:
            assert not overlapping(a, b)


def test_a_dead_job_frees_its_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = launch(tmp_path, monkeypatch, gpus=1, workers=1, per_job=1, jobs=3, die=True)
    assert [r["gpus"] for r in records] == ["0", "0", "0"]  # the job that died handed GPU 0 back


def test_too_few_gpus_for_one_job_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MpvgbenchError, match="needs 4 GPUs"):
        launch(tmp_path, monkeypatch, gpus=2, workers=1, per_job=4, jobs=1)


def test_gpu_bookkeeping() -> None:
    free = ["0", "1", "2", "3"]
    assert take_gpus(free, 2) == "0,1" and free == ["2", "3"]
    give_back_gpus(free, "0,1")
    assert take_gpus(free, 1, exactly="1") == "1" and sorted(free) == ["0", "2", "3"]
    assert take_gpus([], 1) is None


def test_ddp_jobs_run_under_torchrun_with_nproc_from_the_spec() -> None:
    argv = LocalExecutor(processes_per_job=2).worker_argv(Path("/runs/0123456789abcdef"))
    assert argv[1:5] == ["-m", "mpvgbench.ddp_launch", "--standalone", "--nproc_per_node=2"]
    assert argv[-3:] == ["-m", "mpvgbench.worker", "/runs/0123456789abcdef"] or argv[-2:] == [
        "mpvgbench.worker", "/runs/0123456789abcdef"]
