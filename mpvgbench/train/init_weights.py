"""Start a run from another run's weights (``TrainConfig.init_from``): a job key (a sibling run
directory under the same runs root), a run directory, or a checkpoint file."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn

from mpvgbench.errors import RunDirError
from mpvgbench.rundir import RunDir, read_checkpoint

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
