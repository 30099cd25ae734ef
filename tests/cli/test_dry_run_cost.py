"""`run --dry-run` checks what `run` checks (issue 22, observation 8) and says what the matrix
will cost."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .conftest import invoke, jobs_of, write_spec


def test_a_dry_run_refuses_a_missing_data_root_like_run(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", datasets=["cifar100"],
                      data={"roots": {"cifar100": str(tmp_path / "nowhere")}})
    for args in (["--dry-run"], []):
        res = invoke("run", spec, *args)
        assert res.exit_code == 2, res.output
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "data.roots.cifar100" in lines[0], res.output
        assert "Traceback" not in res.output
    assert sorted(os.listdir(tmp_path)) == ["s.yaml"]  # no database, no runs dir


def test_a_dry_run_refuses_cuda_where_there_is_none(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    spec = write_spec(tmp_path / "s.yaml", executor={"device": "cuda"})
    res = invoke("run", spec, "--dry-run")
    assert res.exit_code == 2 and "no CUDA" in res.output, res.output
    assert sorted(os.listdir(tmp_path)) == ["s.yaml"]


def test_a_smoke_dry_run_needs_no_data_root(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", datasets=["cifar100"])  # no data.roots at all
    assert invoke("run", spec, "--dry-run").exit_code == 2
    res = invoke("run", spec, "--dry-run", "--smoke")
    assert res.exit_code == 0, res.output
    assert "1 jobs: 1 new" in res.output
    assert not (tmp_path / ".smoke").exists()


def test_the_dry_run_reads_a_measured_throughput(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = write_spec(tmp_path / "s.yaml", recipe={"epochs": 3, "batch_size": 100})
    monkeypatch.setattr("mpvgbench.cli.run._local_gpu_name", lambda device, local: "Test GPU")
    (job,) = jobs_of(spec)
    (tmp_path / "rates.json").write_text(json.dumps({"Test GPU": [
        {"model": "vit_micro", "method": "default", "img_size": job.config.img_size, "train_img_s": 0.1}]}))
    monkeypatch.setenv("MPVGBENCH_THROUGHPUT", str(tmp_path / "rates.json"))
    res = invoke("run", spec, "--dry-run")
    assert res.exit_code == 0, res.output
    hours = 1437 // 100 * 100 * 3 / 0.1 / 3600  # 11.67
    assert f"{hours:.2g}*" in res.output and f"{hours:.2g} GPU-hours" in res.output, res.output
    assert "measured img/s on Test GPU" in res.output and "(assumed)" not in res.output


def test_a_broken_throughput_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = write_spec(tmp_path / "s.yaml")
    monkeypatch.setattr("mpvgbench.cli.run._local_gpu_name", lambda device, local: "Test GPU")
    (tmp_path / "throughput.json").write_text('{"Test GPU": [{"model": "vit_micro"}]}')  # the default place
    res = invoke("run", spec, "--dry-run")
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "throughput.json" in lines[0] and "rewrite or remove it" in lines[0], res.output
