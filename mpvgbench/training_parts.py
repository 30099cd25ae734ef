"""Building blocks of the training loop in ``trainer.py``: seeding, samplers, loss, schedule, eval.

Everything here is a small function over timm/torch parts so that ``trainer.train`` reads as one
straight loop. Reproducibility model (what makes resume exact):

* Every epoch re-seeds the global RNGs (python, numpy, torch incl. CUDA) from
  ``(config.seed, epoch, rank)`` and re-seeds the sampler and the DataLoader generator from
  ``(config.seed, epoch)``. Augmentation (timm transforms use ``random``/``numpy``), Mixup
  (``numpy``), drop-path (``torch``) and DataLoader worker seeds are therefore a function of the
  epoch alone, not of what ran before it. A run resumed from the checkpoint written at the end of
  epoch ``e`` replays epoch ``e + 1`` bit for bit (on CPU; CUDA kernels may not be deterministic).
* A mid-epoch checkpoint also holds the RNG states of its step boundary; the resumed epoch
  replays its data order and restores them after the consumed batches (``checkpoint.py``).
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from collections.abc import Iterator, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DistributedSampler, Sampler

from mpvgbench.config import Recipe
from mpvgbench.rundir import RunDir, RunDirError, read_checkpoint


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN/inf; ``epoch`` and ``step`` are 1-based."""

    def __init__(self, epoch: int, step: int, loss: float) -> None:
        super().__init__(
            f"non-finite training loss ({loss}) at epoch {epoch} step {step}; lower the lr, "
            "set recipe.grad_clip, or check the data"
        )
        self.epoch, self.step, self.loss = epoch, step, loss


# ------------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """This process's place in an initialised process group (single process when there is none)."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return DistInfo(torch_dist.get_rank(), torch_dist.get_world_size(), local)
    return DistInfo()


SWITCH = ("auto", "on", "off")


def resolve_switch(name: str, value: str, auto: bool) -> bool:
    """An ``auto``/``on``/``off`` option (``amp``, ``compile``) -> whether it applies."""
    if value not in SWITCH:
        raise ValueError(f"{name}={value!r}; use auto, on or off")
    return auto if value == "auto" else value == "on"


def per_process_batch(batch_size: int, world_size: int) -> int:
    """Each DDP process's share of the global ``batch_size`` (which must split evenly)."""
    if batch_size % world_size:
        raise ValueError(f"recipe.batch_size={batch_size} is not divisible by the {world_size} "
                         "processes; change batch_size or the number of processes")
    return batch_size // world_size


def resolve_device(device: str, dist: DistInfo) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but torch sees no CUDA device; use device 'cpu'")
        device = f"cuda:{dist.local_rank}"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


# ---------------------------------------------------------------------------------- seeding


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (neighbouring epochs get unrelated streams)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def get_rng_state() -> dict[str, Any]:
    """RNG states as tensors/lists/ints so the checkpoint loads with ``weights_only=True``."""
    np_state = np.random.get_state(legacy=False)
    assert isinstance(np_state, dict)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"]).astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npd = state["numpy"]
    key = npd["key"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, npd["pos"], npd["has_gauss"], npd["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


# ------------------------------------------------------------------------------------- data


class ShardSampler(Sampler[int]):
    """Evaluation shard of one rank: every ``world_size``-th index, no padding, no duplicates,
    so summed counts over ranks are exactly the single-process numbers."""

    def __init__(self, dataset: Sized, rank: int, world_size: int) -> None:
        self.indices = range(rank, len(dataset), world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_train_sampler(dataset: Sized, recipe: Recipe, dist: DistInfo) -> Sampler[int]:
    """RepeatAugSampler when ``recipe.repeated_aug``, else a shuffling DistributedSampler.

    Both are used with explicit ``num_replicas``/``rank`` also on a single process. For repeated
    augmentation this is a deliberate choice: the *global* batch then holds the same
    3-augmentations-per-image composition on 1 or N processes, so a job key (which ignores the
    device count) means one training procedure. Their ``set_epoch`` value is the shuffle seed.
    """
    from timm.data.distributed_sampler import RepeatAugSampler

    if recipe.repeated_aug:
        return RepeatAugSampler(dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True)
    return DistributedSampler(
        dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=0, drop_last=False
    )


# ------------------------------------------------------------------------- loss, mixup, optim


def mixup_enabled(recipe: Recipe) -> bool:
    return recipe.mixup > 0 or recipe.cutmix > 0


def build_mixup(recipe: Recipe, num_classes: int) -> Optional[Callable[..., Any]]:
    """timm Mixup/CutMix (which also applies label smoothing to the soft targets); None when off."""
    if not mixup_enabled(recipe):
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=recipe.mixup,
        cutmix_alpha=recipe.cutmix,
        prob=recipe.mixup_prob,
        switch_prob=recipe.mixup_switch_prob,
        mode="batch",
        label_smoothing=recipe.label_smoothing,
        num_classes=num_classes,
    )


def build_train_loss(recipe: Recipe) -> nn.Module:
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixup_enabled(recipe):
        return SoftTargetCrossEntropy()  # Mixup already produced smoothed soft targets
    if recipe.label_smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=recipe.label_smoothing)
    return nn.CrossEntropyLoss()


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int) -> Any:
    """A timm scheduler stepped once per *update* (``step_update``), or None for a constant lr.

    Per-update stepping makes warmup and cosine decay smooth instead of a staircase of one lr per
    epoch, which matters for the short runs of small datasets. ``t_initial`` covers
    ``recipe.epochs``; the ``cooldown_epochs`` after it run at ``min_lr`` (timm's convention).
    ``sched="step"`` decays by 10x at 1/3 and 2/3 of the epochs (the recipe has no knob for it).
    """
    from timm.scheduler import CosineLRScheduler, StepLRScheduler

    warmup_t = recipe.warmup_epochs * steps_per_epoch
    if recipe.sched == "cosine":
        return CosineLRScheduler(
            optimizer,
            t_initial=max(1, recipe.epochs * steps_per_epoch),
            lr_min=recipe.min_lr,
            warmup_t=warmup_t,
            warmup_lr_init=recipe.warmup_lr,
            cycle_limit=1,
            t_in_epochs=False,
        )
    if recipe.sched == "step":
        return StepLRScheduler(
            optimizer,
            decay_t=max(1, math.ceil(recipe.epochs / 3)) * steps_per_epoch,
            decay_rate=0.1,
            warmup_t=warmup_t,
            warmup_lr_init=recipe.warmup_lr,
            t_in_epochs=False,
        )
    return None


# ---------------------------------------------------------------------------------- eval


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    *,
    amp: bool,
    max_batches: Optional[int],
    dist: DistInfo,
) -> dict[str, float]:
    """Top-1/top-5 (timm.utils.accuracy) and mean cross-entropy over the (sharded) val set."""
    from timm.utils import accuracy

    was_training = model.training
    model.eval()
    # [loss sum, top1 hits, top5 hits, count] in float64 so sums over ranks are exact
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        out = out.float()
        n = y.shape[0]
        top1, top5 = accuracy(out, y, topk=(1, 5))
        sums += torch.stack(
            [
                F.cross_entropy(out, y, reduction="sum").double(),
                (top1.double() * n / 100).round(),
                (top5.double() * n / 100).round(),
                torch.tensor(float(n), dtype=torch.float64, device=device),
            ]
        )
    if dist.enabled:
        torch_dist.all_reduce(sums)
    model.train(was_training)
    loss_sum, hits1, hits5, count = sums.tolist()
    count = max(count, 1.0)
    return {"val_loss": loss_sum / count, "top1": 100 * hits1 / count, "top5": 100 * hits5 / count}


# ---------------------------------------------------------------------------------- init_from


def resolve_init_from(init_from: str, run_dir: Path) -> Path:
    """``init_from`` is a job key (a sibling run dir under the same runs root), a run dir, or a
    checkpoint file."""
    candidates = [Path(init_from), run_dir.parent / init_from]
    for cand in candidates:
        if cand.is_file():
            return cand
        if cand.is_dir() and RunDir(cand).checkpoint.is_file():
            return RunDir(cand).checkpoint
    raise RunDirError(
        f"init_from {init_from!r}: no checkpoint.pt found (looked in {candidates[1]} and as a "
        "path); train that run first"
    )


def load_init_weights(model: nn.Module, init_from: str, run_dir: Path) -> list[str]:
    """Start from another run's weights; returns the keys left at their fresh initialisation.

    Tensors whose shapes differ are skipped (a new classifier head for a different
    ``num_classes``), except absolute position embeddings ``(1, prefix + h*w, C)`` which are
    resampled to the new grid with timm's ``resample_abs_pos_embed`` (fine-tuning at another
    ``img_size``).
    """
    from timm.layers import resample_abs_pos_embed

    ckpt = read_checkpoint(resolve_init_from(init_from, run_dir))
    assert ckpt is not None
    own = model.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    for name, tensor in ckpt["model"].items():
        if name not in own:
            continue
        target = own[name]
        if tensor.shape == target.shape:
            loaded[name] = tensor
        elif "pos" in name and tensor.ndim == 3 and target.ndim == 3 and tensor.shape[2] == target.shape[2]:
            old_grid, new_grid = math.isqrt(tensor.shape[1]), math.isqrt(target.shape[1])
            prefix = tensor.shape[1] - old_grid**2
            if prefix == target.shape[1] - new_grid**2:
                loaded[name] = resample_abs_pos_embed(
                    tensor, [new_grid, new_grid], [old_grid, old_grid], num_prefix_tokens=prefix
                )
    model.load_state_dict(loaded, strict=False)
    return sorted(set(own) - set(loaded))
