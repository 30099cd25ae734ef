"""The dense-prediction task: ``train_job`` picks it for coco/ade20k jobs; it keeps the
run-directory contract (result schema, metrics per evaluation) and loads a classification parent
by ``init_from``. (What every task shares, resume and checkpoints, is tested once per task in
test_loop.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mpvgbench.downstream.train_parts import build_dense_model, pretrain_img_size
from mpvgbench.errors import SpecError
from mpvgbench.matrix import expand
from mpvgbench.rundir import atomic_torch_save, read_checkpoint, read_jsonl
from mpvgbench.spec import parse_spec
from mpvgbench.store_schema import result_problem
from mpvgbench.train import task_for, train_job
from mpvgbench.train import dense as dense_module
from mpvgbench.train.classification import ClassificationTask
from mpvgbench.train.dense import DenseTask
from tests.downstream.tiny import ade_config as _ade_config
from tests.downstream.tiny import coco_config as _coco_config
from tests.downstream.tiny import tiny_segmenter as _tiny_segmenter


def test_the_task_follows_the_dataset() -> None:
    assert task_for(_ade_config()) is DenseTask and task_for(_coco_config()) is DenseTask
    assert task_for(_ade_config().model_copy(update={"dataset": "digits"})) is ClassificationTask


def test_segmentation_keeps_the_run_dir_contract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dense_module, "build_dense_model", _tiny_segmenter)  # the worker's path: no factory
    config = _ade_config()
    result = train_job(config, tmp_path / "run", device="cpu", checkpoint_every_min=None)
    assert result_problem(result) is None
    assert result["task"] == "segmentation" and result["iterations"] == 2
    assert result["final_top1"] == result["miou"] == result["final_miou"]
    assert result["best_top1"] == result["best_miou"] >= result["final_miou"]
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [row["iteration"] for row in rows] == [1, 2] and [row["epoch"] for row in rows] == [1, 2]
    assert json.loads((tmp_path / "run" / "result.json").read_text()) == json.loads(json.dumps(result))
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt is not None and ckpt["key"] == config.key() and ckpt["loop"]["num_updates"] == 2
    assert json.loads((tmp_path / "run" / "progress.json").read_text())["epoch"] == 2


def test_init_from_loads_the_classification_parent_on_its_own_grid(tmp_path: Path) -> None:
    from mpvgbench.models import build_model

    parent = build_model("deit_tiny", "mpvg", num_classes=10, img_size=32)
    atomic_torch_save(tmp_path / "parentkey" / "checkpoint.pt", {"model": parent.state_dict()})
    config = _ade_config().model_copy(update={"init_from": "parentkey"})
    assert pretrain_img_size("parentkey", tmp_path / "child") == 32
    model = build_dense_model(config, tmp_path / "child")
    vit = model.backbone.vit  # type: ignore[union-attr]
    loaded = vit.state_dict()
    for name, tensor in parent.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(loaded[name], tensor), name
    added = set(loaded) - set(parent.state_dict())  # the adapter's layer-scale gammas, at 1
    assert added and all(".ls" in name and torch.all(loaded[name] == 1) for name in added)


def test_dense_cells_are_deit_tiny_only_and_smoke_keeps_the_task() -> None:
    base = {"name": "t", "methods": ["mpvg"], "datasets": ["coco"], "seeds": [0],
            "init_from": {"dataset": "imagenet"}}
    with pytest.raises(SpecError, match="deit_tiny only"):
        expand(parse_spec({**base, "models": ["deit_small"]}))
    jobs = expand(parse_spec({**base, "models": ["deit_tiny"]}), smoke=True)
    parent, child = jobs
    assert (parent.dataset, child.dataset) == ("imagenet_synthetic", "coco_synthetic")  # smoke: real-format stand-ins
    assert child.depends_on == parent.key and child.config.num_classes == 3
    full = expand(parse_spec({**base, "models": ["deit_tiny"]}))[1].config
    assert (full.img_size, full.num_classes, full.recipe.lr, full.recipe.epochs) == (1024, 80, 1e-4, 36)


def test_the_open_questions_are_recipe_options_recorded_with_the_run(tmp_path) -> None:
    from mpvgbench.downstream.train_parts import build_dense_model, dense_settings

    from tests.downstream.tiny import ade_config, coco_config

    config = ade_config(adapter_last_ln="apply", batch_size=4)
    assert dense_settings(config) == {"last_ln": "apply", "batch": 4, "batching": "shuffled"}
    assert dense_settings(coco_config()) == {"last_ln": "skip", "batch": 2, "batching": "orientation groups"}
    assert build_dense_model(config, tmp_path).backbone.config.last_ln == "apply"
