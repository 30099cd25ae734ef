"""What a checkpoint holds, in one place: :class:`LoopState` plus the ``state_dict`` of every
stateful part of a task (model, optimizer, scheduler, EMA), saved as one dict (torchtitan's
``CheckpointManager`` idea), and :class:`CheckpointManager`, which loads and saves it.

A checkpoint is written at the end of every interval (a classification epoch, a dense evaluation
interval) and, operationally, every N steps / M minutes / on request inside one. A mid-interval
checkpoint also records the global RNG states *at that step boundary* and how many steps of the
interval are done: the resumed loop asks the task for the interval's batches from that step on
(classification replays its data order and discards the consumed batches, so loader workers
advance their augmentation RNGs exactly as before; dense sampling is a function of the sample's
position) and then restores the saved RNG states. The next batch is then bit-identical to the
one the interrupted run would have trained on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import torch
import torch.nn as nn

from mpvgbench.errors import RunDirError
from mpvgbench.rundir import RunDir, atomic_torch_save, read_checkpoint
from mpvgbench.train.bookkeeping import CheckpointClock, checkpoint_requested, phase
from mpvgbench.train.runtime import DistInfo, get_rng_state, set_rng_state

CHECKPOINT_FORMAT = 2
COMPILED_PREFIX = "_orig_mod."  # torch.compile's wrapper puts the real module under this name
PART_NAMES = ("model", "optimizer", "scheduler", "ema")


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@dataclass
class LoopState:
    """Where the training loop stands; everything in it goes into the checkpoint.

    ``epoch`` counts finished intervals (epochs, or dense evaluation intervals); ``step`` counts
    finished steps of the interval after it (0 at a boundary). ``epoch_loss_sum``/
    ``epoch_loss_count`` are the partial interval's loss log, ``epoch_train_s`` its training
    seconds so far (for images/s). ``rows`` are metrics.jsonl's lines, ``best`` the best value of
    each tracked metric. The names are those of checkpoint format 2, which resumes as it is.
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


def checkpoint_payload(key: str, state: LoopState, parts: Mapping[str, Optional[Stateful]],
                       world_size: int) -> dict[str, Any]:
    """The dict written to checkpoint.pt: ``parts`` (``model``, ``optimizer``, ``scheduler``,
    ``ema``; None where a task has none) by name. Only tensors and plain values: it loads with
    ``weights_only=True``. No GradScaler state: bf16 autocast needs none."""
    assert set(parts) <= set(PART_NAMES), sorted(parts)
    payload: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "key": key, "loop": asdict(state)}
    for name in PART_NAMES:
        part = parts.get(name)
        if part is None:
            payload[name] = None
        else:
            payload[name] = plain_state_dict(part) if name == "model" else part.state_dict()  # type: ignore[arg-type]
    payload.update({
        "rng": get_rng_state(),
        "world_size": world_size,
        # flat copies for readers that predate "loop" (store, analysis, tests)
        "epoch": state.epoch,
        "metrics": state.rows,
    })
    payload["checksum"] = payload_checksum(payload)
    return payload


def restore_checkpoint(ckpt: dict[str, Any], key: str, path: Path,
                       parts: Mapping[str, Optional[Stateful]]) -> LoopState:
    """Load ``ckpt`` (read from ``path``) into ``parts`` and return the loop state.

    Refuses, with a one-line RunDirError naming the file and the fix, a checkpoint of another
    run or one whose payload does not match its checksum. The global RNG states are restored
    here for a checkpoint at an interval boundary; a mid-interval one's are restored by the loop
    once the task has positioned its data (see the module docstring).
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
    for name, part in parts.items():
        # The EMA weights are fp32 (the model's), so timm's bf16 stochastic rounding and its
        # private RNG never run: its state_dict is the whole EMA state.
        if part is not None and (name == "model" or ckpt.get(name) is not None):
            part.load_state_dict(ckpt[name])
    if state.step == 0:
        set_rng_state(ckpt["rng"])  # re-seeded per interval anyway; restored for completeness
    return state


class CheckpointManager:
    """Loads and saves one run's checkpoint.pt: every rank loads (a shared filesystem), rank 0
    saves (atomically). A save resets the checkpoint clock and, when it answered
    ``request_checkpoint()``, then calls ``on_requested`` (a Slurm requeue)."""

    def __init__(self, rd: RunDir, key: str, parts: Mapping[str, Optional[Stateful]], dist: DistInfo,
                 clock: CheckpointClock, on_requested: Optional[Callable[[], None]]) -> None:
        self.rd, self.key, self.parts, self.dist = rd, key, parts, dist
        self.clock, self.on_requested = clock, on_requested

    def load(self) -> tuple[Optional[LoopState], Optional[dict[str, Any]]]:
        """The loop state and, for a mid-interval checkpoint, the RNG states to restore once the
        data is positioned; ``(None, None)`` when the run starts from scratch."""
        with phase("checkpoint load"):
            ckpt = read_checkpoint(self.rd.checkpoint)
            if ckpt is None:
                return None, None
            state = restore_checkpoint(ckpt, self.key, self.rd.checkpoint, self.parts)
            return state, (ckpt["rng"] if state.step else None)

    def save(self, state: LoopState) -> None:
        if self.dist.is_main:
            with phase("checkpoint save"):
                atomic_torch_save(self.rd.checkpoint,
                                  checkpoint_payload(self.key, state, self.parts, self.dist.world_size))
        self.clock.reset()
        if checkpoint_requested.is_set():
            checkpoint_requested.clear()
            if self.on_requested is not None:
                self.on_requested()
