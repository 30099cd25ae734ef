"""What a task supplies to the training loop, and nothing more.

The loop (``loop.py``) owns what every task shares: setup, resume, the step/interval schedule,
evaluation cadence, checkpoints, heartbeat, phase tags and the result. A :class:`Task`
(``classification.py``, ``dense.py``) owns what differs: its model, data, optimizer and
scheduler, a training forward that returns a dict of losses (timm's ``TrainingTask`` idea: the
module that DDP, autocast and ``torch.compile`` wrap), an evaluation that returns a dict of
metrics, and the name of its primary metric.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import torch
import torch.nn as nn

from mpvgbench.config import TrainConfig
from mpvgbench.train.runtime import Runtime

ModelFactory = Callable[..., nn.Module]


class LrScheduler(Protocol):
    """timm's scheduler interface, which the loop calls once per update."""

    def step_update(self, num_updates: int) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@dataclass(frozen=True)
class Schedule:
    """``total_steps`` optimisation steps in intervals of ``steps_per_interval``, each ending in
    an evaluation, a metrics line and a checkpoint (the last interval may be shorter)."""

    total_steps: int
    steps_per_interval: int

    @property
    def intervals(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_interval)

    def steps_in(self, interval: int) -> int:
        """Steps of ``interval`` (0-based)."""
        return min(self.steps_per_interval, self.total_steps - interval * self.steps_per_interval)


@dataclass(frozen=True)
class DataOptions:
    """Where a task finds its data; operational, never part of the job key."""

    data_root: Optional[str] = None
    download: bool = False  # classification datasets torchvision can fetch; dense ones never are
    num_workers: int = 0  # DataLoader worker processes


class Task(ABC):
    """Built once per run by the loop: ``TaskClass(config, run_dir, runtime, data, model_factory)``.

    Attributes every task sets in its constructor: ``model`` (the bare module: checkpoints,
    evaluation), ``optimizer``, ``scheduler`` (None: constant lr), ``ema`` (None: no EMA),
    ``schedule``.
    """

    interval_name: str = "epoch"  # what an interval is called in the per-interval stdout line
    primary_metric: str = "top1"
    tracked_metrics: tuple[str, ...] = ("top1",)  # metrics whose best value the result reports
    fixed_input_shapes: bool = True  # cudnn.benchmark pays off only for fixed shapes
    ddp_find_unused_parameters: bool = False

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Optional[LrScheduler]
    ema: Optional[nn.Module]
    schedule: Schedule

    @abstractmethod
    def __init__(self, config: TrainConfig, run_dir: Path, runtime: Runtime, data: DataOptions,
                 model_factory: Optional[ModelFactory]) -> None: ...

    def start_fresh(self) -> None:
        """Called when the run has no checkpoint yet (e.g. to load ``init_from`` weights)."""

    @abstractmethod
    def training_forward(self) -> nn.Module:
        """The module whose ``forward(inputs, targets)`` returns the dict of losses to sum."""

    def compile(self, forward: nn.Module) -> nn.Module:
        """``torch.compile`` what should be compiled; returns the forward to train with."""
        return torch.compile(forward)  # type: ignore[return-value]

    @abstractmethod
    def batches(self, interval: int, first_step: int) -> Iterator[Any]:
        """The batches of ``interval`` (0-based) from its step ``first_step`` (0-based) on. The
        loop has seeded the global RNGs for the interval; it restores a mid-interval
        checkpoint's RNG states after this call."""

    @abstractmethod
    def prepare_batch(self, batch: Any, update: int) -> tuple[Any, Any]:
        """``(inputs, targets)`` on the device for update ``update`` (0-based), outside autocast."""

    @abstractmethod
    def evaluate(self) -> dict[str, float]:
        """The interval's metrics (``primary_metric`` among them; ``val_loss`` if it has one)."""

    @abstractmethod
    def result_fields(self, final: dict[str, Any], best: dict[str, float]) -> dict[str, Any]:
        """result.json's task-specific fields, from the last metrics row and the best values."""
