"""`mpvgbench analyze` on a dense-prediction run (COCO, ADE20K): one line naming the classifier
to analyse instead, never a traceback from loading a detector into a classifier."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpvgbench.analyze_run import NotAnalysableError, load_model
from mpvgbench.config import Recipe, TrainConfig
from mpvgbench.methods import canonical_method_dict
from mpvgbench.store import Store
from tests.cli.conftest import fabricate_run, invoke, micro_config


def _dense_config(parent: str, dataset: str = "ade20k_synthetic") -> TrainConfig:
    return TrainConfig(model="deit_tiny", method=canonical_method_dict("mpvg"), dataset=dataset,
                       img_size=64, num_classes=3, seed=0, init_from=parent, recipe=Recipe(epochs=2))


@pytest.mark.parametrize("dataset,task,metric", [("ade20k_synthetic", "segmentation", "miou"),
                                                 ("coco_synthetic", "detection", "ap_box")])
def test_analyze_a_dense_run_names_its_classifier(tmp_path: Path, dataset: str, task: str, metric: str) -> None:
    with Store(tmp_path / "results.db") as store:
        parent = fabricate_run(store, tmp_path / "runs", micro_config(), top1=55.0)
        dense = fabricate_run(store, tmp_path / "runs", _dense_config(parent, dataset), top1=3.0,
                              primary_metric=metric, **{f"final_{metric}": 3.0, f"best_{metric}": 3.5})
    result = invoke("analyze", dense[:8], "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"Error: run {dense[:8]} is a {task} run ({dataset}, ViT-Adapter-Ti)")
    assert line.endswith(f"analyze the DeiT-Ti it was fine-tuned from: mpvgbench analyze {parent}")
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()
    with pytest.raises(NotAnalysableError, match=f"run {dense[:8]} is a {task} run"):
        load_model(tmp_path / "runs" / dense)


def test_analyze_skips_dense_runs_among_classifiers(tmp_path: Path) -> None:
    with Store(tmp_path / "results.db") as store:
        parent = fabricate_run(store, tmp_path / "runs", micro_config(), top1=55.0)
        dense = fabricate_run(store, tmp_path / "runs", _dense_config(parent), top1=3.0,
                              primary_metric="miou", final_miou=3.0, best_miou=3.5)
    # the classifier goes on to be analysed (and fails here only for want of a checkpoint)
    result = invoke("analyze", dense[:8], parent[:8], "--out", tmp_path / "out", "--device", "cpu")
    assert f"skipping run {dense[:8]} is a segmentation run" in result.output
    assert f"analysing {parent}" in result.output and "has no checkpoint.pt" in result.output
    assert result.exit_code == 2
