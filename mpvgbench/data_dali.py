"""``data.loader: dali``: the recipe's input pipeline with NVIDIA DALI (``pip install 'mpvgbench[dali]'``).

On a GPU, JPEGs are decoded by nvJPEG with the random-resized crop fused into the decode, then
resized, RandAugment-ed, flipped and normalised on the GPU; CIFAR-100 stays resident in GPU
memory as one uint8 tensor and never leaves it. Random erasing runs on the GPU batch (timm's
own ``RandomErasing``) and Mixup/CutMix stay where the trainer applies them, on the device
batch. Without a GPU the same pipeline runs on the CPU (``device_id=None``), which is how CI
tests it. The image order comes from the trainer's own sampler (repeated augmentation,
sharding) and every epoch's pipeline is seeded from the trainer's per-epoch loader generator,
so a run with this loader is as repeatable and resumable as one with timm's.

The augmentations are DALI's, not timm's: docs/data.md lists every difference. The default
(``data.loader: timm``) is the paper's pipeline.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from mpvgbench.config import TrainConfig
from mpvgbench.errors import DataError

__all__ = ["DALI_MISSING", "DaliLoader", "RandAugmentSpec", "build_dali_loader", "require_dali"]

DALI_MISSING = ("data.loader: dali needs NVIDIA DALI, which is not installed here; "
                "pip install 'mpvgbench[dali]' or set data.loader: timm")
RANDAUGMENT_BINS = 11  # timm's magnitudes run 0..10: bin m of 11 is timm's magnitude m
TRANSLATE_REL = 0.45  # timm's translate_pct for RandAugment


def require_dali() -> None:
    """One-line DataError when DALI cannot be imported."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        raise DataError(DALI_MISSING) from None


@dataclass(frozen=True)
class RandAugmentSpec:
    """What timm's parser reads from a ``rand-m9-mstd0.5-inc1`` string (used as timm reads it)."""

    num_ops: int
    magnitude: int
    magnitude_std: float
    increasing: bool

    @classmethod
    def parse(cls, config_str: str) -> "RandAugmentSpec":
        from timm.data.auto_augment import rand_augment_transform

        ra = rand_augment_transform(config_str, {})
        op = ra.ops[0]
        return cls(ra.num_layers, int(round(op.magnitude)), float(op.magnitude_std),
                   any("Increasing" in o.name for o in ra.ops))


def _timm_like_suite() -> list[Any]:
    """DALI ops standing in for timm's 15 increasing RandAugment ops, each applied with
    probability 0.5 as in timm: 15 identities share the draw with the 15 ops."""
    from nvidia.dali.auto_aug import augmentations as a

    ops = [
        a.auto_contrast, a.equalize, a.invert, a.rotate.augmentation((0, 30), True),
        a.posterize.augmentation((4, 0), False, a.poster_mask_uint8),  # 4 - m*4/10 bits kept
        a.solarize.augmentation((256, 0)), a.solarize_add.augmentation((0, 110)),
        a.color.augmentation((0, 0.9), True, a.shift_enhance_range),
        a.contrast.augmentation((0, 0.9), True, a.shift_enhance_range),
        a.brightness.augmentation((0, 0.9), True, a.shift_enhance_range),
        a.sharpness.augmentation((0, 0.9), True, a.sharpness_kernel),
        a.shear_x.augmentation((0, 0.3), True), a.shear_y.augmentation((0, 0.3), True),
        a.translate_x.augmentation((0, TRANSLATE_REL), True),
        a.translate_y.augmentation((0, TRANSLATE_REL), True),
    ]
    return ops + [a.identity.augmentation(name=f"skip_{i}") for i in range(len(ops))]


# ------------------------------------------------------------------------------ pipelines


@dataclass(frozen=True)
class PipelineSettings:
    img_size: int
    is_training: bool
    encoded: bool  # JPEG bytes (ImageFolder) or raw HWC uint8 (CIFAR)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_scale: tuple[float, float] = (0.08, 1.0)
    randaugment: Optional[RandAugmentSpec] = None
    color_jitter: float = 0.0
    eval_crop_pct: float = 1.0


INPUT = "data"  # the external source the loader feeds each batch into


def _graph(settings: PipelineSettings, *, batch_size: int, num_threads: int, device_id: Optional[int]) -> Any:
    """The pipeline's graph, serialized: built once per loader (DALI's graph construction takes
    seconds), deserialized with a new seed for every pass."""
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.auto_aug.rand_augment import apply_rand_augment

    gpu = device_id is not None
    s = settings
    size = [s.img_size, s.img_size]

    @pipeline_def(enable_conditionals=s.randaugment is not None)
    def build() -> Any:
        if s.encoded:
            data = fn.external_source(name=INPUT, batch=True, dtype=types.UINT8, device="cpu")
            decoder = "mixed" if gpu else "cpu"
            if s.is_training:
                images = fn.decoders.image_random_crop(
                    data, device=decoder, output_type=types.RGB, random_area=list(s.crop_scale),
                    random_aspect_ratio=[3 / 4, 4 / 3], num_attempts=10)
            else:
                images = fn.decoders.image(data, device=decoder, output_type=types.RGB)
        else:
            images = fn.external_source(name=INPUT, batch=True, dtype=types.UINT8, layout="HWC",
                                        device="gpu" if gpu else "cpu")
            if s.is_training:
                images = fn.random_resized_crop(images, size=size, random_area=list(s.crop_scale),
                                                random_aspect_ratio=[3 / 4, 4 / 3], num_attempts=10,
                                                interp_type=types.INTERP_CUBIC, antialias=True)
        if s.is_training:
            if s.encoded:
                images = fn.resize(images, size=size, interp_type=types.INTERP_CUBIC, antialias=True)
            if s.randaugment is not None:
                images = apply_rand_augment(_timm_like_suite(), images, s.randaugment.num_ops,
                                            s.randaugment.magnitude, num_magnitude_bins=RANDAUGMENT_BINS,
                                            shape=size, fill_value=128)
            elif s.color_jitter > 0:  # timm's ColorJitter(b, c, s); off when RandAugment is on
                low, high = max(0.0, 1 - s.color_jitter), 1 + s.color_jitter
                images = fn.color_twist(images, brightness=fn.random.uniform(range=[low, high]),
                                        contrast=fn.random.uniform(range=[low, high]),
                                        saturation=fn.random.uniform(range=[low, high]))
            mirror = fn.random.coin_flip(probability=0.5)  # no annotation: DALI rewrites this function
        else:  # timm's eval: resize the shorter side to size / crop_pct, centre crop
            images = fn.resize(images, resize_shorter=math.floor(s.img_size / s.eval_crop_pct),
                               interp_type=types.INTERP_CUBIC, antialias=True)
            mirror = False
        return fn.crop_mirror_normalize(
            images, dtype=types.FLOAT, output_layout="CHW", crop=size, crop_pos_x=0.5, crop_pos_y=0.5,
            mean=[255 * m for m in s.mean], std=[255 * v for v in s.std], mirror=mirror)

    with warnings.catch_warnings():  # DALI's own RandAugment calls its deprecated aliases
        warnings.simplefilter("ignore")
        return build(batch_size=batch_size, num_threads=num_threads, device_id=device_id).serialize()


def _pipeline(graph: Any, *, batch_size: int, num_threads: int, device_id: Optional[int], seed: int) -> Any:
    from nvidia.dali import Pipeline

    with warnings.catch_warnings():  # the deprecated aliases again, as the graph is rebuilt
        warnings.simplefilter("ignore")
        pipe = Pipeline.deserialize(serialized_pipeline=graph, seed=seed, batch_size=batch_size,
                                    num_threads=num_threads, device_id=device_id, prefetch_queue_depth=1)
        pipe.build()
    return pipe


# -------------------------------------------------------------------------------- loaders


class DaliLoader:
    """``for x, y in loader``: batches of the sampler's indices through a DALI pipeline.

    A fresh pipeline per pass, seeded from ``generator`` (the trainer re-seeds it every epoch:
    augmentation is a function of the epoch, as with timm's loader workers)."""

    num_workers = 0  # no loader processes: DALI's own threads (``num_threads``) do the work

    def __init__(self, settings: PipelineSettings, read_batch: Callable[[Sequence[int]], Any],
                 labels: torch.Tensor, sampler: Any, *, batch_size: int, drop_last: bool,
                 num_threads: int, device: torch.device, generator: Optional[torch.Generator],
                 erasing: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> None:
        self.settings, self.read_batch, self.labels, self.sampler = settings, read_batch, labels, sampler
        self.batch_size, self.drop_last, self.num_threads = batch_size, drop_last, num_threads
        self.device, self.generator, self.erasing = device, generator, erasing
        self._graph: Optional[str] = None  # serialized on the first pass

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from nvidia.dali.plugin.pytorch import feed_ndarray

        indices = list(self.sampler)
        batches = [indices[i: i + self.batch_size] for i in range(0, len(self) * self.batch_size, self.batch_size)]
        seed = 0 if self.generator is None else int(torch.randint(2**31 - 1, (1,), generator=self.generator))
        gpu = self.device.type == "cuda"
        device_id = (self.device.index or 0) if gpu else None
        if self._graph is None:
            self._graph = _graph(self.settings, batch_size=self.batch_size, num_threads=self.num_threads,
                                 device_id=device_id)
        pipe = _pipeline(self._graph, batch_size=self.batch_size, num_threads=self.num_threads,
                         device_id=device_id, seed=seed)
        try:
            for batch in batches:
                # fed and run one batch at a time: the GPU still overlaps it with the previous
                # step's kernels, which the trainer queued without waiting for them
                pipe.feed_input(INPUT, self.read_batch(batch))
                (out,) = pipe.run()
                x = torch.empty((len(batch), 3, self.settings.img_size, self.settings.img_size),
                                dtype=torch.float32, device=self.device)
                stream = torch.cuda.current_stream(self.device) if gpu else None
                feed_ndarray(out.as_tensor(), x, cuda_stream=stream)
                if self.erasing is not None:
                    x = self.erasing(x)
                yield x, self.labels[torch.as_tensor(batch)].to(self.device, non_blocking=True)
        finally:
            del pipe


def _image_folder_reader(dataset: Any) -> tuple[Callable[[Sequence[int]], Any], torch.Tensor]:
    paths = [path for path, _ in dataset.samples]

    def read(batch: Sequence[int]) -> list[np.ndarray]:
        return [np.fromfile(paths[i], dtype=np.uint8) for i in batch]

    return read, torch.tensor(dataset.targets, dtype=torch.int64)


def _cifar_reader(dataset: Any, device: torch.device) -> tuple[Callable[[Sequence[int]], Any], torch.Tensor]:
    """CIFAR's N x 32 x 32 x 3 uint8 array, resident on the GPU (on the CPU without one)."""
    images = torch.from_numpy(np.ascontiguousarray(dataset.data)).to(device)

    def read(batch: Sequence[int]) -> Any:
        picked = images[torch.as_tensor(batch, device=device)]
        return picked if device.type == "cuda" else picked.numpy()

    return read, torch.tensor(dataset.targets, dtype=torch.int64)


def build_dali_loader(config: TrainConfig, dataset: Any, sampler: Any, *, is_training: bool, batch_size: int,
                      device: torch.device, num_threads: int, generator: Optional[torch.Generator]) -> DaliLoader:
    """A DALI loader over ``dataset`` (read with its transform unused: files or arrays only)."""
    from mpvgbench.data import CIFAR_DATASETS, CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN, IMAGENET_STD

    require_dali()
    cifar = config.dataset in CIFAR_DATASETS
    read, labels = _cifar_reader(dataset, device) if cifar else _image_folder_reader(dataset)
    recipe = config.recipe
    settings = PipelineSettings(
        img_size=config.img_size, is_training=is_training, encoded=not cifar,
        mean=CIFAR100_MEAN if cifar else IMAGENET_MEAN, std=CIFAR100_STD if cifar else IMAGENET_STD,
        crop_scale=recipe.train_crop_scale,
        randaugment=RandAugmentSpec.parse(recipe.randaugment) if recipe.randaugment else None,
        color_jitter=recipe.color_jitter, eval_crop_pct=recipe.eval_crop_pct,
    )
    erasing = None
    if is_training and recipe.random_erasing > 0:
        from timm.data.random_erasing import RandomErasing

        erasing = RandomErasing(recipe.random_erasing, mode="pixel", max_count=1, device=str(device))
    return DaliLoader(settings, read, labels, sampler, batch_size=batch_size, drop_last=is_training,
                      num_threads=num_threads, device=device, generator=generator, erasing=erasing)
