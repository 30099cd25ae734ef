"""The one training loop, for every task: ``run_training(TaskClass, config, run_dir, options)``.

Reads top to bottom like nanoGPT. :class:`TrainingLoop` sets up the process (device, process
group, bf16 autocast, ``torch.compile``), builds the task (``task.py``: model, data, optimizer,
a forward returning losses, an evaluation returning metrics), resumes from checkpoint.pt, then
runs ``task.schedule``'s intervals: steps, an evaluation, a metrics line, a checkpoint. It also
checkpoints every N steps / M minutes or on request inside an interval (``request_checkpoint``,
e.g. from a Slurm pre-timeout signal), writes progress.json, tags the phase an error escaped
from, and writes result.json. A run resumed from any of its checkpoints produces the same
metrics as one that never stopped (on CPU; CUDA kernels may not be deterministic).

Precision and compilation are operational (not part of the job key): ``amp`` and ``compile``
take ``auto``/``on``/``off`` (``runtime.setup_runtime``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
import torch.nn as nn

from mpvgbench.config import TrainConfig
from mpvgbench.errors import NonFiniteError
from mpvgbench.rundir import (
    PathLike, RunDir, atomic_write_json, atomic_write_jsonl, collect_env, remove_leftover_tmp_files,
)
from mpvgbench.train.bookkeeping import (
    CheckpointClock, Heartbeat, LossLog, ProgressCallback, WallClock, checkpoint_requested, phase,
)
from mpvgbench.train.checkpoint import CheckpointManager, LoopState
from mpvgbench.train.runtime import derive_seed, seed_everything, set_rng_state, setup_runtime
from mpvgbench.train.task import DataOptions, ModelFactory, Task

if TYPE_CHECKING:
    from mpvgbench.tracking import Tracker


@dataclass(frozen=True)
class LoopOptions:
    """How to run a job (job.json and the caller's hooks); nothing here changes the weights."""

    data: DataOptions = field(default_factory=DataOptions)
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # auto | on | off
    compile: str = "auto"  # auto | on | off
    checkpoint_every_steps: Optional[int] = None
    checkpoint_every_min: Optional[float] = 10.0
    progress_interval_s: float = 5.0
    # called after every step with the progress dict (epoch/step 1-based, the latest loss)
    progress_callback: Optional[ProgressCallback] = None
    # called once a checkpoint asked for by request_checkpoint() is on disk (a Slurm requeue)
    on_requested_checkpoint: Optional[Callable[[], None]] = None
    model_factory: Optional[ModelFactory] = None  # the task's model builder (tests)
    # TensorBoard/MLflow/W&B (mpvgbench.tracking), opened by the worker on rank 0; None: untracked
    tracker: Optional[Tracker] = None


def run_training(task_class: type[Task], config: TrainConfig, run_dir: PathLike,
                 options: LoopOptions = LoopOptions()) -> dict[str, Any]:
    """Train ``config`` with ``task_class`` into ``run_dir`` (resuming from its checkpoint.pt)
    and return result.json's dict."""
    return TrainingLoop(task_class, config, run_dir, options).run()


class TrainingLoop:
    def __init__(self, task_class: type[Task], config: TrainConfig, run_dir: PathLike,
                 options: LoopOptions) -> None:
        self.rd = RunDir(run_dir)
        self.rd.path.mkdir(parents=True, exist_ok=True)
        self.config, self.options, self.key = config, options, config.key()
        self.runtime = setup_runtime(options.device, options.amp, options.compile,
                                     recipe_amp=config.recipe.amp,
                                     fixed_input_shapes=task_class.fixed_input_shapes)
        self.dist = self.runtime.dist
        self.task = task_class(config, self.rd.path, self.runtime, options.data, options.model_factory)
        self.forward = self._training_forward()
        if self.dist.is_main:
            remove_leftover_tmp_files(self.rd)  # temp files of a save that a kill interrupted
        self.clock = CheckpointClock(options.checkpoint_every_steps, options.checkpoint_every_min,
                                     self.dist, self.runtime.device, self.runtime.sync_every)
        parts = {"model": self.task.model, "optimizer": self.task.optimizer,
                 "scheduler": self.task.scheduler, "ema": self.task.ema}
        self.checkpoints = CheckpointManager(self.rd, self.key, parts, self.dist, self.clock,  # type: ignore[arg-type]
                                             options.on_requested_checkpoint)
        schedule = self.task.schedule
        self.heartbeat = Heartbeat(self.rd, schedule.intervals, schedule.steps_per_interval,
                                   self.dist.is_main, options.progress_interval_s, options.progress_callback)

    def _training_forward(self) -> nn.Module:
        """The task's loss module as it trains: in DDP under a process group, then compiled."""
        forward, device = self.task.training_forward(), self.runtime.device
        if self.dist.enabled:
            forward = nn.parallel.DistributedDataParallel(
                forward, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=self.task.ddp_find_unused_parameters)
        if self.runtime.compile:  # a wrapper or in place: task.model stays bare for checkpoints
            forward = self.task.compile(forward)
        return forward

    def run(self) -> dict[str, Any]:
        """Resume or start, then train every interval left; the result."""
        state, resume_rng = self.checkpoints.load()
        if state is None:
            state = LoopState()
            self.task.start_fresh()
        wall = WallClock(state.wall_time_s)
        if self.dist.is_main:
            # The checkpoint holds the metrics of the intervals it covers: rewriting metrics.jsonl
            # from it drops lines of an interval that ended after it (never duplicated).
            atomic_write_jsonl(self.rd.metrics, state.rows)
        for interval in range(state.epoch, self.task.schedule.intervals):
            log = self._train_interval(state, interval, resume_rng, wall)
            resume_rng = None
            self._end_interval(state, interval, log, wall)
        checkpoint_requested.clear()  # nothing left to save; a later run starts unasked
        return self._write_result(state, wall.total_s())

    def _train_interval(self, state: LoopState, interval: int, resume_rng: Optional[dict[str, Any]],
                        wall: WallClock) -> LossLog:
        """The steps of ``interval`` left after ``state.step``; a mid-interval checkpoint when due."""
        number, steps = interval + 1, self.task.schedule.steps_in(interval)  # 1-based in every file
        # Everything random in the interval is a function of (seed, interval, rank): see runtime.py
        seed_everything(derive_seed(self.config.seed, interval, self.dist.rank))
        self.task.model.train()
        self.forward.train()  # an evaluation left the model in eval mode
        log = LossLog(self.runtime.sync_every, self.dist, state.epoch_loss_sum, state.epoch_loss_count)
        self.heartbeat(number, state.step, None, force=True)
        batches = self.task.batches(interval, state.step)
        if state.step:  # mid-interval resume: the RNGs as they were at the saved step boundary
            assert resume_rng is not None
            set_rng_state(resume_rng)
        step_start = time.monotonic()
        for step in range(state.step + 1, steps + 1):
            loss = self._optimisation_step(next(batches), state.num_updates)
            state.num_updates += 1
            log.add(loss, step, number)
            if step < steps and self.clock.due():
                log.flush(number)
                state.step, state.epoch_loss_sum, state.epoch_loss_count = step, log.total, log.count
                state.epoch_train_s += time.monotonic() - step_start
                step_start = time.monotonic()
                state.wall_time_s = wall.total_s()
                self.checkpoints.save(state)
            self.heartbeat(number, step, log.last)
        log.flush(number)
        state.epoch_train_s += time.monotonic() - step_start
        return log  # the batch iterator ends here: loader workers stop before the evaluation

    def _optimisation_step(self, batch: Any, update: int) -> torch.Tensor:
        """One update (``update`` counts the earlier ones); returns the summed loss, detached."""
        task = self.task
        inputs, targets = task.prepare_batch(batch, update)
        with torch.autocast(self.runtime.device.type, dtype=torch.bfloat16, enabled=self.runtime.amp):
            losses = self.forward(inputs, targets)
        loss = sum(value.float() for value in losses.values())
        task.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        if self.config.recipe.grad_clip is not None:
            nn.utils.clip_grad_norm_(task.model.parameters(), self.config.recipe.grad_clip)
        task.optimizer.step()
        if task.scheduler is not None:
            task.scheduler.step_update(update + 1)
        if task.ema is not None:
            task.ema.update(task.model, step=update + 1)  # type: ignore[operator]
        return loss.detach()  # type: ignore[union-attr]

    def _end_interval(self, state: LoopState, interval: int, log: LossLog, wall: WallClock) -> None:
        """Evaluate, then the metrics line (first) and the checkpoint (second): a kill in between
        leaves metrics one line ahead, which the resume rewrites; the reverse would lose a line."""
        number, task = interval + 1, self.task
        eval_start = time.monotonic()
        with phase("eval"):
            metrics = task.evaluate()
        eval_s = time.monotonic() - eval_start
        check_finite(task.model, metrics, task.primary_metric, number)
        images = task.schedule.steps_in(interval) * self.config.recipe.batch_size
        row: dict[str, Any] = {
            "epoch": number, "iteration": state.num_updates, "train_loss": log.mean, **metrics,
            "lr": task.optimizer.param_groups[0]["lr"], "epoch_time_s": state.epoch_train_s + eval_s,
            "eval_time_s": eval_s, "images_per_s": images / max(state.epoch_train_s, 1e-9),
        }
        state.rows.append(row)
        for name in task.tracked_metrics:
            if name in row:
                state.best[name] = max(state.best.get(name, -math.inf), row[name])
        state.epoch, state.step = number, 0
        state.epoch_loss_sum, state.epoch_loss_count, state.epoch_train_s = 0.0, 0, 0.0
        if self.dist.is_main:
            atomic_write_jsonl(self.rd.metrics, state.rows)
            print(interval_line(row, task, self.task.schedule.intervals), flush=True)
            if self.options.tracker is not None:
                self.options.tracker.log_metrics(row, step=number)
        state.wall_time_s = wall.total_s()
        self.checkpoints.save(state)
        self.heartbeat(number, task.schedule.steps_in(interval), log.last, force=True)

    def _write_result(self, state: LoopState, wall_time_s: float) -> dict[str, Any]:
        final = state.rows[-1] if state.rows else {}
        result: dict[str, Any] = {
            "key": self.key, **self.task.result_fields(final, state.best), "epochs": len(state.rows),
            "wall_time_s": wall_time_s,
            "env": collect_env(str(self.runtime.device), self.dist.world_size, run_dir=self.rd.path),
        }
        result["env"].update({
            "amp": self.runtime.amp, "compiled": self.runtime.compile, "threads": torch.get_num_threads(),
            "loader_workers": self.options.data.num_workers,
        })
        if self.dist.is_main:
            atomic_write_json(self.rd.result, result)
        return result


def check_finite(model: nn.Module, metrics: dict[str, float], primary: str, interval: int) -> None:
    """A run counts as trained only while its weights, its validation loss and its primary
    metric are finite: a last update can leave NaN weights after a finite loss."""
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise NonFiniteError(f"non-finite weights after epoch {interval}; lower the lr, set "
                             "recipe.grad_clip, or check the data", interval, None)
    for name in ("val_loss", primary):
        value = metrics.get(name)
        if value is not None and not math.isfinite(value):
            raise NonFiniteError(f"non-finite {name} ({value}) after epoch {interval}; lower the lr, "
                                 "set recipe.grad_clip, or check the data", interval, None)


def interval_line(row: dict[str, Any], task: Task, intervals: int) -> str:
    """The per-interval line on stdout (the run's stdout.log): where, loss, metric, lr, speed."""
    primary = row.get(task.primary_metric)
    metric = f"{primary:.2f}" if isinstance(primary, (int, float)) else "-"
    return (f"{task.interval_name} {row['epoch']}/{intervals}  iteration {row['iteration']}  "
            f"loss {row['train_loss']:.4f}  {task.primary_metric} {metric}  lr {row['lr']:.3g}  "
            f"{row['images_per_s']:.1f} img/s")
