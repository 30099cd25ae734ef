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

Not wired yet: DDP (one process; raises), bf16 autocast and ``torch.compile`` (``amp`` and
``compile`` are accepted and recorded as off).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional

import torch
from torch.utils.data import DataLoader

from mpvgbench.checkpoint import LoopState, checkpoint_payload, restore_checkpoint
from mpvgbench.config import TrainConfig
from mpvgbench.downstream.train_parts import (
    PRIMARY_METRIC, SeededSamples, build_dense_data, build_dense_model, build_dense_optimizer,
    collate_fn, dense_task, position_batches,
)
from mpvgbench.errors import DataError
from mpvgbench.rundir import (
    PathLike, RunDir, atomic_torch_save, atomic_write_json, atomic_write_jsonl, collect_env,
    read_checkpoint, remove_leftover_tmp_files,
)
from mpvgbench.trainer_bookkeeping import CheckpointClock, Heartbeat, ProgressCallback, checkpoint_requested
from mpvgbench.training_parts import NonFiniteLossError, derive_seed, dist_info, resolve_device, seed_everything

__all__ = ["evaluate_dense", "train_downstream"]

METRIC_NAMES = {"detection": ("ap_box", "ap_mask"), "segmentation": ("miou",)}


def evaluate_dense(task: str, model: torch.nn.Module, val: Any, slide_crop: int, slide_stride: int) -> dict[str, float]:
    """The table metrics in percent: ``ap_box``/``ap_mask`` (COCOeval, x100) or ``miou``/``aacc``."""
    from mpvgbench.downstream.steps import evaluate_detection, evaluate_segmentation

    if task == "detection":
        coco = evaluate_detection(model, val)
        # COCOeval reports -1 for "no ground truth in this range"; 0 keeps the value a percentage
        return {"ap_box": 100 * max(coco["bbox_AP"], 0.0), "ap_mask": 100 * max(coco["segm_AP"], 0.0)}
    seg = evaluate_segmentation(model, val, slide_crop, slide_stride)  # type: ignore[arg-type]
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
    **not_yet_used: Any,  # download, amp, compile: the dense loop runs fp32, eager, on local data
) -> dict[str, Any]:
    """Fine-tune ``config`` (a coco/ade20k job) into ``run_dir``; the arguments are
    ``trainer.train``'s (``download`` is ignored: COCO and ADE20K are never fetched)."""
    from mpvgbench.downstream.steps import detection_step, segmentation_step

    session_start = time.time()
    rd = RunDir(run_dir)
    rd.path.mkdir(parents=True, exist_ok=True)
    recipe, key, task = config.recipe, config.key(), dense_task(config)
    dist = dist_info()
    if dist.enabled:
        raise DataError(f"{config.dataset}: dense prediction runs in one process for now; "
                        "set executor.nproc_per_node: 1")
    dev = resolve_device(device, dist)
    remove_leftover_tmp_files(rd)

    # ------------------------------------------------------------------------------- setup
    data = build_dense_data(config, data_root, rd.path,
                            None if recipe.eval_max_batches is None else recipe.eval_max_batches * recipe.batch_size)
    iters_per_epoch = len(data.train) // recipe.batch_size  # type: ignore[arg-type]
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

    seed_everything(config.seed)  # model init is a function of the seed alone
    model = (model_factory or build_dense_model)(config, rd.path).to(dev)
    optimizer, scheduler = build_dense_optimizer(model, config, iters_per_epoch, total)
    step_fn = detection_step if task == "detection" else segmentation_step
    names = METRIC_NAMES[task]
    primary = PRIMARY_METRIC[task]

    state = LoopState()
    ckpt = read_checkpoint(rd.checkpoint)
    if ckpt is not None:
        state = restore_checkpoint(ckpt, key, rd.checkpoint, model=model, optimizer=optimizer,
                                   scheduler=scheduler, ema=None)
    del ckpt
    prior_wall = state.wall_time_s
    atomic_write_jsonl(rd.metrics, state.rows)  # drop lines newer than the checkpoint

    def save_checkpoint() -> None:
        state.wall_time_s = prior_wall + time.time() - session_start
        atomic_torch_save(rd.checkpoint, checkpoint_payload(
            key, state, model=model, optimizer=optimizer, scheduler=scheduler, ema=None, world_size=1))
        clock.reset()
        if checkpoint_requested.is_set():
            checkpoint_requested.clear()
            if on_requested_checkpoint is not None:
                on_requested_checkpoint()

    clock = CheckpointClock(checkpoint_every_steps, checkpoint_every_min, dist, dev, 1)
    heartbeat = Heartbeat(rd, n_evals, eval_every, True, progress_interval_s, progress_callback)
    loader = DataLoader(
        SeededSamples(data.train, data.train_transform, config.seed),
        batch_sampler=list(position_batches(state.num_updates, total, recipe.batch_size)),
        num_workers=num_workers, collate_fn=collate_fn(task), pin_memory=dev.type == "cuda",
    )

    # -------------------------------------------------------------------------- iterations
    train_start = time.time()
    last_loss: Optional[float] = None
    for batch in loader:
        it = state.num_updates  # 0-based index of this iteration
        seed_everything(derive_seed(config.seed, it, 2))  # drop path: a function of the iteration
        images, targets = _to_device(batch, dev)
        losses = step_fn(model, images, targets, optimizer)  # type: ignore[arg-type]
        loss = float(losses["loss"])
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
            metrics = evaluate_dense(task, model, data.val, data.slide_crop, data.slide_stride)
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
        "epochs": len(state.rows), "iterations": state.num_updates,
        "wall_time_s": prior_wall + time.time() - session_start,
        "env": collect_env(str(dev), 1),
    }
    for name in names:
        result[name] = final.get(name)
        result[f"final_{name}"] = final.get(name)
        result[f"best_{name}"] = best.get(name)
    result["env"].update({"amp": False, "compiled": False, "threads": torch.get_num_threads(),
                          "loader_workers": num_workers})
    atomic_write_json(rd.result, result)
    return result
