"""Train one job: ``train(config, run_dir, ...) -> result dict`` (single process or DDP).

Reads top to bottom like nanoGPT: ``_setup`` builds data, model, optimiser, scheduler and EMA
from timm parts (``training_parts.py``); the epoch loop runs ``_train_step`` per batch, evaluates,
and saves a checkpoint (``checkpoint.py`` defines what one holds) at the end of every epoch and,
operationally, every N steps / M minutes or on request (``request_checkpoint``, e.g. from a
Slurm pre-timeout signal). A run resumed from any of its checkpoints produces the same metrics
as one that never stopped (on CPU; CUDA kernels may not be deterministic).

Precision and compilation are operational (not part of the job key): ``amp`` and ``compile``
take ``auto``/``on``/``off``. ``auto`` keeps CPU runs fp32 and eager (today's CPU numbers) and
on CUDA uses bf16 autocast (``recipe.amp``) and ``torch.compile``; ``on`` applies either on CPU
too, so CI exercises the GPU code path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from mpvgbench.checkpoint import LoopState, checkpoint_payload, restore_checkpoint
from mpvgbench.config import TrainConfig
from mpvgbench.models import build_model_for_config
from mpvgbench.optim import build_optimizer
from mpvgbench.rundir import (
    PathLike,
    RunDir,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_jsonl,
    collect_env,
    read_checkpoint,
    remove_leftover_tmp_files,
)
from mpvgbench.trainer_bookkeeping import (
    CheckpointClock,
    Heartbeat,
    LossLog,
    ProgressCallback,
    checkpoint_requested,
    request_checkpoint,
)
from mpvgbench.training_parts import (
    DistInfo,
    NonFiniteLossError,
    build_mixup,
    build_scheduler,
    build_train_loss,
    derive_seed,
    dist_info,
    evaluate,
    load_init_weights,
    per_process_batch,
    resolve_device,
    resolve_switch,
    seed_everything,
    set_rng_state,
)

ModelFactory = Callable[..., nn.Module]

__all__ = ["NonFiniteLossError", "build_model_for_config", "request_checkpoint", "train"]




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


@dataclass
class _Parts:
    """Everything ``_setup`` builds; ``model`` is the bare module (checkpoints, eval, EMA),
    ``train_model`` the one that runs the training forward (DDP and/or compiled)."""

    model: nn.Module
    train_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: Optional[nn.Module]
    criterion: nn.Module
    mixup: Optional[Callable[..., Any]]
    train_loader: Any  # data_loaders.Loaders.train: a DataLoader, or a DALI loader
    val_loader: Any
    train_sampler: Any
    loader_gen: torch.Generator
    steps_per_epoch: int
    device: torch.device
    amp: bool
    compiled: bool
    dist: DistInfo


def _setup(
    config: TrainConfig, data_root: Optional[str], download: bool, device: str, num_workers: int,
    amp: str, compile: str, model_factory: Optional[ModelFactory],
) -> _Parts:
    recipe = config.recipe
    dist = dist_info()
    dev = resolve_device(device, dist)
    batch_size = per_process_batch(recipe.batch_size, dist.world_size)
    mixup = build_mixup(recipe, config.num_classes)
    if mixup is not None and batch_size % 2:
        raise ValueError(f"mixup/cutmix need an even per-process batch, got {batch_size}")
    use_amp = resolve_switch("amp", amp, auto=dev.type == "cuda" and recipe.amp)
    use_compile = resolve_switch("compile", compile, auto=dev.type == "cuda")
    # No torch.use_deterministic_algorithms: the CPU kernels used here are deterministic
    # already, and in torch 2.x the call imports torch._inductor (~6 s), which is not cheap.
    if dev.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls outside bf16 autocast
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed shapes (drop_last): tune conv algos once

    from mpvgbench.data_loaders import build_loaders  # HOOK (issue 19): timm DataLoaders or DALI

    seed_everything(config.seed)  # model init is a function of the seed alone
    loaders = build_loaders(config, data_root, batch_size=batch_size, dist=dist, device=dev,
                            num_workers=num_workers, download=download)
    train_loader, val_loader, train_sampler = loaders.train, loaders.val, loaders.train_sampler
    loader_gen = loaders.generator  # re-seeded every epoch: loader worker / DALI seeds come from it
    model = (model_factory or build_model_for_config)(
        config, drop_rate=recipe.drop, drop_path_rate=recipe.drop_path
    ).to(dev)

    steps_per_epoch = len(train_loader)
    if recipe.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, recipe.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise ValueError(
            f"the training set ({loaders.train_size} images) is smaller than one per-process batch "
            f"({batch_size}); lower recipe.batch_size"
        )

    optimizer = build_optimizer(model, recipe, dev.type)  # before compile: groups match names
    ema = None
    if recipe.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=recipe.ema_decay)
    train_model: nn.Module = model
    if dist.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    if use_compile:  # a wrapper: ``model`` stays bare, so checkpoints have no _orig_mod. prefix
        train_model = torch.compile(train_model)  # type: ignore[assignment]
    return _Parts(
        model=model, train_model=train_model, optimizer=optimizer,
        scheduler=build_scheduler(optimizer, recipe, steps_per_epoch), ema=ema,
        criterion=build_train_loss(recipe), mixup=mixup, train_loader=train_loader,
        val_loader=val_loader, train_sampler=train_sampler, loader_gen=loader_gen,
        steps_per_epoch=steps_per_epoch, device=dev, amp=use_amp, compiled=use_compile, dist=dist,
    )


def _train_step(p: _Parts, x: torch.Tensor, y: torch.Tensor, grad_clip: Optional[float],
                num_updates: int) -> torch.Tensor:
    """One optimisation step; ``num_updates`` counts this one (1-based) for the lr schedule."""
    x, y = x.to(p.device, non_blocking=True), y.to(p.device, non_blocking=True)
    if p.mixup is not None:
        x, y = p.mixup(x, y)
    with torch.autocast(p.device.type, dtype=torch.bfloat16, enabled=p.amp):
        loss = p.criterion(p.train_model(x), y)
    p.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(p.model.parameters(), grad_clip)
    p.optimizer.step()
    if p.scheduler is not None:
        p.scheduler.step_update(num_updates)
    if p.ema is not None:
        p.ema.update(p.model, step=num_updates)
    return loss


def _evaluate_epoch(p: _Parts, max_batches: Optional[int]) -> dict[str, float]:
    metrics = evaluate(p.model, p.val_loader, p.device, amp=p.amp, max_batches=max_batches, dist=p.dist)
    if p.ema is not None:
        ema_metrics = evaluate(p.ema.module, p.val_loader, p.device, amp=p.amp, max_batches=max_batches, dist=p.dist)
        metrics.update({f"ema_{k}": v for k, v in ema_metrics.items()})
    return metrics


def train(
    config: TrainConfig,
    run_dir: PathLike,
    *,
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
) -> dict[str, Any]:
    """Train ``config`` into ``run_dir`` (resuming from its checkpoint.pt) and return result.json.

    ``progress_callback`` is called after every optimisation step (after a checkpoint due at
    that step) with the progress dict (``epoch``/``step`` 1-based; ``loss`` the latest
    synchronised loss). ``model_factory`` defaults to :func:`build_model_for_config` (tests).
    """
    from mpvgbench.recipes import DOWNSTREAM_TASKS

    if config.dataset in DOWNSTREAM_TASKS:  # Tables 3-4: the dense-prediction loop, same contract
        from mpvgbench.downstream.train import train_downstream

        return train_downstream(
            config, run_dir, data_root=data_root, download=download, device=device,
            num_workers=num_workers, amp=amp, compile=compile,
            checkpoint_every_steps=checkpoint_every_steps, checkpoint_every_min=checkpoint_every_min,
            on_requested_checkpoint=on_requested_checkpoint, progress_callback=progress_callback,
            progress_interval_s=progress_interval_s,
        )
    session_start = time.time()
    rd = RunDir(run_dir)
    rd.path.mkdir(parents=True, exist_ok=True)
    recipe, key = config.recipe, config.key()
    p = _setup(config, data_root, download, device, num_workers, amp, compile, model_factory)
    dist = p.dist
    if dist.is_main:
        remove_leftover_tmp_files(rd)  # temp files of a save that a kill interrupted

    # ---------------------------------------------------------------- resume or initialise
    state, resume_rng = LoopState(), None
    with phase("checkpoint load"):
        ckpt = read_checkpoint(rd.checkpoint)  # every rank reads it (shared filesystem)
        if ckpt is not None:
            state = restore_checkpoint(ckpt, key, rd.checkpoint, model=p.model, optimizer=p.optimizer,
                                       scheduler=p.scheduler, ema=p.ema)
            resume_rng = ckpt["rng"] if state.step else None
        elif config.init_from:
            load_init_weights(p.model, config.init_from, rd.path)
        del ckpt
    prior_wall = state.wall_time_s
    if dist.is_main:
        # The checkpoint holds the metrics of the epochs it covers: rewriting metrics.jsonl from
        # it drops lines of an epoch that finished after the checkpoint's (never duplicated).
        atomic_write_jsonl(rd.metrics, state.rows)

    def save_checkpoint() -> None:
        state.wall_time_s = prior_wall + time.time() - session_start
        if dist.is_main:
            with phase("checkpoint save"):
                atomic_torch_save(rd.checkpoint, checkpoint_payload(
                    key, state, model=p.model, optimizer=p.optimizer, scheduler=p.scheduler,
                    ema=p.ema, world_size=dist.world_size))
        clock.reset()
        if checkpoint_requested.is_set():
            checkpoint_requested.clear()
            if on_requested_checkpoint is not None:
                on_requested_checkpoint()

    sync_every = 1 if p.device.type == "cpu" else 10
    clock = CheckpointClock(checkpoint_every_steps, checkpoint_every_min, dist, p.device, sync_every)
    heartbeat = Heartbeat(rd, recipe.total_epochs, p.steps_per_epoch, dist.is_main,
                           progress_interval_s, progress_callback)

    # ---------------------------------------------------------------------------- epochs
    for epoch in range(state.epoch, recipe.total_epochs):
        ep = epoch + 1  # 1-based in every file and message
        epoch_start = time.time()
        # Everything random in the epoch is a function of (seed, epoch, rank): see training_parts.
        seed_everything(derive_seed(config.seed, epoch, dist.rank))
        p.train_sampler.set_epoch(derive_seed(config.seed, epoch))
        p.loader_gen.manual_seed(derive_seed(config.seed, epoch, dist.rank, 1))
        p.model.train()
        p.train_model.train()
        log = LossLog(sync_every, dist, state.epoch_loss_sum, state.epoch_loss_count)
        heartbeat(ep, state.step, None, force=True)
        batches = iter(p.train_loader)
        if state.step:  # mid-epoch resume: replay the consumed batches, then the saved RNGs
            for _ in range(state.step):
                next(batches)
            set_rng_state(resume_rng)
        step_start = time.time()
        for step in range(state.step + 1, p.steps_per_epoch + 1):
            x, y = next(batches)
            state.num_updates += 1
            loss = _train_step(p, x, y, recipe.grad_clip, state.num_updates)
            log.add(loss, step, ep)
            if step < p.steps_per_epoch and clock.due():
                log.flush(ep)
                state.step, state.epoch_loss_sum, state.epoch_loss_count = step, log.total, log.count
                state.epoch_train_s += time.time() - step_start
                step_start = time.time()
                save_checkpoint()
            heartbeat(ep, step, log.last)
        del batches  # stops loader workers before eval
        log.flush(ep)
        train_time = state.epoch_train_s + time.time() - step_start

        with phase("eval"):
            metrics = _evaluate_epoch(p, recipe.eval_max_batches)
        row: dict[str, Any] = {"epoch": ep, "train_loss": log.mean, **metrics}
        row["lr"] = p.optimizer.param_groups[0]["lr"]
        row["epoch_time_s"] = time.time() - epoch_start
        row["images_per_s"] = p.steps_per_epoch * recipe.batch_size / max(train_time, 1e-9)
        state.rows.append(row)
        for name in ("top1", "top5", "ema_top1", "ema_top5"):
            if name in row:
                state.best[name] = max(state.best.get(name, -math.inf), row[name])
        state.epoch, state.step = ep, 0
        state.epoch_loss_sum, state.epoch_loss_count, state.epoch_train_s = 0.0, 0, 0.0
        if dist.is_main:
            # metrics first, checkpoint second: a kill in between leaves metrics one epoch ahead,
            # which the resume rewrites from the checkpoint; the reverse order would lose a line.
            atomic_write_jsonl(rd.metrics, state.rows)
        save_checkpoint()
        heartbeat(ep, p.steps_per_epoch, log.last, force=True)

    # ---------------------------------------------------------------------------- result
    checkpoint_requested.clear()  # nothing left to save; a later train() starts unasked
    return _write_result(rd, key, state, prior_wall + time.time() - session_start, p)


def _write_result(rd: RunDir, key: str, state: LoopState, wall_time_s: float, p: _Parts) -> dict[str, Any]:
    final, best = (state.rows[-1] if state.rows else {}), state.best
    result: dict[str, Any] = {
        "key": key,
        "final_top1": final.get("top1"),
        "best_top1": best.get("top1"),
        "final_top5": final.get("top5"),
        "best_top5": best.get("top5"),
        "epochs": len(state.rows),
        "wall_time_s": wall_time_s,
        "env": collect_env(str(p.device), p.dist.world_size, run_dir=rd.path),
    }
    result["env"].update({
        "amp": p.amp, "compiled": p.compiled,
        "threads": torch.get_num_threads(), "loader_workers": p.train_loader.num_workers,
    })
    if p.ema is not None:
        result.update({
            "ema_final_top1": final.get("ema_top1"),
            "ema_best_top1": best.get("ema_top1"),
            "ema_final_top5": final.get("ema_top5"),
            "ema_best_top5": best.get("ema_top5"),
        })
    if p.dist.is_main:
        atomic_write_json(rd.result, result)
    return result
