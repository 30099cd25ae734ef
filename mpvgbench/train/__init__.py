"""Training one job: one loop (``loop.py``) for every task (``task.py``).

``train_job(config, run_dir, ...)`` picks the task for ``config.dataset`` (:func:`task_for`:
image classification, or dense prediction for the ``recipes.DOWNSTREAM_TASKS`` datasets) and
runs the loop; the worker calls it. Modules:

- ``loop.py``: setup, resume, the step/interval schedule, evaluation cadence, checkpoints,
  heartbeat, phase tags, the result (``run_training``);
- ``task.py``: what a task supplies (``Task``, ``Schedule``, ``DataOptions``);
- ``classification.py`` (+ ``classification_parts.py``), ``dense.py``: the two tasks;
- ``checkpoint.py``: what checkpoint.pt holds and ``CheckpointManager``;
- ``bookkeeping.py``: loss log, checkpoint clock, heartbeat, wall clock, ``request_checkpoint``;
- ``runtime.py``: device, process group, amp/compile switches, seeding and RNG states;
- ``init_weights.py``: ``init_from`` (start from another run's weights).

This module imports no task at import time: ``mpvgbench.downstream`` imports ``runtime`` and
``init_weights`` from here, and the dense task imports ``mpvgbench.downstream``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from mpvgbench.config import TrainConfig
from mpvgbench.rundir import PathLike
from mpvgbench.train.bookkeeping import ProgressCallback, request_checkpoint
from mpvgbench.train.loop import LoopOptions, run_training
from mpvgbench.train.task import DataOptions, ModelFactory, Task

if TYPE_CHECKING:
    from mpvgbench.tracking import Tracker

__all__ = ["LoopOptions", "request_checkpoint", "run_training", "task_for", "train_job"]


def task_for(config: TrainConfig) -> type[Task]:
    """The task that trains ``config``: dense prediction for coco/ade20k, else classification."""
    from mpvgbench.recipes import DOWNSTREAM_TASKS

    if config.dataset in DOWNSTREAM_TASKS:
        from mpvgbench.train.dense import DenseTask

        return DenseTask
    from mpvgbench.train.classification import ClassificationTask

    return ClassificationTask


def train_job(
    config: TrainConfig,
    run_dir: PathLike,
    *,
    task: Optional[type[Task]] = None,
    data_root: Optional[str] = None,
    download: bool = False,
    device: str = "auto",
    num_workers: int = 0,
    amp: str = "auto",
    compile: str = "auto",
    checkpoint_every_steps: Optional[int] = None,
    checkpoint_every_min: Optional[float] = 10.0,
    on_requested_checkpoint: Optional[Callable[[], None]] = None,
    progress_callback: Optional[ProgressCallback] = None,
    progress_interval_s: float = 5.0,
    model_factory: Optional[ModelFactory] = None,
    tracker: Optional[Tracker] = None,
) -> dict[str, Any]:
    """Train ``config`` into ``run_dir`` with ``task`` (default :func:`task_for`), resuming from
    its checkpoint.pt; returns result.json's dict. The options are :class:`LoopOptions`'."""
    options = LoopOptions(
        data=DataOptions(data_root=data_root, download=download, num_workers=num_workers),
        device=device, amp=amp, compile=compile, checkpoint_every_steps=checkpoint_every_steps,
        checkpoint_every_min=checkpoint_every_min, progress_interval_s=progress_interval_s,
        progress_callback=progress_callback, on_requested_checkpoint=on_requested_checkpoint,
        model_factory=model_factory, tracker=tracker,
    )
    return run_training(task or task_for(config), config, run_dir, options)
