"""Train one dense-prediction job (paper Tables 3-4): ``train_downstream(config, run_dir, ...)``.

The same run-directory contract as ``mpvgbench.trainer.train`` (which dispatches here for the
``recipes.DOWNSTREAM_TASKS`` datasets): ``init_from`` loads the Table 1 classification run into
the adapter's ViT; ``checkpoint.pt`` (``checkpoint.checkpoint_payload``, atomic) after every
evaluation and every ``checkpoint_every_steps`` iterations / ``checkpoint_every_min`` minutes;
resume from it; ``metrics.jsonl`` one line per evaluation; ``progress.json``; ``result.json``.

The loop counts iterations: COCO runs ``epochs`` passes of ``len(train) // batch`` iterations and
evaluates after each (MMDet's per-epoch evaluation); ADE20K runs ``recipe.max_iters`` and
evaluates ten times (MMSeg's 16k interval of 160k). In ``result.json`` ``final_top1`` /
``best_top1`` hold the primary metric (AP box x100 for COCO, mIoU for ADE20K) so the store's
schema holds; ``ap_box``, ``ap_mask`` / ``miou`` and their ``final_`` / ``best_`` forms are what
the report's Tables 3-4 read. ``metrics.jsonl``'s ``epoch`` counts evaluations.

DDP (torchrun / Slurm tasks): rank ``r`` takes the ``r``-th slice of every global batch (sampling
is by position, so the ranks together see what one process would), BatchNorms become
:class:`GlobalBatchNorm2d` (the official runs' SyncBN, also on CPU), evaluation is sharded and
reduced so every rank holds the same metrics, and rank 0 writes the files. ``amp`` and
``compile`` follow ``trainer.train``: ``auto`` = bf16 autocast (recipe.amp) and a compiled
ViT-Adapter on CUDA, fp32 and eager on CPU; ``on`` applies them on CPU too.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional

import torch
import torch.distributed as torch_dist
from torch.utils.data import DataLoader

from mpvgbench.checkpoint import LoopState, checkpoint_payload, restore_checkpoint
from mpvgbench.config import TrainConfig
from mpvgbench.downstream.train_parts import (
    PRIMARY_METRIC, SeededSamples, build_dense_data, build_dense_model, build_dense_optimizer,
    collate_fn, dense_backbone, dense_settings, dense_task, position_batches,
)
from mpvgbench.errors import DataError
from mpvgbench.rundir import (
    PathLike, RunDir, atomic_torch_save, atomic_write_json, atomic_write_jsonl, collect_env,
    read_checkpoint, remove_leftover_tmp_files,
)
from mpvgbench.trainer_bookkeeping import CheckpointClock, Heartbeat, ProgressCallback, checkpoint_requested
from mpvgbench.training_parts import (
    DistInfo, NonFiniteLossError, derive_seed, dist_info, per_process_batch, resolve_device, resolve_switch,
    seed_everything,
)

__all__ = ["evaluate_dense", "train_downstream"]

METRIC_NAMES = {"detection": ("ap_box", "ap_mask"), "segmentation": ("miou",)}


def evaluate_dense(task: str, model: torch.nn.Module, val: Any, slide_crop: int, slide_stride: int,
                   *, max_images: Optional[int] = None, dist: DistInfo = DistInfo(), amp: bool = False) -> dict[str, float]:
    """The table metrics in percent: ``ap_box``/``ap_mask`` (COCOeval, x100) or ``miou``/``aacc``;
    sharded over the ranks of ``dist``, the same numbers on every rank."""
    from mpvgbench.downstream.steps import evaluate_detection, evaluate_segmentation

    shard = (dist.rank, dist.world_size)
    if task == "detection":
        coco = evaluate_detection(model, val, max_images=max_images, shard=shard, amp=amp)
        # COCOeval reports -1 for "no ground truth in this range"; 0 keeps the value a percentage
        return {"ap_box": 100 * max(coco["bbox_AP"], 0.0), "ap_mask": 100 * max(coco["segm_AP"], 0.0)}
    seg = evaluate_segmentation(model, val, slide_crop, slide_stride, max_images=max_images, shard=shard, amp=amp)  # type: ignore[arg-type]
    return {"miou": seg["mIoU"], "aacc": seg["aAcc"]}


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def train_downstream(
    config: TrainConfig,
    run_dir: PathLike,
    *,
    data_root: Optional[str] = None,
    device: str = "auto",
    num_workers: int = 0,
    checkpoint_every_steps: Optional[int] = None,
    checkpoint_every_min: Optional[float] = 10.0,
    on_requested_checkpoint: Optional[Callable[[], None]] = None,
    progress_callback: Optional[ProgressCallback] = None,
    progress_interval_s: float = 5.0,
    model_factory: Optional[Callable[..., torch.nn.Module]] = None,
    amp: str = "auto",
    compile: str = "auto",
    **unused: Any,  # download: COCO and ADE20K are never fetched
) -> dict[str, Any]:
    """Fine-tune ``config`` (a coco/ade20k job) into ``run_dir``; the arguments are
    ``trainer.train``'s."""
    from mpvgbench.downstream.steps import DenseLosses
    from mpvgbench.downstream.sync_bn import convert_to_global_batchnorm

    session_start = time.time()
    rd = RunDir(run_dir)
    rd.path.mkdir(parents=True, exist_ok=True)
    recipe, key, task = config.recipe, config.key(), dense_task(config)
    dist = dist_info()
    dev = resolve_device(device, dist)
    use_amp = resolve_switch("amp", amp, auto=dev.type == "cuda" and recipe.amp)
    use_compile = resolve_switch("compile", compile, auto=dev.type == "cuda")
    if dist.is_main:
        remove_leftover_tmp_files(rd)

    # ------------------------------------------------------------------------------- setup
    eval_max_images = None if recipe.eval_max_batches is None else recipe.eval_max_batches * recipe.batch_size
    data = build_dense_data(config, data_root, rd.path)
    per_process_batch(recipe.batch_size, dist.world_size)  # a batch that does not split fails now, not at the loader
    samples = SeededSamples(data.train, data.train_transform, config.seed, data.train_order)
    iters_per_epoch = len(samples) // recipe.batch_size  # one pass (COCO: orientation groups padded to whole batches)
    if recipe.max_steps_per_epoch is not None:
        iters_per_epoch = min(iters_per_epoch, recipe.max_steps_per_epoch)
    if iters_per_epoch == 0:
        raise DataError(f"the {config.dataset} training set ({len(data.train)} images) is smaller than "  # type: ignore[arg-type]
                        f"one batch ({recipe.batch_size}); lower recipe.batch_size")
    if recipe.max_iters is not None:
        total = recipe.max_iters
        eval_every = max(1, math.ceil(total / 10))
    else:
        total, eval_every = recipe.epochs * iters_per_epoch, iters_per_epoch
    n_evals = math.ceil(total / eval_every)
    if dev.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 outside autocast (MSDA core, heads' fp32 ops)

    seed_everything(config.seed)  # model init is a function of the seed alone
    model = (model_factory or build_dense_model)(config, rd.path)
    if dist.enabled:  # the official runs' SyncBN: statistics of the global batch
        model = convert_to_global_batchnorm(model)
    model = model.to(dev)
    optimizer, scheduler = build_dense_optimizer(model, config, iters_per_epoch, total)
    train_forward: torch.nn.Module = DenseLosses(model, task)
    if dist.enabled:
        # find_unused_parameters: parameters loaded but unused by the adapter (the ViT's Last LN,
        # MPVG's LN'', the class token) and heads without positives in a batch get no gradient
        train_forward = torch.nn.parallel.DistributedDataParallel(
            train_forward, device_ids=[dev.index] if dev.type == "cuda" else None,
            find_unused_parameters=True)
    if use_compile:  # in place: parameter names (checkpoints) stay as they are
        dense_backbone(model).compile()
    names = METRIC_NAMES[task]
    primary = PRIMARY_METRIC[task]

    state = LoopState()
    ckpt = read_checkpoint(rd.checkpoint)  # every rank reads it (shared filesystem)
    if ckpt is not None:
        state = restore_checkpoint(ckpt, key, rd.checkpoint, model=model, optimizer=optimizer,
                                   scheduler=scheduler, ema=None)
    del ckpt
    prior_wall = state.wall_time_s
    if dist.is_main:
        atomic_write_jsonl(rd.metrics, state.rows)  # drop lines newer than the checkpoint

    def save_checkpoint() -> None:
        state.wall_time_s = prior_wall + time.time() - session_start
        if dist.is_main:
            atomic_torch_save(rd.checkpoint, checkpoint_payload(
                key, state, model=model, optimizer=optimizer, scheduler=scheduler, ema=None,
                world_size=dist.world_size))
        clock.reset()
        if checkpoint_requested.is_set():
            checkpoint_requested.clear()
            if on_requested_checkpoint is not None:
                on_requested_checkpoint()

    clock = CheckpointClock(checkpoint_every_steps, checkpoint_every_min, dist, dev, 1)
    heartbeat = Heartbeat(rd, n_evals, eval_every, dist.is_main, progress_interval_s, progress_callback)
    loader = DataLoader(
        samples,
        batch_sampler=position_batches(state.num_updates, total, recipe.batch_size, dist.rank, dist.world_size),
        num_workers=num_workers, collate_fn=collate_fn(task), pin_memory=dev.type == "cuda",
    )

    # -------------------------------------------------------------------------- iterations
    train_start = time.time()
    last_loss: Optional[float] = None
    for batch in loader:
        it = state.num_updates  # 0-based index of this iteration
        # drop path and dropout: a function of (iteration, rank)
        seed_everything(derive_seed(config.seed, it, 2, dist.rank))
        images, targets = _to_device(batch, dev)
        loss = _train_step(train_forward, optimizer, images, targets, dev, use_amp, dist)
        evaluation, step = it // eval_every + 1, it % eval_every + 1
        if not math.isfinite(loss):
            raise NonFiniteLossError(evaluation, step, loss)
        scheduler.step()
        state.num_updates = it + 1
        state.epoch_loss_sum += loss
        state.epoch_loss_count += 1
        last_loss = loss
        if state.num_updates % eval_every == 0 or state.num_updates == total:
            eval_start = time.time()
            metrics = evaluate_dense(task, model, data.val, data.slide_crop, data.slide_stride,
                                     max_images=eval_max_images, dist=dist, amp=use_amp)
            row: dict[str, Any] = {
                "epoch": len(state.rows) + 1, "iteration": state.num_updates,
                "train_loss": state.epoch_loss_sum / max(state.epoch_loss_count, 1), **metrics,
                "lr": optimizer.param_groups[0]["lr"], "eval_time_s": time.time() - eval_start,
                "images_per_s": state.epoch_loss_count * recipe.batch_size / max(eval_start - train_start, 1e-9),
            }
            state.rows.append(row)
            for name in names:
                state.best[name] = max(state.best.get(name, -math.inf), row[name])
            state.epoch, state.step = len(state.rows), 0
            state.epoch_loss_sum, state.epoch_loss_count = 0.0, 0
            if dist.is_main:
                atomic_write_jsonl(rd.metrics, state.rows)  # metrics first, then the checkpoint
            save_checkpoint()
            train_start = time.time()
        elif clock.due():
            state.step = step
            save_checkpoint()
        heartbeat(evaluation, step, last_loss, force=step == eval_every)

    # ------------------------------------------------------------------------------ result
    checkpoint_requested.clear()
    final, best = (state.rows[-1] if state.rows else {}), state.best
    result: dict[str, Any] = {
        "key": key, "task": task, "primary_metric": primary,
        "final_top1": final.get(primary), "best_top1": best.get(primary),
        "final_top5": None, "best_top5": None,
        "epochs": len(state.rows), "iterations": state.num_updates, "dense_settings": dense_settings(config),
        "wall_time_s": prior_wall + time.time() - session_start,
        "env": collect_env(str(dev), dist.world_size, run_dir=rd.path),
    }
    for name in names:
        result[name] = final.get(name)
        result[f"final_{name}"] = final.get(name)
        result[f"best_{name}"] = best.get(name)
    result["env"].update({"amp": use_amp, "compiled": use_compile, "threads": torch.get_num_threads(),
                          "loader_workers": num_workers})
    if dist.is_main:
        atomic_write_json(rd.result, result)
    return result


def _train_step(train_forward: torch.nn.Module, optimizer: torch.optim.Optimizer, images: Any, targets: Any,
                device: torch.device, amp: bool, dist: DistInfo) -> float:
    """One optimisation step; returns the loss averaged over the ranks (every rank the same
    number, so a non-finite loss stops all of them at the same step instead of hanging)."""
    train_forward.train()  # evaluation left the model in eval mode
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        losses = train_forward(images, targets)
    loss = sum(v.float() for v in losses.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[union-attr]
    optimizer.step()
    value = loss.detach().reshape(1)  # type: ignore[union-attr]
    if dist.enabled:
        torch_dist.all_reduce(value)
        value /= dist.world_size
    return float(value)
