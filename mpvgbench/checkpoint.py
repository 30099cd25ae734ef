"""What a checkpoint holds, in one place: :class:`LoopState` plus the modules' ``state_dict``s.

``checkpoint_payload`` builds the dict that ``rundir.atomic_torch_save`` writes to
``checkpoint.pt`` and ``restore_checkpoint`` puts it back. Everything else the training loop
needs after a restart is a function of the config and the epoch (see ``training_parts``).

A checkpoint is written at the end of every epoch and, operationally, every N steps / M minutes
inside an epoch. A mid-epoch checkpoint additionally records the global RNG states *at that step
boundary* and how many steps of the epoch are done: the resumed loop replays the epoch's data
order (same sampler seed, same loader generator), fetches and discards those batches so that
loader workers advance their augmentation RNGs exactly as before, then restores the saved RNG
states. The next batch is then bit-identical to the one the interrupted run would have trained on.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from mpvgbench.rundir import RunDirError
from mpvgbench.training_parts import get_rng_state, set_rng_state

CHECKPOINT_FORMAT = 2
COMPILED_PREFIX = "_orig_mod."  # torch.compile's wrapper puts the real module under this name


@dataclass
class LoopState:
    """Where the training loop stands; everything in it goes into the checkpoint.

    ``epoch`` counts finished epochs; ``step`` counts finished steps of the epoch after it (0 at
    an epoch boundary). ``epoch_loss_sum``/``epoch_loss_count`` are the partial epoch's loss log,
    ``epoch_train_s`` its training seconds so far (for images/s).
    """

    epoch: int = 0
    step: int = 0
    num_updates: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)
    wall_time_s: float = 0.0
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    epoch_train_s: float = 0.0


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with the wrappers' prefixes removed (torch.compile, DDP), so a
    checkpoint loads into a bare model whichever way it was trained."""
    state = model.state_dict()
    for prefix in (COMPILED_PREFIX, "module."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def payload_checksum(payload: dict[str, Any]) -> str:
    """sha256 over the payload's values (minus its own checksum): catches a damaged file that
    still unpickles (a bad block, a truncated copy that happens to parse).

    It hashes tensor *contents* (dtype, shape, bytes) and plain values, not the serialised file:
    a checkpoint saved from CUDA tensors and loaded onto the CPU must give the same sum.
    """
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in payload.items() if k != "checksum"})
    return digest.hexdigest()


def _feed(digest: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        flat = obj.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"T{flat.dtype}{tuple(obj.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    elif isinstance(obj, dict):
        digest.update(f"D{len(obj)}".encode())
        for key, value in obj.items():
            _feed(digest, key)
            _feed(digest, value)
    elif isinstance(obj, (list, tuple)):  # the same after a save/load round trip either way
        digest.update(f"L{len(obj)}".encode())
        for value in obj:
            _feed(digest, value)
    else:
        digest.update(f"V{type(obj).__name__}:{obj!r};".encode())


def checkpoint_payload(
    key: str,
    state: LoopState,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    ema: Optional[nn.Module],
    world_size: int,
) -> dict[str, Any]:
    """The dict written to checkpoint.pt. Only tensors and plain values: it loads with
    ``weights_only=True``. No GradScaler state: bf16 autocast needs none."""
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "key": key,
        "loop": asdict(state),
        "model": plain_state_dict(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
        "rng": get_rng_state(),
        "world_size": world_size,
        # flat copies for readers that predate "loop" (store, analysis, tests)
        "epoch": state.epoch,
        "metrics": state.rows,
    }
    payload["checksum"] = payload_checksum(payload)
    return payload


def restore_checkpoint(
    ckpt: dict[str, Any],
    key: str,
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    ema: Optional[nn.Module],
) -> LoopState:
    """Load ``ckpt`` (read from ``path``) into the modules and return the loop state.

    Refuses, with a one-line RunDirError naming the file and the fix, a checkpoint of another
    run or one whose payload does not match its checksum. The global RNG states are restored
    here for an epoch-boundary checkpoint; a mid-epoch one's are restored by the loop after it
    has skipped the epoch's consumed batches (see the module docstring).
    """
    fix = "delete it to restart the run from scratch"
    if ckpt.get("key") != key:
        raise RunDirError(f"run dir {path.parent}: {path.name} belongs to run {ckpt.get('key')}, not {key}; {fix}")
    if "checksum" in ckpt and ckpt["checksum"] != payload_checksum(ckpt):
        raise RunDirError(f"run dir {path.parent}: {path.name} is damaged (checksum mismatch); {fix}")
    if "loop" in ckpt:
        state = LoopState(**ckpt["loop"])
    else:  # format 1: epoch-boundary checkpoints with flat fields
        state = LoopState(
            epoch=int(ckpt["epoch"]), num_updates=int(ckpt["num_updates"]), rows=list(ckpt["metrics"]),
            best=dict(ckpt["best"]), wall_time_s=float(ckpt["wall_time_s"]),
        )
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if ema is not None and ckpt.get("ema") is not None:
        # The EMA weights are fp32 (the model's), so timm's bf16 stochastic rounding and its
        # private RNG never run: the state_dict is the whole EMA state.
        ema.load_state_dict(ckpt["ema"])
    if state.step == 0:
        set_rng_state(ckpt["rng"])  # re-seeded per epoch anyway; restored for completeness
    return state
