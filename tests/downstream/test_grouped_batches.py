"""COCO's aspect-ratio grouped batches: one orientation per batch and per rank, seeded, resumable,
MMDet's epoch length; their effect on padding."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from mpvgbench.downstream.grouped_batches import AspectGroupedOrder, ShuffledOrder, padding_share
from mpvgbench.downstream.train_parts import SeededSamples, position_batches
from mpvgbench.train.runtime import derive_seed

# COCO-like: 2/3 landscape (mostly 640x480 / 640x427), 1/3 portrait, a few squares (w / h = 1
# counts as "not landscape", as MMDet's flag)
COCO_LIKE = [(480, 640)] * 45 + [(427, 640)] * 15 + [(375, 500)] * 7 + [(640, 480)] * 20 + [(640, 427)] * 8 + [(612, 612)] * 5


def landscape(sizes):
    return [w / h > 1 for h, w in sizes]


class Sizes(torch.utils.data.Dataset):
    """Stands in for CocoInstances: an "image" is its index and size."""

    def __init__(self, sizes):
        self.sizes = sizes

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, i):
        return i, self.sizes[i]


class Identity:
    rng = None

    def __call__(self, image, target):
        return image, target


def test_every_batch_is_one_orientation_and_a_pass_is_mmdets_length() -> None:
    flags = landscape(COCO_LIKE)  # 75 landscape, 25 not
    order = AspectGroupedOrder(flags, batch_size=8, seed=3)
    assert order.epoch_length == 80 + 32  # each group padded to whole batches (GroupSampler's num_samples)
    for epoch in range(3):
        indices = order.epoch(epoch)
        assert len(indices) == order.epoch_length
        for batch in indices.view(-1, 8).tolist():
            assert len({flags[i] for i in batch}) == 1
        counts = Counter(indices.tolist())
        assert set(counts) == set(range(100)) and max(counts.values()) <= 2  # each image once, a few twice
    assert not torch.equal(order.epoch(0), order.epoch(1))  # a new shuffle per pass
    torch.testing.assert_close(order.epoch(1), AspectGroupedOrder(flags, 8, 3).epoch(1))  # seeded
    assert not torch.equal(order.epoch(1), AspectGroupedOrder(flags, 8, 4).epoch(1))
    # the batches of both groups are shuffled together, not one group after the other
    orientations = [flags[i] for i in order.epoch(0).view(-1, 8)[:, 0].tolist()]
    assert orientations not in (sorted(orientations), sorted(orientations, reverse=True))


def test_a_group_smaller_than_its_padding_cycles() -> None:
    order = AspectGroupedOrder([True, False, False], batch_size=4, seed=0)
    assert order.epoch_length == 8
    batches = order.epoch(0).view(-1, 4).tolist()
    assert sorted(map(sorted, batches)) == [[0, 0, 0, 0], [1, 1, 2, 2]]


def test_shuffled_order_is_todays_permutation() -> None:
    order = ShuffledOrder(10, seed=5)
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(derive_seed(5, 2)))
    assert order.epoch_length == 10 and torch.equal(order.epoch(2), expected)


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_ranks_resumed_mid_pass_see_what_one_process_sees(world_size: int) -> None:
    sizes = COCO_LIKE[40:80]
    samples = SeededSamples(Sizes(sizes), Identity(), seed=1, order=AspectGroupedOrder(landscape(sizes), 8, 1))
    assert len(samples) == 48  # 27 landscape -> 32, 13 other -> 16
    whole = [[samples[p] for p in batch] for batch in position_batches(0, 20, 8)]  # 3+ passes
    for batch in whole:
        assert len({w / h > 1 for _, (h, w) in batch}) == 1
    # every rank, started fresh or resumed at iteration 9 (mid-pass), takes its slice of the same batches
    for first in (0, 9):
        per_rank = [[[samples[p] for p in b] for b in position_batches(first, 20, 8, rank, world_size)] for rank in range(world_size)]
        for it in range(first, 20):
            joined = [s for rank in range(world_size) for s in per_rank[rank][it - first]]
            assert joined == whole[it]


def test_grouping_lowers_the_padding_of_a_batch_of_8() -> None:
    flags = landscape(COCO_LIKE)
    grouped = AspectGroupedOrder(flags, 8, seed=0).epoch(0).view(-1, 8).tolist()
    mixed = ShuffledOrder(len(COCO_LIKE), seed=0).epoch(0)[:96].view(-1, 8).tolist()

    def mean_share(batches):
        return sum(padding_share([COCO_LIKE[i] for i in b]) for b in batches) / len(batches)

    assert padding_share([(480, 640), (640, 480)]) == pytest.approx(1 - 2 * 480 * 640 / (640 * 640 * 2))
    assert mean_share(grouped) < 0.15 < 0.25 < mean_share(mixed), (mean_share(grouped), mean_share(mixed))
