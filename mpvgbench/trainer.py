"""Train one job: ``train(config, run_dir, ...) -> result dict`` (single process or DDP).

A readable, nanoGPT-style loop assembled from timm parts (see ``training_parts.py``). It writes
the run directory described in docs/architecture.md, checkpoints at the end of every epoch and
resumes from ``checkpoint.pt`` when one exists. Resumption is exact on CPU: epoch-boundary
checkpoints plus per-epoch seeding (``training_parts`` docstring) make a run that was killed and
resumed produce the same metrics as one that never stopped.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any, Callable, Optional

import torch
import torch.distributed as torch_dist
import torch.nn as nn
from torch.utils.data import DataLoader

from mpvgbench.config import TrainConfig
from mpvgbench.rundir import (
    PathLike,
    RunDir,
    RunDirError,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_jsonl,
    collect_env,
    read_checkpoint,
)
from mpvgbench.training_parts import (
    DistInfo,
    NonFiniteLossError,
    ShardSampler,
    build_mixup,
    build_optimizer,
    build_scheduler,
    build_train_loss,
    build_train_sampler,
    derive_seed,
    dist_info,
    evaluate,
    get_rng_state,
    load_init_weights,
    resolve_device,
    seed_everything,
    set_rng_state,
)

ProgressCallback = Callable[[dict[str, Any]], None]
ModelFactory = Callable[..., nn.Module]
DatasetFactory = Callable[[TrainConfig, Optional[str]], tuple[Any, Any]]

CHECKPOINT_FORMAT = 1

__all__ = ["NonFiniteLossError", "train"]


def _default_model_factory(config: TrainConfig, **kwargs: Any) -> nn.Module:
    from mpvgbench.data import DATASETS, input_channels
    from mpvgbench.models import build_model

    if config.dataset in DATASETS:  # digits are 1-channel; the model must match the data
        kwargs.setdefault("in_chans", input_channels(config))  # synthetic: the model's own
    return build_model(
        config.model, config.method, num_classes=config.num_classes, img_size=config.img_size, **kwargs
    )


def _default_dataset_factory(config: TrainConfig, data_root: Optional[str], download: bool = False) -> tuple[Any, Any]:
    from mpvgbench.data import build_datasets

    return build_datasets(config, data_root, download=download)


class _LossLog:
    """Per-step losses kept on the device and synchronised every ``every`` steps.

    One ``.tolist()`` per flush instead of one ``.item()`` per step keeps the GPU queue full;
    the non-finite check still names the exact step. Under DDP the flush all-reduces the losses,
    so every rank sees the same mean losses and stops at the same step (no rank is left waiting
    in a collective). Flushes happen on step counts only, never on wall time, for that reason.
    """

    def __init__(self, every: int, dist: DistInfo) -> None:
        self.every, self.dist = every, dist
        self.pending: list[torch.Tensor] = []
        self.first_pending_step = 1
        self.total, self.count = 0.0, 0
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


def train(
    config: TrainConfig,
    run_dir: PathLike,
    *,
    data_root: Optional[str] = None,
    download: bool = False,
    device: str = "auto",
    num_workers: int = 0,
    progress_callback: Optional[ProgressCallback] = None,
    progress_interval_s: float = 5.0,
    model_factory: Optional[ModelFactory] = None,
    dataset_factory: Optional[DatasetFactory] = None,
) -> dict[str, Any]:
    """Train ``config`` into ``run_dir`` (resuming from its checkpoint.pt) and return result.json.

    ``progress_callback`` is called after every optimisation step with the progress dict
    (``epoch``/``step`` 1-based; ``loss`` is the latest synchronised loss). ``model_factory`` and
    ``dataset_factory`` default to ``models.build_model`` and ``data.build_datasets``; they exist
    for tests.
    """
    session_start = time.time()
    rd = RunDir(run_dir)
    rd.path.mkdir(parents=True, exist_ok=True)
    recipe, key = config.recipe, config.key()
    dist = dist_info()
    dev = resolve_device(device, dist)
    if recipe.batch_size % dist.world_size:
        raise ValueError(
            f"recipe.batch_size={recipe.batch_size} is not divisible by the {dist.world_size} "
            "processes; change batch_size or the number of processes"
        )
    batch_size = recipe.batch_size // dist.world_size
    mixup = build_mixup(recipe, config.num_classes)
    if mixup is not None and batch_size % 2:
        raise ValueError(f"mixup/cutmix need an even per-process batch, got {batch_size}")
    amp = dev.type == "cuda" and recipe.amp
    # No torch.use_deterministic_algorithms: the CPU kernels used here are deterministic
    # already, and in torch 2.x the call imports torch._inductor (~6 s), which is not cheap.
    if dev.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls outside bf16 autocast

    # ---------------------------------------------------------------- data, model, optimisation
    seed_everything(config.seed)  # model init is a function of the seed alone
    if dataset_factory is None:
        train_ds, val_ds = _default_dataset_factory(config, data_root, download=download)
    else:
        train_ds, val_ds = dataset_factory(config, data_root)
    raw_model = (model_factory or _default_model_factory)(
        config, drop_rate=recipe.drop, drop_path_rate=recipe.drop_path
    ).to(dev)

    train_sampler = build_train_sampler(train_ds, recipe, dist)
    loader_gen = torch.Generator()  # re-seeded every epoch: DataLoader worker seeds come from it
    loader_kw: dict[str, Any] = {"num_workers": num_workers, "pin_memory": dev.type == "cuda"}
    # persistent_workers stays off: fresh workers every epoch are seeded from loader_gen, which
    # is what makes augmentation a function of the epoch (exact resume) with num_workers > 0.
    train_loader = DataLoader(
        train_ds, batch_size=batch_size, sampler=train_sampler, drop_last=True,
        generator=loader_gen, **loader_kw,
    )
    val_loader = DataLoader(
        val_ds, batch_size=batch_size, sampler=ShardSampler(val_ds, dist.rank, dist.world_size),
        **loader_kw,
    )
    steps_per_epoch = len(train_loader)
    if recipe.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, recipe.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise ValueError(
            f"the training set ({len(train_ds)} images) is smaller than one per-process batch "
            f"({batch_size}); lower recipe.batch_size"
        )

    optimizer = build_optimizer(raw_model, recipe)
    scheduler = build_scheduler(optimizer, recipe, steps_per_epoch)
    criterion = build_train_loss(recipe)
    ema = None
    if recipe.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(raw_model, decay=recipe.ema_decay)

    # ------------------------------------------------------------------------------- resume
    start_epoch, num_updates, prior_wall = 0, 0, 0.0
    rows: list[dict[str, Any]] = []
    best: dict[str, float] = {}
    ckpt = read_checkpoint(rd.checkpoint)  # every rank reads it (shared filesystem)
    if ckpt is not None:
        if ckpt.get("key") != key:
            raise RunDirError(
                f"run dir {rd.path}: checkpoint.pt belongs to run {ckpt.get('key')}, not {key}; "
                "delete it to restart the run from scratch"
            )
        raw_model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"])
            if ckpt.get("ema_sr_generator") is not None and hasattr(ema, "_sr_generator"):
                ema._sr_generator.set_state(ckpt["ema_sr_generator"])
        set_rng_state(ckpt["rng"])  # re-seeded per epoch anyway; restored for completeness
        start_epoch, num_updates = int(ckpt["epoch"]), int(ckpt["num_updates"])
        rows, best, prior_wall = list(ckpt["metrics"]), dict(ckpt["best"]), float(ckpt["wall_time_s"])
    elif config.init_from:
        load_init_weights(raw_model, config.init_from, rd.path)
    if dist.is_main:
        # The checkpoint holds the metrics of the epochs it covers: rewriting metrics.jsonl from
        # it drops lines of an epoch that finished after the checkpoint's (never duplicated).
        atomic_write_jsonl(rd.metrics, rows)

    model: nn.Module = raw_model
    if dist.enabled:
        model = nn.parallel.DistributedDataParallel(
            raw_model, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    if recipe.compile and dev.type == "cuda":
        model = torch.compile(model)  # type: ignore[assignment]

    total_epochs = recipe.total_epochs
    last_progress_write = 0.0

    def report(epoch: int, step: int, loss: Optional[float], force: bool = False) -> None:
        nonlocal last_progress_write
        progress = {
            "epoch": epoch, "epochs": total_epochs, "step": step,
            "steps_per_epoch": steps_per_epoch, "loss": loss, "time": time.time(),
        }
        if dist.is_main and (force or time.monotonic() - last_progress_write >= progress_interval_s):
            atomic_write_json(rd.progress, progress)
            last_progress_write = time.monotonic()
        if progress_callback is not None:
            progress_callback(progress)

    # -------------------------------------------------------------------------------- epochs
    for epoch in range(start_epoch, total_epochs):
        ep = epoch + 1  # 1-based in every file and message
        epoch_start = time.time()
        shuffle_seed = derive_seed(config.seed, epoch)
        seed_everything(derive_seed(config.seed, epoch, dist.rank))
        train_sampler.set_epoch(shuffle_seed)  # type: ignore[attr-defined]
        loader_gen.manual_seed(derive_seed(config.seed, epoch, dist.rank, 1))
        model.train()
        log = _LossLog(every=1 if dev.type == "cpu" else 10, dist=dist)
        report(ep, 0, None, force=True)
        for step, (x, y) in enumerate(itertools.islice(train_loader, steps_per_epoch), 1):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            if mixup is not None:
                x, y = mixup(x, y)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip is not None:
                nn.utils.clip_grad_norm_(raw_model.parameters(), recipe.grad_clip)
            optimizer.step()
            num_updates += 1
            if scheduler is not None:
                scheduler.step_update(num_updates)
            if ema is not None:
                ema.update(raw_model, step=num_updates)
            log.add(loss, step, ep)
            report(ep, step, log.last)
        log.flush(ep)
        train_time = time.time() - epoch_start

        metrics = evaluate(raw_model, val_loader, dev, amp=amp, max_batches=recipe.eval_max_batches, dist=dist)
        row: dict[str, Any] = {"epoch": ep, "train_loss": log.mean, **metrics}
        if ema is not None:
            ema_metrics = evaluate(
                ema.module, val_loader, dev, amp=amp, max_batches=recipe.eval_max_batches, dist=dist
            )
            row.update({f"ema_{k}": v for k, v in ema_metrics.items()})
        row["lr"] = optimizer.param_groups[0]["lr"]
        row["epoch_time_s"] = time.time() - epoch_start
        row["images_per_s"] = steps_per_epoch * recipe.batch_size / max(train_time, 1e-9)
        rows.append(row)
        for name in ("top1", "top5", "ema_top1", "ema_top5"):
            if name in row:
                best[name] = max(best.get(name, -math.inf), row[name])

        if dist.is_main:
            # metrics first, checkpoint second: a kill in between leaves metrics one epoch ahead,
            # which the resume rewrites from the checkpoint; the reverse order would lose a line.
            atomic_write_jsonl(rd.metrics, rows)
            state = {
                "format": CHECKPOINT_FORMAT,
                "key": key,
                "epoch": ep,
                "num_updates": num_updates,
                "model": raw_model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "ema": ema.state_dict() if ema is not None else None,
                # private RNG of bf16 stochastic rounding (timm >= 1.0.2x); absent -> None
                "ema_sr_generator": (
                    ema._sr_generator.get_state() if hasattr(ema, "_sr_generator") else None
                ),
                "scaler": None,  # bf16 autocast needs no GradScaler
                "rng": get_rng_state(),
                "metrics": rows,
                "best": best,
                "wall_time_s": prior_wall + time.time() - session_start,
                "world_size": dist.world_size,
            }
            atomic_torch_save(rd.checkpoint, state)
        report(ep, steps_per_epoch, log.last, force=True)

    # -------------------------------------------------------------------------------- result
    final = rows[-1] if rows else {}
    result: dict[str, Any] = {
        "key": key,
        "final_top1": final.get("top1"),
        "best_top1": best.get("top1"),
        "final_top5": final.get("top5"),
        "best_top5": best.get("top5"),
        "epochs": len(rows),
        "wall_time_s": prior_wall + time.time() - session_start,
        "env": collect_env(str(dev), dist.world_size),
    }
    if ema is not None:
        result.update(
            {
                "ema_final_top1": final.get("ema_top1"),
                "ema_best_top1": best.get("ema_top1"),
                "ema_final_top5": final.get("ema_top5"),
                "ema_best_top5": best.get("ema_top5"),
            }
        )
    if dist.is_main:
        atomic_write_json(rd.result, result)
    return result
