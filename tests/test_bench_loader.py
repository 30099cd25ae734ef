"""benchmarks/bench_loader.py times every shipped pipeline per core and turns gpu_check's model
throughput into cores per GPU; gpu_check's data-bound verdict follows from the two."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_loader  # noqa: E402


def test_shipped_pipelines_cover_every_recipe() -> None:
    names = {p.name: p for p in bench_loader.shipped_pipelines()}
    assert {"imagenet-224-train", "imagenet-224-eval", "cifar100-32-train", "cifar100-32-eval",
            "cifar100-224-train", "cifar100-224-eval"} <= set(names)
    assert {"deit_tiny", "swin_tiny", "ceit_tiny", "t2t_vit_7"} <= names["imagenet-224-train"].models
    assert names["cifar100-32-train"].models == {"vit_lite_7_4"}


def test_rates_and_cores_per_gpu(tmp_path: Path) -> None:
    out = tmp_path / "loader.json"
    gpu = tmp_path / "gpu.json"
    gpu.write_text(json.dumps({"device": "cuda", "results": [
        {"model": "vit_lite_7_4", "method": "default", "train_img_s": 50_000.0},
        {"model": "vit_lite_7_4", "method": "mpvg", "train_img_s": 1.0},  # defaults only
    ]}))
    assert bench_loader.main(["--images", "10", "--seconds", "0.3", "--only", "cifar100-32-train",
                              "cifar100-32-eval", "--gpu-json", str(gpu), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {r["pipeline"]: r for r in report["pipelines"]}
    assert set(rows) == {"cifar100-32-train", "cifar100-32-eval"}
    assert all(r["img_s_per_core"] > 0 and r["decode_img_s_per_core"] > 0 for r in rows.values())
    (need,) = report["cores_per_gpu"]
    assert need["model"] == "vit_lite_7_4" and need["pipeline"] == "cifar100-32-train"
    assert need["cores_per_gpu"] == -(-50_000 // rows["cifar100-32-train"]["img_s_per_core"])


@pytest.mark.parametrize("gpu_img_s, bound", [(1e9, True), (1e-3, False)])
def test_gpu_check_says_whether_training_is_data_bound(gpu_img_s: float, bound: bool) -> None:
    import gpu_check

    report = {"device": "cuda", "results": [{"model": "vit_lite_7_4", "method": "default", "train_img_s": gpu_img_s}]}
    check = gpu_check.data_bound_check(report, seconds=0.3, images=10)
    (model,) = check["models"]
    assert model["data_bound"] is bound and model["cores_here_per_gpu"] >= 1


@pytest.mark.slow  # DALI's graph build takes ~10-20 s per pipeline on the 2-core machine
def test_gpu_check_times_the_dali_pipelines_in_cpu_mode() -> None:
    pytest.importorskip("nvidia.dali")
    import gpu_check
    import torch

    check = gpu_check.dali_check(torch.device("cpu"), images=10, batches=2, batch_size=4)
    assert [row["pipeline"] for row in check["pipelines"]] == list(gpu_check.DALI_PIPELINES)
    assert all(row["img_s"] > 0 and row["finite"] for row in check["pipelines"])
