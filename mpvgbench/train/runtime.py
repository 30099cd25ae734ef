"""Where a training job runs: process group, device, precision, compilation, and its RNGs.

Reproducibility model (what makes resume exact): every interval (a classification epoch) re-seeds
the global RNGs (python, numpy, torch incl. CUDA) from ``(config.seed, interval, rank)``; a task
re-seeds its data order from ``(config.seed, interval)`` (classification) or from each sample's
position (dense). Augmentation, Mixup, drop path and DataLoader worker seeds are therefore a
function of where the loop stands, not of what ran before it. A mid-interval checkpoint also
holds the RNG states of its step boundary (``checkpoint.py``). On CPU a resumed run equals one
that never stopped; CUDA kernels may not be deterministic.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist

from mpvgbench.errors import ConfigError

SWITCH = ("auto", "on", "off")


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


@dataclass(frozen=True)
class Runtime:
    """What the loop decided about this process before any task part is built."""

    device: torch.device
    dist: DistInfo
    amp: bool  # bf16 autocast around the training forward and the evaluation
    compile: bool  # torch.compile of what the task says (Task.compile)

    @property
    def sync_every(self) -> int:
        """Steps between loss synchronisations: every step on CPU (nothing to overlap), every
        10 on a GPU (one ``.tolist()`` per 10 steps keeps its queue full)."""
        return 1 if self.device.type == "cpu" else 10


def dist_info() -> DistInfo:
    """This process's place in an initialised process group (single process when there is none)."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return DistInfo(torch_dist.get_rank(), torch_dist.get_world_size(), local)
    return DistInfo()


def resolve_switch(name: str, value: str, auto: bool) -> bool:
    """An ``auto``/``on``/``off`` option (``amp``, ``compile``) -> whether it applies."""
    if value not in SWITCH:
        raise ConfigError(f"{name}={value!r}; use auto, on or off")
    return auto if value == "auto" else value == "on"


def per_process_batch(batch_size: int, world_size: int) -> int:
    """Each DDP process's share of the global ``batch_size`` (which must split evenly)."""
    if batch_size % world_size:
        raise ConfigError(f"recipe.batch_size={batch_size} is not divisible by the {world_size} "
                          "processes; change batch_size or the number of processes")
    return batch_size // world_size


def resolve_device(device: str, dist: DistInfo) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' requested but torch sees no CUDA device; use device 'cpu'")
        device = f"cuda:{dist.local_rank}"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def setup_runtime(device: str, amp: str, compile: str, *, recipe_amp: bool,
                  fixed_input_shapes: bool) -> Runtime:
    """Device, process group, and the ``amp``/``compile`` switches: ``auto`` keeps CPU runs fp32
    and eager and on CUDA uses bf16 autocast (``recipe.amp``) and ``torch.compile``; ``on``
    applies either on CPU too, so CI exercises the GPU code path."""
    dist = dist_info()
    dev = resolve_device(device, dist)
    use_amp = resolve_switch("amp", amp, auto=dev.type == "cuda" and recipe_amp)
    use_compile = resolve_switch("compile", compile, auto=dev.type == "cuda")
    # No torch.use_deterministic_algorithms: the CPU kernels used here are deterministic
    # already, and in torch 2.x the call imports torch._inductor (~6 s), which is not cheap.
    if dev.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls outside bf16 autocast
        torch.backends.cudnn.allow_tf32 = True
        # cudnn tunes its conv algorithms once per input shape: a gain for fixed shapes
        # (classification, drop_last), a cost for multi-scale detection batches
        torch.backends.cudnn.benchmark = fixed_input_shapes
    return Runtime(device=dev, dist=dist, amp=use_amp, compile=use_compile)


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
