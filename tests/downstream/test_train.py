"""The dense-prediction trainer on the spine: ``trainer.train`` dispatches coco/ade20k jobs to
``train_downstream``, which keeps the run-directory contract (result schema, metrics per
evaluation, checkpoint, exact resume) and loads a classification parent by ``init_from``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from mpvgbench.downstream import train as downstream_train
from mpvgbench.downstream.train_parts import build_dense_model, pretrain_img_size
from mpvgbench.errors import SpecError
from mpvgbench.matrix import expand
from mpvgbench.rundir import atomic_torch_save, read_checkpoint, read_jsonl
from mpvgbench.spec import parse_spec
from mpvgbench.store_schema import result_problem
from mpvgbench.trainer import train
from tests.downstream.tiny import ade_config as _ade_config
from tests.downstream.tiny import tiny_segmenter as _tiny_segmenter

def test_train_dispatches_segmentation_and_keeps_the_run_dir_contract(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(downstream_train, "build_dense_model", _tiny_segmenter)
    config = _ade_config()
    result = train(config, tmp_path / "run", device="cpu", checkpoint_every_min=None)
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


def test_a_killed_run_resumes_to_the_same_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(downstream_train, "build_dense_model", _tiny_segmenter)
    config = _ade_config()
    whole = train(config, tmp_path / "whole", device="cpu", checkpoint_every_min=None)

    class Killed(Exception):
        pass

    def kill_after_first_evaluation(progress: dict[str, Any]) -> None:
        if progress["epoch"] == 1 and (tmp_path / "killed" / "metrics.jsonl").stat().st_size:
            raise Killed

    with pytest.raises(Killed):
        train(config, tmp_path / "killed", device="cpu", checkpoint_every_min=None,
              progress_callback=kill_after_first_evaluation)
    resumed = train(config, tmp_path / "killed", device="cpu", checkpoint_every_min=None)
    assert resumed["final_miou"] == whole["final_miou"]
    assert [r["train_loss"] for r in read_jsonl(tmp_path / "killed" / "metrics.jsonl")] == \
        [r["train_loss"] for r in read_jsonl(tmp_path / "whole" / "metrics.jsonl")]


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
