"""Batch normalisation over the global batch of a DDP job, on any device (CPU included).

The official ViT-Adapter runs use SyncBatchNorm (8 GPUs x 1-2 images: per-GPU statistics of one
or two images would be useless). ``torch.nn.SyncBatchNorm`` refuses CPU tensors, so CI could not
run it; :class:`GlobalBatchNorm2d` computes the same statistics with two differentiable
all-reduces (``torch.distributed.nn.functional.all_reduce``: the sum of every rank's sums, then
of every rank's squared deviations from the global mean, which stays accurate where
``E[x^2] - E[x]^2`` would cancel). Its backward all-reduces the gradients of the statistics,
which is exactly what the gradient of the global-batch loss needs (DDP then averages parameter
gradients as usual). It is a ``BatchNorm2d`` subclass with the same parameters and buffers, so
checkpoints load into either. Outside training, or without a process group of more than one
rank, it is plain ``BatchNorm2d``.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn

__all__ = ["GlobalBatchNorm2d", "convert_to_global_batchnorm"]


def _world_size() -> int:
    if torch_dist.is_available() and torch_dist.is_initialized():
        return torch_dist.get_world_size()
    return 1


def _all_reduce_sum(t: Tensor) -> Tensor:
    from torch.distributed.nn.functional import all_reduce  # autograd-aware

    return all_reduce(t, op=torch_dist.ReduceOp.SUM)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics are those of the batch across all ranks."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or _world_size() == 1:
            return super().forward(x)
        if x.dim() != 4:
            raise ValueError(f"expected a 4-d input (N, C, H, W), got {x.dim()}-d")
        c = x.shape[1]
        xf = x.float()  # statistics in fp32 also under bf16 autocast
        # one all-reduce for the sums and the pixel count (ranks may hold different image sizes)
        sums = _all_reduce_sum(torch.cat([xf.sum((0, 2, 3)), xf.new_tensor([float(x.numel() // c)])]))
        mean, count = sums[:c] / sums[c], sums[c]
        centred = xf - mean.view(1, c, 1, 1)
        var = _all_reduce_sum(centred.square().sum((0, 2, 3))) / count  # biased, as BatchNorm's
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1  # type: ignore[operator]
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                n = float(count)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                unbiased = var.detach() * (n / max(n - 1.0, 1.0))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        y = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y.to(x.dtype)


def convert_to_global_batchnorm(module: nn.Module) -> nn.Module:
    """Every ``BatchNorm2d`` in ``module`` becomes a :class:`GlobalBatchNorm2d` holding the same
    parameter and buffer objects (so an optimiser built before or after sees the same tensors)."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        out = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
        return out
    for name, child in module.named_children():
        new = convert_to_global_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module
