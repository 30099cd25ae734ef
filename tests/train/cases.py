"""The two tasks the shared loop tests run on, and what those tests compare.

Classification: vit_micro on sklearn's digits, 2 epochs of 4 steps (about a second a run).
Dense: the tiny ViT-Adapter UperNet of ``tests/downstream/tiny.py`` on generated ADE20K-format
images, 2 evaluation intervals of 2 iterations (a few seconds a run).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import torch

from mpvgbench.config import Recipe, TrainConfig
from mpvgbench.rundir import read_checkpoint, read_jsonl
from mpvgbench.train import train_job
from tests.downstream import tiny
from tests.jobs import TIMING


def make_config(**recipe: Any) -> TrainConfig:
    """A classification job: every random part of the recipe on (drop path, mixup/cutmix, EMA)."""
    base: dict[str, Any] = dict(
        epochs=3, warmup_epochs=1, batch_size=32, lr=1e-3, lr_base_batch=None, min_lr=1e-5,
        ema=True, ema_decay=0.9, max_steps_per_epoch=4, eval_max_batches=2, drop_path=0.1,
    )
    base.update(recipe)
    return TrainConfig(
        model="vit_micro", method={"base": "mpvg"}, dataset="digits", img_size=8, num_classes=10,
        seed=3, recipe=Recipe(**base),
    )


@dataclass(frozen=True)
class TaskCase:
    name: str
    config: TrainConfig
    model_factory: Optional[Callable[..., torch.nn.Module]]
    steps: int  # per interval
    metric: str  # the primary metric

    def train(self, run_dir: Path, **options: Any) -> dict[str, Any]:
        options.setdefault("device", "cpu")
        options.setdefault("checkpoint_every_min", None)
        options.setdefault("model_factory", self.model_factory)
        return train_job(self.config, run_dir, **options)


CLASSIFICATION = TaskCase("classification", make_config(epochs=2), None, steps=4, metric="top1")
DENSE = TaskCase("dense", tiny.ade_config(max_iters=None, epochs=2, max_steps_per_epoch=None),
                 tiny.tiny_segmenter, steps=2, metric="miou")
CASES = [CLASSIFICATION, DENSE]


class Interrupt(Exception):
    pass


def interrupt_at(epoch: int, step: int) -> Callable[[dict[str, Any]], None]:
    """A progress callback that stops training after ``step`` of ``epoch`` (1-based)."""

    def callback(progress: dict[str, Any]) -> None:
        if progress["epoch"] == epoch and progress["step"] == step:
            raise Interrupt

    return callback


def comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def assert_same_run(a: Path, b: Path, result_a: dict[str, Any], result_b: dict[str, Any]) -> None:
    """Metrics, results and final weights within 1e-6 (timings aside)."""
    rows_a, rows_b = read_jsonl(a / "metrics.jsonl"), read_jsonl(b / "metrics.jsonl")
    assert [r["epoch"] for r in rows_b] == [r["epoch"] for r in rows_a]
    for ra, rb in zip(comparable(rows_a), comparable(rows_b)):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], abs=1e-6), k
    numbers = {k for k, v in result_a.items() if isinstance(v, (int, float)) and k != "wall_time_s"}
    assert numbers >= {"final_top1", "best_top1", "epochs"}
    for k in numbers:
        assert result_b[k] == pytest.approx(result_a[k], abs=1e-6), k
    wa = read_checkpoint(a)["model"]  # type: ignore[index]
    wb = read_checkpoint(b)["model"]  # type: ignore[index]
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6, rtol=0) for k in wa)
