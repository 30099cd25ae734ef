"""The GPU paths of the dense loop on CPU: bf16 autocast end to end, and the ViT-Adapter as one
compiled graph (no graph breaks) that trains and keeps its parameter names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mpvgbench.downstream.train_parts import dense_backbone
from mpvgbench.errors import ConfigError
from mpvgbench.rundir import read_checkpoint, read_jsonl
from mpvgbench.train import train_job
from tests.downstream import tiny


@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_bf16_autocast_trains_and_evaluates(tmp_path: Path, task: str) -> None:
    config, factory = ((tiny.ade_config(max_iters=2), tiny.tiny_segmenter) if task == "segmentation"
                       else (tiny.coco_config(max_steps_per_epoch=1), tiny.tiny_detector))
    result = train_job(config, tmp_path, device="cpu", amp="on", compile="off",
                              checkpoint_every_min=None, model_factory=factory)
    assert result["env"]["amp"] is True and result["env"]["compiled"] is False
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert rows and all(torch.isfinite(torch.tensor(r["train_loss"])) for r in rows)
    ckpt = read_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt is not None and all(t.dtype != torch.bfloat16 for t in ckpt["model"].values())  # fp32 weights


def test_auto_keeps_cpu_runs_fp32_and_eager(tmp_path: Path) -> None:
    result = train_job(tiny.ade_config(max_iters=1), tmp_path, device="cpu", checkpoint_every_min=None,
                              model_factory=tiny.tiny_segmenter)
    assert result["env"]["amp"] is False and result["env"]["compiled"] is False
    with pytest.raises(ConfigError, match="use auto, on or off"):
        train_job(tiny.ade_config(max_iters=1), tmp_path / "bad", device="cpu", amp="yes",
                         model_factory=tiny.tiny_segmenter)


@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_the_adapter_is_one_graph(tmp_path: Path, task: str) -> None:
    windows = (2, None, 2, None) if task == "detection" else (None,) * 4  # the detection layout: windows + global
    if task == "segmentation":
        model = tiny.tiny_segmenter(tiny.ade_config(), tmp_path, window_sizes=windows)
    else:
        model = tiny.tiny_detector(tiny.coco_config(), tmp_path)
        model.backbone.body.config = type(model.backbone.body.config)(  # type: ignore[union-attr]
            **{**model.backbone.body.config.__dict__, "window_sizes": windows})  # type: ignore[union-attr]
    torch._dynamo.reset()
    explained = torch._dynamo.explain(dense_backbone(model))(torch.rand(2, 3, 64, 96))
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.slow
def test_compiled_adapter_trains_and_checkpoints_under_plain_names(tmp_path: Path) -> None:
    torch._dynamo.reset()
    result = train_job(tiny.ade_config(max_iters=2), tmp_path / "compiled", device="cpu", compile="on",
                              checkpoint_every_min=None, model_factory=tiny.tiny_segmenter_without_dropout)
    eager = train_job(tiny.ade_config(max_iters=2), tmp_path / "eager", device="cpu", compile="off",
                             checkpoint_every_min=None, model_factory=tiny.tiny_segmenter_without_dropout)
    assert result["env"]["compiled"] is True
    c, e = read_checkpoint(tmp_path / "compiled" / "checkpoint.pt"), read_checkpoint(tmp_path / "eager" / "checkpoint.pt")
    assert c is not None and e is not None and c["model"].keys() == e["model"].keys()
    rows_c, rows_e = read_jsonl(tmp_path / "compiled" / "metrics.jsonl"), read_jsonl(tmp_path / "eager" / "metrics.jsonl")
    for a, b in zip(rows_c, rows_e):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
