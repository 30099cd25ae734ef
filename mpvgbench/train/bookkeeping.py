"""Bookkeeping of the training loop (``loop.py``): the loss log, when a mid-interval checkpoint
is due (incl. ``request_checkpoint``), the progress heartbeat, the run's wall clock, and the
phase tag that error.json reports ("during eval")."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable, Optional

import torch
import torch.distributed as torch_dist

from mpvgbench.errors import NonFiniteLossError
from mpvgbench.rundir import RunDir, atomic_write_json
from mpvgbench.train.runtime import DistInfo

ProgressCallback = Callable[[dict[str, Any]], None]

checkpoint_requested = threading.Event()


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Tag an exception with the phase it escaped from (``checkpoint load``, ``eval``...), so
    error.json can say where a time-out or failure landed."""
    try:
        yield
    except BaseException as exc:
        if getattr(exc, "mpvgbench_phase", None) is None:
            try:
                exc.mpvgbench_phase = name  # type: ignore[attr-defined]
            except AttributeError:
                pass
        raise


class WallClock:
    """The run's training seconds over all its attempts: ``prior_s`` (from the checkpoint) plus
    this attempt's, on the monotonic clock, so a wall-clock step (NTP, a suspended VM, a
    changed date) never yields a negative or inflated duration. A negative or non-finite
    ``prior_s`` (written by an older version under such a step) counts as 0."""

    def __init__(self, prior_s: float) -> None:
        self.prior_s = prior_s if math.isfinite(prior_s) and prior_s > 0 else 0.0
        self.start = time.monotonic()

    def total_s(self) -> float:
        return self.prior_s + time.monotonic() - self.start


def request_checkpoint() -> None:
    """Ask the running training loop for a checkpoint at its next step boundary (signal-safe).

    For a Slurm pre-timeout signal: the handler calls this and returns, the loop writes the
    checkpoint between two steps (never in the middle of one) and then calls its
    ``on_requested_checkpoint`` callback (which requeues the job)."""
    checkpoint_requested.set()


class LossLog:
    """Per-step losses kept on the device and synchronised every ``every`` steps.

    One ``.tolist()`` per flush instead of one ``.item()`` per step keeps the GPU queue full;
    the non-finite check still names the exact step. Under DDP the flush all-reduces the losses,
    so every rank sees the same mean losses and stops at the same step (no rank is left waiting
    in a collective). Flushes happen on step counts only, never on wall time, for that reason.
    """

    def __init__(self, every: int, dist: DistInfo, total: float = 0.0, count: int = 0) -> None:
        self.every, self.dist = every, dist
        self.pending: list[torch.Tensor] = []
        self.first_pending_step = 1
        self.total, self.count = total, count
        self.last: Optional[float] = None

    def add(self, loss: torch.Tensor, step: int, epoch: int) -> None:
        if not self.pending:
            self.first_pending_step = step
        self.pending.append(loss.detach().float())
        if len(self.pending) >= self.every:
            self.flush(epoch)

    def flush(self, epoch: int) -> None:
        if not self.pending:
            return
        losses = torch.stack(self.pending)
        if self.dist.enabled:
            torch_dist.all_reduce(losses)
            losses /= self.dist.world_size
        values = losses.tolist()
        for i, value in enumerate(values):
            if not math.isfinite(value):
                raise NonFiniteLossError(epoch, self.first_pending_step + i, value)
        self.pending.clear()
        self.total += sum(values)
        self.count += len(values)
        self.last = values[-1]

    @property
    def mean(self) -> float:
        return self.total / max(self.count, 1)


class CheckpointClock:
    """When a mid-interval checkpoint is due: every ``every_steps`` steps, every ``every_min``
    minutes, or on ``request_checkpoint()``. Under DDP the time/request part is agreed on by an
    all-reduce every ``sync_every`` steps, so every rank saves at the same step boundary."""

    def __init__(self, every_steps: Optional[int], every_min: Optional[float], dist: DistInfo,
                 device: torch.device, sync_every: int) -> None:
        self.every_steps, self.every_min, self.dist = every_steps, every_min, dist
        self.device, self.sync_every = device, sync_every
        self.reset()

    def reset(self) -> None:
        self.steps, self.since = 0, time.monotonic()

    def due(self) -> bool:
        self.steps += 1
        if self.every_steps and self.steps >= self.every_steps:
            return True
        wants = checkpoint_requested.is_set() or (
            self.every_min is not None and time.monotonic() - self.since >= 60 * self.every_min
        )
        if not self.dist.enabled:
            return wants
        if self.steps % self.sync_every:
            return False
        flag = torch.tensor([float(wants)], device=self.device)
        torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX)
        return bool(flag.item())


class Heartbeat:
    """progress.json every ``interval_s`` (the live view and the executors' heartbeat) and the
    optional per-step callback."""

    def __init__(self, rd: RunDir, total_epochs: int, steps_per_epoch: int, is_main: bool,
                 interval_s: float, callback: Optional[ProgressCallback]) -> None:
        self.rd, self.total_epochs, self.steps_per_epoch = rd, total_epochs, steps_per_epoch
        self.is_main, self.interval_s, self.callback = is_main, interval_s, callback
        self.last_write = -math.inf

    def __call__(self, epoch: int, step: int, loss: Optional[float], force: bool = False) -> None:
        progress = {
            "epoch": epoch, "epochs": self.total_epochs, "step": step,
            "steps_per_epoch": self.steps_per_epoch, "loss": loss, "time": time.time(),
        }
        if self.is_main and (force or time.monotonic() - self.last_write >= self.interval_s):
            atomic_write_json(self.rd.progress, progress)
            self.last_write = time.monotonic()
        if self.callback is not None:
            self.callback(progress)
