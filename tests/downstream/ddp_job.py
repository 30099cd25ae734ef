"""Run under ``torchrun --nproc_per_node=2 -m tests.downstream.ddp_job MODE OUT`` by test_ddp.py.

MODE ``bn``: each rank normalises its half of a fixed batch with ``GlobalBatchNorm2d`` and saves
its output, input gradient, parameter gradients and running statistics to ``OUT/rank{r}.pt``.
MODE ``segmentation`` / ``detection``: ``train_job`` of a tiny model into run dir ``OUT``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as torch_dist

from mpvgbench.downstream.sync_bn import GlobalBatchNorm2d
from mpvgbench.train import train_job
from tests.downstream import tiny

BN_BATCH = 4


def bn_inputs() -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The full batch, a fixed upstream gradient, and the layer's initial parameters."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BN_BATCH, 3, 5, 6, generator=g) * 3 + 1
    upstream = torch.randn(BN_BATCH, 3, 5, 6, generator=g)
    params = {"weight": torch.rand(3, generator=g) + 0.5, "bias": torch.randn(3, generator=g)}
    return x, upstream, params


def _bn(out: Path) -> None:
    rank, world = torch_dist.get_rank(), torch_dist.get_world_size()
    x, upstream, params = bn_inputs()
    per = BN_BATCH // world
    part = slice(rank * per, (rank + 1) * per)
    bn = GlobalBatchNorm2d(3)
    bn.load_state_dict(params, strict=False)
    xr = x[part].clone().requires_grad_(True)
    y = bn(xr)
    (y * upstream[part]).sum().backward()
    torch.save({"y": y.detach(), "x_grad": xr.grad, "weight_grad": bn.weight.grad, "bias_grad": bn.bias.grad,
                "running_mean": bn.running_mean, "running_var": bn.running_var}, out / f"rank{rank}.pt")


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    torch_dist.init_process_group("gloo")
    try:
        if mode == "bn":
            _bn(out)
        elif mode == "segmentation":
            train_job(tiny.ade_config(max_iters=3), out, device="cpu", checkpoint_every_min=None,
                             model_factory=tiny.tiny_segmenter_without_dropout)
        elif mode == "detection":
            train_job(tiny.coco_config(), out, device="cpu", checkpoint_every_min=None,
                             model_factory=tiny.tiny_detector)
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    finally:
        torch_dist.barrier()  # both ranks done before either tears gloo down (a rank tearing down
        torch_dist.destroy_process_group()  # while the other still exits aborted it under load)


if __name__ == "__main__":
    main()
