"""Forward+backward time of one detection step (Mask R-CNN, 1024x1024) and one segmentation
step (UperNet, 512x512) with ViT-Adapter-Ti, and the deformable-attention core's share of it.

The share comes from one step under ``torch.profiler``: the core's forward is the
``msda_core`` region (value reshapes, ``grid_sample``, weighting) and its backward is every
``grid_sampler_2d_backward`` call (the weighting's backward is small elementwise work and is
left out, so the share is a slight underestimate), over the profiled step's wall time; on CUDA
the grid_sample kernels' time over all kernel time. Everything else (the ViT, the SPM, the
projections around the core, the heads, the losses) is "rest".

``--modes fp32 bf16 bf16+compile`` times the same steps under bf16 autocast and with the
ViT-Adapter compiled as well (what ``--amp``/``--compile`` ``auto`` do on CUDA) and prints each
mode's ratio to the first one, measured in the same run; the core's share is printed for eager
modes only (a compiled graph has no ``msda_core`` region).

    python benchmarks/bench_downstream.py --threads 1 --reps 2          # CPU, shared machine
    python benchmarks/bench_downstream.py --device cuda --reps 5 --modes fp32 bf16 bf16+compile
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any, Optional

import torch
from torch.profiler import ProfilerActivity, profile

from mpvgbench.downstream.detection import build_mask_rcnn
from mpvgbench.downstream.steps import DenseLosses
from mpvgbench.downstream.train_parts import dense_backbone
from mpvgbench.downstream.upernet import build_upernet

MODES = ("fp32", "bf16", "bf16+compile", "fp32+compile")


def _step_fn(model: torch.nn.Module, task: str, images: Any, targets: Any, device: torch.device, mode: str) -> Callable[[], None]:
    """One forward+backward of the training losses in ``mode`` (the training loop's ``_optimisation_step``
    without the optimiser)."""
    if "compile" in mode:
        dense_backbone(model).compile()  # in place, as the trainer does
    forward = DenseLosses(model, task)
    amp = mode.startswith("bf16")

    def step() -> None:
        forward.train()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            losses = forward(images, targets)
        sum(v.float() for v in losses.values()).backward()  # type: ignore[union-attr]

    return step


def detection_case(device: torch.device, size: int, batch: int, mode: str = "fp32") -> Callable[[], None]:
    torch.manual_seed(0)
    model = build_mask_rcnn("mpvg").to(device)
    images, targets = [], []
    for i in range(batch):
        masks = torch.zeros(3, size, size, dtype=torch.uint8, device=device)
        boxes = torch.tensor([[100.0, 120, 400, 500], [500, 300, 900, 700], [50, 700, 300, 1000]], device=device) * size / 1024
        for m, (x1, y1, x2, y2) in zip(masks, boxes.round().long().tolist()):
            m[y1:y2, x1:x2] = 1
        images.append(torch.rand(3, size, size, device=device))
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 5, 9], device=device), "masks": masks})
    return _step_fn(model, "detection", images, targets, device, mode)


def segmentation_case(device: torch.device, size: int, batch: int, mode: str = "fp32") -> Callable[[], None]:
    torch.manual_seed(0)
    model = build_upernet("mpvg").to(device)
    images = torch.rand(batch, 3, size, size, device=device)
    labels = torch.randint(0, 150, (batch, size, size), device=device)
    return _step_fn(model, "segmentation", images, labels, device, mode)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, step: Callable[[], None], device: torch.device, reps: int,
            baseline: Optional[float] = None, profile_core: bool = True) -> float:
    """Print the step's median wall and CPU time (and its ratio to ``baseline``); return the wall."""
    step()  # warm-up (allocator, lazy init, compilation)
    _sync(device)
    wall, cpu = [], []
    for _ in range(reps):
        w0, c0 = time.perf_counter(), time.process_time()
        step()
        _sync(device)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    median = statistics.median(wall)
    ratio = f"  {baseline / median:5.2f}x the first mode" if baseline else ""
    if not profile_core:
        print(f"{name:<46} fwd+bwd wall {median:7.2f} s  cpu {statistics.median(cpu):7.2f} s{ratio}")
        return median
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        w0 = time.perf_counter()
        step()
        _sync(device)
        profiled_wall = time.perf_counter() - w0
    events = prof.key_averages()
    if device.type == "cuda":  # kernel time of grid_sample fwd/bwd over all kernel time
        core = sum(e.device_time_total for e in events if e.key in ("aten::grid_sampler_2d", "aten::grid_sampler_2d_backward"))
        total = sum(e.self_device_time_total for e in events)
    else:  # op durations on the calling thread (µs) over the profiled step's wall time
        core = sum(e.cpu_time_total for e in events if e.key in ("msda_core", "aten::grid_sampler_2d_backward"))
        total = profiled_wall * 1e6
    share = 100.0 * core / total if total else float("nan")
    print(
        f"{name:<46} fwd+bwd wall {median:7.2f} s  cpu {statistics.median(cpu):7.2f} s  "
        f"MSDA core {share:5.1f}% of the profiled step{ratio}"
    )
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--det-batch", type=int, default=1, help="detection images per step (official: 2 per GPU)")
    parser.add_argument("--seg-batch", type=int, default=2, help="segmentation images per step (official: 2 per GPU; "
                        "BatchNorm after the PPM's 1x1 pooling needs at least 2)")
    parser.add_argument("--det-size", type=int, default=1024)
    parser.add_argument("--seg-size", type=int, default=512)
    parser.add_argument("--modes", nargs="+", default=["fp32"], choices=MODES,
                        help="precision/compilation modes, each timed; ratios are to the first")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    print(f"device {device}, threads {torch.get_num_threads()}, reps {args.reps}")
    cases = [(f"Mask R-CNN {args.det_batch}x{args.det_size}x{args.det_size}", detection_case, args.det_size, args.det_batch),
             (f"UperNet {args.seg_batch}x{args.seg_size}x{args.seg_size}", segmentation_case, args.seg_size, args.seg_batch)]
    for name, build, size, batch in cases:
        baseline = None
        for mode in args.modes:
            wall = measure(f"{name} {mode}", build(device, size, batch, mode), device, args.reps,
                           baseline, profile_core="compile" not in mode)
            baseline = baseline or wall


if __name__ == "__main__":
    main()
