"""The catalog: one torch-free table of models and datasets that every other module reads."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mpvgbench import catalog, data, recipes
from mpvgbench.catalog import DATASET_TABLE, TASKS, dataset_info, task_of


def test_recipes_and_data_read_the_catalog() -> None:
    # one table: the old names are the catalog's objects, not copies that can drift
    assert recipes.DATASET_INFO is DATASET_TABLE and data.DATASETS is DATASET_TABLE
    assert recipes.dataset_info is dataset_info and data.dataset_info is dataset_info
    assert recipes.DOWNSTREAM_TASKS == {"coco": "detection", "coco_synthetic": "detection",
                                        "ade20k": "segmentation", "ade20k_synthetic": "segmentation"}
    assert recipes.SMOKE_DATASETS == {  # each a generated stand-in in its dataset's file format
        "cifar100": "cifar100_synthetic", "imagenet": "imagenet_synthetic", "imagefolder": "imagenet_synthetic",
        "coco": "coco_synthetic", "ade20k": "ade20k_synthetic"}
    assert recipes.smoke_dataset("digits") == "synthetic" and recipes.smoke_dataset("imagenet_synthetic") == "imagenet_synthetic"


def test_dataset_facts() -> None:
    coco, ade, digits = dataset_info("coco"), dataset_info("ade20k"), dataset_info("digits")
    assert (coco.task, coco.primary_metric, coco.smoke_stand_in) == ("detection", "ap_box", "coco_synthetic")
    assert (ade.task, ade.primary_metric) == ("segmentation", "miou")
    assert (digits.task, digits.primary_metric, digits.root_field) == ("classification", "top1", None)
    assert dataset_info("cifar100").root_field == "data.roots.cifar100"
    # a stand-in keeps its dataset's task and is its own smoke data
    for name, stand_in in recipes.SMOKE_DATASETS.items():
        assert dataset_info(stand_in).task == dataset_info(name).task
        assert dataset_info(stand_in).smoke_stand_in is None and not dataset_info(stand_in).needs_root
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; allowed: digits, cifar100"):
        dataset_info("mnist")


def test_tasks_name_their_primary_metric() -> None:
    for task in TASKS.values():
        assert task.primary_metric in task.metrics
    assert catalog.METRICS == ("top1", "top5", "ap_box", "ap_mask", "miou")
    assert set(catalog.METRIC_LABELS) == set(catalog.METRICS)
    assert task_of("ade20k_synthetic").primary_metric == "miou"
    assert task_of("a_dataset_of_a_newer_version").name == "classification"


def test_catalog_is_torch_free() -> None:
    code = "import sys, mpvgbench.catalog, mpvgbench.recipes; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
