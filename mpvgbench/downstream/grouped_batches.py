"""The order in which the dense trainer visits training images, one pass ("epoch") at a time.

The trainer's sampling is a pure function of ``(seed, sample position)`` (``SeededSamples`` in
``train_parts.py``): position ``p`` is image ``order.epoch(p // L)[p % L]`` with
``L = order.epoch_length``, so a run resumed at any iteration, with any number of ranks (rank
``r`` takes the ``r``-th slice of every global batch of positions), sees the same images.

- :class:`ShuffledOrder`: one random permutation per pass (MMSeg's shuffling for ADE20K).
- :class:`AspectGroupedOrder`: MMDetection's ``GroupSampler`` for COCO: every global batch
  holds images of one orientation (landscape ``w / h > 1`` or not), so the batch pads little.
  Per pass: each orientation's images are shuffled and padded with its own first images to a
  multiple of the batch, cut into batches, and the batches of both groups shuffled together.
  ``L`` is then a multiple of the batch, so batches never straddle two passes.

Grouping is by the GLOBAL batch: under DDP each rank's slice is one orientation too (MMDet's
``DistributedGroupSampler`` groups per GPU batch; the property that matters, one orientation
per padded per-process batch, is the same).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

from mpvgbench.train.runtime import derive_seed

__all__ = ["AspectGroupedOrder", "SampleOrder", "ShuffledOrder", "padding_share"]


class SampleOrder(Protocol):
    epoch_length: int  # sample positions per pass

    def epoch(self, epoch: int) -> Tensor:
        """Dataset indices of pass ``epoch`` (``epoch_length`` of them, int64)."""
        ...


class ShuffledOrder:
    """A fresh permutation of ``size`` images per pass, seeded by ``(seed, epoch)``."""

    def __init__(self, size: int, seed: int) -> None:
        self.epoch_length, self.seed = size, seed

    def epoch(self, epoch: int) -> Tensor:
        return torch.randperm(self.epoch_length, generator=torch.Generator().manual_seed(derive_seed(self.seed, epoch)))


class AspectGroupedOrder:
    """MMDetection's ``GroupSampler`` as a seeded order: each run of ``batch_size`` positions
    starting at a multiple of ``batch_size`` holds images of one orientation."""

    def __init__(self, landscape: Sequence[bool], batch_size: int, seed: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        flags = torch.as_tensor(list(landscape), dtype=torch.bool)
        self.groups = [idx for idx in (torch.where(~flags)[0], torch.where(flags)[0]) if len(idx)]
        self.batch_size, self.seed = batch_size, seed
        self.epoch_length = sum(math.ceil(len(g) / batch_size) * batch_size for g in self.groups)

    def epoch(self, epoch: int) -> Tensor:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        batches = []
        for members in self.groups:
            shuffled = members[torch.randperm(len(members), generator=generator)]
            padded_length = math.ceil(len(members) / self.batch_size) * self.batch_size
            # MMDet pads with the group's first (shuffled) images; cycling also covers a group
            # smaller than the padding it needs
            padded = shuffled[torch.arange(padded_length) % len(members)]
            batches.append(padded.view(-1, self.batch_size))
        stacked = torch.cat(batches)
        return stacked[torch.randperm(len(stacked), generator=generator)].flatten()


def padding_share(sizes: Sequence[tuple[int, int]], divisor: int = 32) -> float:
    """The share of a padded batch's pixels (or tokens) that are padding, for images of
    ``(h, w)`` ``sizes`` padded together as torchvision's ``batch_images`` does (to the largest
    height and width, rounded up to ``divisor``)."""
    height = math.ceil(max(h for h, _ in sizes) / divisor) * divisor
    width = math.ceil(max(w for _, w in sizes) / divisor) * divisor
    return 1.0 - sum(h * w for h, w in sizes) / (len(sizes) * height * width)
