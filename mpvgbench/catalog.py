"""The catalog: one table of facts about every model and every dataset, importable without torch.

`mpvgbench.models` registers the models with timm; `mpvgbench.data` and `mpvgbench.downstream`
read the datasets; spec validation, matrix expansion, the store and the report read the same
tables without importing torch or timm (3 s), so `run --dry-run` stays fast. Each task names its
metrics and the primary one (what a run's result is, and what the report shows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from mpvgbench.errors import UnknownNameError


@dataclass(frozen=True)
class ModelInfo:
    """A short model name and what the rest of the package needs to know about it."""

    name: str
    family: str  # deit, swin, ceit, t2t, vit_lite, micro
    module: str  # the module that registers it with timm
    timm_name: str
    depth: int  # transformer blocks (Swin: all stages together): the range of last_ln_pe
    default_img_size: int
    token_stride: int  # img_size must be a multiple of it
    smoke_img_size: int  # a small size the model builds and runs at (run --smoke)
    in_chans: int = 3


MODEL_TABLE: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        ModelInfo("deit_tiny", "deit", "mpvgbench.models.deit", "mpvg_deit_tiny_patch16_224", 12, 224, 16, 32),
        ModelInfo("deit_small", "deit", "mpvgbench.models.deit", "mpvg_deit_small_patch16_224", 12, 224, 16, 32),
        ModelInfo("deit_base", "deit", "mpvgbench.models.deit", "mpvg_deit_base_patch16_224", 12, 224, 16, 32),
        # Swin: patch 4 then 3 merges -> a multiple of 32. Smoke at 64 (stages 16/8/4/2): the
        # 7x7 window is clamped per stage, which the model supports (tested).
        ModelInfo("swin_tiny", "swin", "mpvgbench.models.swin", "mpvg_swin_tiny_patch4_window7_224", 12, 224, 32, 64),
        ModelInfo("ceit_tiny", "ceit", "mpvgbench.models.ceit", "mpvg_ceit_tiny_patch16_224", 12, 224, 16, 32),
        ModelInfo("t2t_vit_7", "t2t", "mpvgbench.models.t2t", "mpvg_t2t_vit_7", 7, 224, 16, 32),
        ModelInfo("vit_lite_7_4", "vit_lite", "mpvgbench.models.vit_lite", "mpvg_vit_lite_7_4_32", 7, 32, 4, 32),
        ModelInfo("vit_micro", "micro", "mpvgbench.models.micro", "mpvg_vit_micro_patch2_8", 4, 8, 2, 8, in_chans=1),
    )
}


def model_info(name: str) -> ModelInfo:
    """Facts about a short model name; ``ValueError`` naming the known ones otherwise."""
    try:
        return MODEL_TABLE[name]
    except KeyError:
        raise UnknownNameError(f"unknown model {name!r}; allowed: {', '.join(MODEL_TABLE)}") from None


def known_models() -> list[str]:
    return list(MODEL_TABLE)


# ------------------------------------------------------------------------------- tasks

@dataclass(frozen=True)
class TaskInfo:
    """What a task reports: its metrics (percentages) and the primary one, a run's result."""

    name: str
    metrics: tuple[str, ...]
    primary_metric: str


TASKS: dict[str, TaskInfo] = {
    t.name: t
    for t in (
        TaskInfo("classification", ("top1", "top5"), "top1"),
        TaskInfo("detection", ("ap_box", "ap_mask"), "ap_box"),  # COCO: box and mask AP x100
        TaskInfo("segmentation", ("miou",), "miou"),  # ADE20K: mean IoU x100
    )
}
#: every metric a result can hold, in a fixed order (the store's result columns)
METRICS: tuple[str, ...] = tuple(dict.fromkeys(m for t in TASKS.values() for m in t.metrics))
METRIC_LABELS: dict[str, str] = {
    "top1": "top-1", "top5": "top-5", "ap_box": "AP box", "ap_mask": "AP mask", "miou": "mIoU",
}


# ---------------------------------------------------------------------------- datasets

@dataclass(frozen=True)
class DatasetInfo:
    """A dataset name and its defaults; a spec's ``dataset_overrides`` may change the first two."""

    name: str
    num_classes: Optional[int]  # None: the spec must say (dataset_overrides.<name>.num_classes)
    img_size: int  # native size of the images (dense prediction: the training crop)
    in_chans: int
    task: str = "classification"
    # what `run --smoke` trains instead (same task, generated data); None: it is a stand-in
    smoke_stand_in: Optional[str] = "synthetic"
    needs_root: bool = True  # read from the spec's data.roots.<name>
    # training images per epoch (run --dry-run's cost estimate); None: not known without reading it
    train_images: Optional[int] = None

    @property
    def root_field(self) -> Optional[str]:
        """The spec field that says where the data is (None: bundled or generated)."""
        return f"data.roots.{self.name}" if self.needs_root else None

    @property
    def primary_metric(self) -> str:
        return TASKS[self.task].primary_metric


DATASET_TABLE: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo("digits", 10, 8, 1, needs_root=False, train_images=1437),  # sklearn's 1797 8x8, 80 % split
        DatasetInfo("cifar100", 100, 32, 3, smoke_stand_in="cifar100_synthetic", train_images=50_000),
        DatasetInfo("imagenet", 1000, 224, 3, smoke_stand_in="imagenet_synthetic", train_images=1_281_167),
        # root/train/<class>/*, root/val/<class>/*; its smoke run reads ImageNet's stand-in
        DatasetInfo("imagefolder", None, 224, 3, smoke_stand_in="imagenet_synthetic"),
        # random tensors: benchmarks
        DatasetInfo("synthetic", 1000, 224, 3, smoke_stand_in=None, needs_root=False),
        # run --smoke's generated stand-ins in the real on-disk formats (mpvgbench.data_standins)
        DatasetInfo("imagenet_synthetic", 10, 224, 3, smoke_stand_in=None, needs_root=False),
        DatasetInfo("cifar100_synthetic", 10, 32, 3, smoke_stand_in=None, needs_root=False),
        # Dense prediction (paper Tables 3-4): img_size is the training crop (Tables 8-9).
        DatasetInfo("coco", 80, 1024, 3, "detection", "coco_synthetic", train_images=118_287),  # train2017, val2017, annotations
        DatasetInfo("ade20k", 150, 512, 3, "segmentation", "ade20k_synthetic", train_images=20_210),  # ADEChallengeData2016
        # their smoke stand-ins: a few generated images in the same on-disk format, 3 classes
        DatasetInfo("coco_synthetic", 3, 64, 3, "detection", None, needs_root=False),
        DatasetInfo("ade20k_synthetic", 3, 64, 3, "segmentation", None, needs_root=False),
    )
}
#: the dense-prediction datasets and their task (every other dataset is classification)
DOWNSTREAM_TASKS: dict[str, str] = {
    d.name: d.task for d in DATASET_TABLE.values() if d.task != "classification"
}
#: ``run --smoke`` trains each cell on a generated stand-in in its dataset's on-disk format, read by
#: the real reader through the recipe's real transforms (mpvgbench.data_standins); a dense cell
#: keeps its task. Datasets without a stand-in of their own (digits) train on ``synthetic``.
SMOKE_DATASETS: dict[str, str] = {
    d.name: d.smoke_stand_in for d in DATASET_TABLE.values()
    if d.smoke_stand_in not in (None, "synthetic")
}
DOWNSTREAM_MODELS = frozenset({"deit_tiny"})  # ViT-Adapter-Ti wraps DeiT-Ti only


def dataset_info(name: str) -> DatasetInfo:
    """Facts about a dataset name; a one-line ``UnknownNameError`` naming the known ones otherwise."""
    try:
        return DATASET_TABLE[name]
    except KeyError:
        raise UnknownNameError(f"unknown dataset {name!r}; allowed: {', '.join(DATASET_TABLE)}") from None


def smoke_dataset(dataset: str) -> str:
    """The dataset a ``--smoke`` cell on ``dataset`` trains on (a stand-in trains on itself)."""
    return dataset_info(dataset).smoke_stand_in or dataset


def stood_in_for(dataset: str) -> list[str]:
    """The datasets whose ``--smoke`` cells train on ``dataset``, in table order (ImageNet's
    stand-in: imagenet, then imagefolder); empty for a dataset that stands in for none."""
    return [d.name for d in DATASET_TABLE.values() if d.name != dataset and smoke_dataset(d.name) == dataset]


def task_of(dataset: str) -> TaskInfo:
    """The task a dataset trains (unknown names are classification: a forward-compatible default
    for stored runs of datasets this version does not know)."""
    info = DATASET_TABLE.get(dataset)
    return TASKS[info.task if info is not None else "classification"]
