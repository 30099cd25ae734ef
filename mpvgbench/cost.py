"""What a matrix will cost before it runs (`run --dry-run`): GPU-hours per job and in total.

A job's training cost is its training FLOPs per image (forward + backward, counted once per
distinct model configuration with ``torch.utils.flop_counter.FlopCounterMode``) x the images it
trains on (the catalog's train-set size, the recipe's steps) x its epochs. GPU-hours are the
images over a *measured* training throughput when ``benchmarks/gpu_check.py --write-throughput``
has recorded one for this GPU, model, method and image size; otherwise the FLOPs over an
*assumed* peak x utilisation, both printed with the estimate. Evaluation is not counted (one
forward pass over the validation set per epoch: about 1/75 of an ImageNet epoch's training).
Dense models are counted at their training crop: UperNet whole, Mask R-CNN's ViT-Adapter and FPN
(its proposal and RoI heads need boxes to run).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from mpvgbench.catalog import DATASET_TABLE
from mpvgbench.errors import MpvgbenchError

if TYPE_CHECKING:
    from mpvgbench.config import TrainConfig
    from mpvgbench.matrix import Job

#: where run --dry-run looks for measured throughputs unless MPVGBENCH_THROUGHPUT names a file
DEFAULT_THROUGHPUT_FILE = Path("throughput.json")
THROUGHPUT_ENV = "MPVGBENCH_THROUGHPUT"
#: bf16 dense tensor-core peaks (vendor data sheets, no sparsity), matched by name substring
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
REFERENCE_GPU = "H100"  # the GPU assumed when the run is not on a local CUDA device (Slurm, CPU)
ASSUMED_UTILISATION = 0.40  # model FLOP utilisation a tuned ViT training run reaches in bf16


class ThroughputFileError(MpvgbenchError):
    """The throughput file exists but cannot be read."""


@dataclass(frozen=True)
class JobCost:
    """One job's estimate; ``None`` where it cannot be known (a dataset whose size is not in
    the catalog)."""

    flops_per_image: float  # training: forward + backward (Mask R-CNN: backbone and FPN)
    images: Optional[int]  # training images over all epochs
    gpu_hours: Optional[float]
    measured: bool  # gpu_hours from a measured throughput, not the assumption


@dataclass(frozen=True)
class Assumption:
    """The GPU and the rate an estimate without a measurement divides by."""

    gpu: str
    peak_tflops: float
    utilisation: float = ASSUMED_UTILISATION

    @property
    def flops_per_s(self) -> float:
        return self.peak_tflops * 1e12 * self.utilisation

    def describe(self) -> str:
        return (f"{self.gpu} bf16 dense {self.peak_tflops:g} TFLOP/s x "
                f"{self.utilisation:.0%} utilisation (assumed)")


def assumption_for(device_name: Optional[str]) -> Assumption:
    """The assumed rate of ``device_name`` (a CUDA device name), the reference GPU otherwise."""
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if device_name and key in device_name:
            return Assumption(device_name, tflops)
    return Assumption(REFERENCE_GPU if device_name is None else f"{device_name} taken as {REFERENCE_GPU}",
                      PEAK_BF16_TFLOPS[REFERENCE_GPU])


def throughput_path() -> Path:
    return Path(os.environ.get(THROUGHPUT_ENV) or DEFAULT_THROUGHPUT_FILE)


def read_throughputs(path: Path, device_name: Optional[str]) -> dict[tuple[str, str, int], float]:
    """Measured training img/s for ``device_name``, keyed (model, method, img_size); empty when
    the file or the device is absent."""
    if device_name is None or not path.is_file():
        return {}
    try:
        rows = json.loads(path.read_text()).get(device_name, [])
        return {(r["model"], r["method"], int(r["img_size"])): float(r["train_img_s"]) for r in rows}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ThroughputFileError(f"throughput file {path} is not what benchmarks/gpu_check.py "
                                  f"--write-throughput writes ({exc}); rewrite or remove it") from None


def write_throughputs(path: Path, device_name: str, rows: Sequence[dict[str, Any]]) -> None:
    """Record ``rows`` (model, method, img_size, train_img_s) for ``device_name``, replacing
    earlier rows of the same configuration and keeping other devices'."""
    data: dict[str, list[dict[str, Any]]] = json.loads(path.read_text()) if path.is_file() else {}
    keep = {(r["model"], r["method"], r["img_size"]) for r in rows}
    old = [r for r in data.get(device_name, []) if (r["model"], r["method"], r["img_size"]) not in keep]
    data[device_name] = old + [{k: r[k] for k in ("model", "method", "img_size", "train_img_s")} for r in rows]
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def training_images(config: TrainConfig) -> Optional[int]:
    """Images one job trains on over all its epochs (the trainer drops the last partial batch)."""
    recipe = config.recipe
    info = DATASET_TABLE.get(config.dataset)
    known = info.train_images if info is not None else None
    if recipe.max_iters is not None:  # dense, iteration-based (ADE20K: 160k x batch)
        return recipe.max_iters * recipe.batch_size
    if known is None and recipe.max_steps_per_epoch is None:
        return None
    steps = known // recipe.batch_size if known is not None else recipe.max_steps_per_epoch
    if recipe.max_steps_per_epoch is not None:
        steps = min(steps, recipe.max_steps_per_epoch)
    return steps * recipe.batch_size * recipe.total_epochs


def train_flops_per_image(config: TrainConfig) -> float:
    """Forward + backward FLOPs of one training image at the job's size. Dense models: UperNet
    whole; Mask R-CNN its ViT-Adapter and FPN only (the RPN and RoI heads need boxes to run),
    so a detection job's count is a lower bound."""
    import torch

    # The meta device allocates and computes nothing (DeiT-B at 224 in under a second)
    with _autocast_off_on_meta(), torch.device("meta"):
        task = DATASET_TABLE[config.dataset].task if config.dataset in DATASET_TABLE else "classification"
        size = (config.img_size, config.img_size)
        if task == "segmentation":
            from mpvgbench.downstream.upernet import build_upernet

            # batch 2: batch norm in training mode needs more than one value per channel
            return count_train_flops(build_upernet(config.method, config.num_classes), (2, 3, *size)) / 2
        if task == "detection":
            from mpvgbench.downstream.detection import build_mask_rcnn

            return count_train_flops(build_mask_rcnn(config.method, config.num_classes).backbone, (1, 3, *size))
        from mpvgbench.data import input_channels
        from mpvgbench.models import build_model_for_config

        return count_train_flops(build_model_for_config(config), (1, input_channels(config), *size))


@contextmanager
def _autocast_off_on_meta() -> Iterator[None]:
    """``torch.autocast(device_type="meta", enabled=False)`` (T2T's Performer, the deformable
    attention: float32 regions) raises in torch; on meta there is nothing to cast, so such a
    region is a no-op while FLOPs are counted."""
    import torch

    real = torch.autocast

    def autocast(device_type: str, *args: Any, **kwargs: Any) -> Any:
        return nullcontext() if device_type == "meta" else real(device_type, *args, **kwargs)

    torch.autocast = autocast  # type: ignore[assignment,misc]
    try:
        yield
    finally:
        torch.autocast = real  # type: ignore[misc]


def count_train_flops(model: Any, shape: tuple[int, ...]) -> float:
    """FLOPs of one forward + backward of ``model`` on a zero input of ``shape`` (per batch):
    the backward of the sum of every tensor the model returns (logits, feature maps)."""
    import torch
    from torch.utils._pytree import tree_leaves
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    with FlopCounterMode(display=False) as counter:
        outputs = [t for t in tree_leaves(model(torch.zeros(shape))) if isinstance(t, torch.Tensor)]
        torch.stack([t.float().sum() for t in outputs]).sum().backward()
    return _conv_corrected(counter.get_flop_counts()["Global"])


def _conv_corrected(counts: dict[Any, int]) -> float:
    """The total, with a convolution's backward taken as twice its forward (input and weight
    gradients): torch's counter ignores ``groups`` in the backward, which counted CeiT's
    depthwise LeFF convolutions as dense (28 GFLOP instead of 3.5 per image)."""
    by_name = {str(op): float(n) for op, n in counts.items()}
    backward = by_name.pop("aten.convolution_backward", 0.0)
    return sum(by_name.values()) + (2 * by_name.get("aten.convolution", 0.0) if backward else 0.0)


def estimate(jobs: Sequence[Job], device_name: Optional[str],
             throughputs: dict[tuple[str, str, int], float]) -> list[JobCost]:
    """One JobCost per job; FLOPs counted once per distinct model configuration."""
    assumed = assumption_for(device_name)
    flops: dict[tuple[Any, ...], float] = {}
    costs = []
    for job in jobs:
        config = job.config
        shape_key = (config.model, job.method_label, config.dataset, config.img_size, config.num_classes)
        if shape_key not in flops:
            flops[shape_key] = train_flops_per_image(config)
        per_image, images = flops[shape_key], training_images(config)
        rate = throughputs.get((config.model, job.method_label, config.img_size))
        hours: Optional[float] = None
        if images is not None and rate:
            hours = images / rate / 3600
        elif images is not None:
            hours = per_image * images / assumed.flops_per_s / 3600
        costs.append(JobCost(per_image, images, hours, measured=bool(rate) and images is not None))
    return costs
