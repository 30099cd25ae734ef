"""The paper's numbers as data (Lee, Ham, Kim, "Maximizing the Position Embedding for Vision
Transformers with Global Average Pooling", AAAI 2025): Tables 1-6 and Fig. 5.

Every row names a backbone by its short model name, a dataset, and a method as a preset or a
knob mapping that :func:`mpvgbench.methods.resolve_method` accepts. The report finds the runs
of a row by ``(model, dataset, PEMethod)``, never by a label string, so
the same cell in two tables (Table 1's DeiT-Ti MPVG is Table 5's ``pos_0`` row) is one run.

Transcription notes (see also ``docs/methods.md``):

- ``params`` are the exact counts of methods.md; ``params_printed`` is the paper's cell in
  millions (three printed cells differ from the exact counts by 0.001M).
- Swin-Ti: the paper's PVG and MPVG "exceptionally include layer 0"; the Swin model does that
  itself for the plain ``pvg``/``mpvg`` presets, so the rows name those presets, as specs do.
- Table 6 lost its check marks in the text; the rows are the decoded ones of methods.md.
- Tables 3-4 are downstream tasks (ViT-Adapter-Ti with Mask R-CNN on COCO 2017 / UperNet on
  ADE20K) from a DeiT-Ti backbone pre-trained with each method on ImageNet; ``model`` is that
  backbone and ``dataset`` the downstream dataset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional, Union

from mpvgbench.errors import UnknownNameError
from mpvgbench.methods import MethodLike, PEMethod, resolve_method

TableId = Union[int, str]

MODEL_NAMES: dict[str, str] = {
    "deit_tiny": "DeiT-Ti",
    "deit_small": "DeiT-S",
    "deit_base": "DeiT-B",
    "swin_tiny": "Swin-Ti",
    "ceit_tiny": "CeiT-Ti",
    "t2t_vit_7": "T2T-ViT-7",
    "vit_lite_7_4": "ViT-Lite-7/4",
}
DATASET_NAMES: dict[str, str] = {
    "imagenet": "ImageNet-1K", "cifar100": "CIFAR-100", "coco": "COCO 2017", "ade20k": "ADE20K",
}


@dataclass(frozen=True)
class Metric:
    """A reported quantity: ``top1`` (results columns) or a name looked up in ``results.extra``."""

    name: str
    header: str
    digits: int = 2


@dataclass(frozen=True)
class PaperRow:
    model: str
    dataset: str
    method: Union[str, Mapping[str, Any]]  # preset name or knob mapping (resolve_method)
    values: Mapping[str, float]  # metric name -> the paper's number
    labels: tuple[str, ...]  # one per PaperTable.label_columns
    params: Optional[int] = None  # exact parameter count (methods.md)
    params_printed: Optional[float] = None  # the paper's "#Params (M)" cell
    source: str = ""  # where a value not from the MPVG paper was read (zoo rows)

    @property
    def pe_method(self) -> PEMethod:
        return resolve_method(self.method)

    @property
    def method_label(self) -> str:
        return self.pe_method.label


@dataclass(frozen=True)
class PaperTable:
    id: TableId
    title: str
    label_columns: tuple[str, ...]
    metrics: tuple[Metric, ...]
    rows: tuple[PaperRow, ...]
    downstream: bool = False  # Tables 3-4: dense prediction (mpvgbench.downstream)
    notes: tuple[str, ...] = ()  # printed under the table (the zoo's sources)

    @property
    def has_params(self) -> bool:
        return any(row.params_printed is not None for row in self.rows)


TOP1 = Metric("top1", "Top-1 (%)")
METHOD_NAMES = {"default": "Default", "lape": "LaPE", "pvg": "PVG", "mpvg": "MPVG"}
_METHODS = ("default", "lape", "pvg", "mpvg")


def _block(model: str, dataset: str, top1: tuple[float, ...], printed: tuple[float, ...],
           exact: tuple[int, ...]) -> list[PaperRow]:
    """Four rows (Default, LaPE, PVG, MPVG) of Table 1 or 2."""
    return [
        # Swin-Ti: the model itself runs PVG/MPVG with layer 0 included (docs/methods.md), so the
        # rows name the plain presets, exactly as a spec does.
        PaperRow(model, dataset, m, {"top1": t},
                 (MODEL_NAMES[model], METHOD_NAMES[m]), params=n, params_printed=p)
        for m, t, p, n in zip(_METHODS, top1, printed, exact)
    ]


TABLE1 = PaperTable(1, "Table 1: top-1 accuracy on ImageNet-1K", ("Model", "Method"), (TOP1,), (
    *_block("deit_tiny", "imagenet", (72.14, 72.94, 73.17, 73.51), (5.717, 5.721, 5.721, 5.721),
            (5_717_416, 5_722_024, 5_721_256, 5_721_640)),
    *_block("deit_small", "imagenet", (79.81, 80.39, 80.38, 80.61), (22.050, 22.059, 22.058, 22.059),
            (22_050_664, 22_059_880, 22_058_344, 22_059_112)),
    *_block("deit_base", "imagenet", (81.85, 82.15, 82.21, 82.42), (86.567, 86.586, 86.583, 86.584),
            (86_567_656, 86_586_088, 86_583_016, 86_584_552)),
    *_block("swin_tiny", "imagenet", (81.37, 81.48, 81.52, 81.64), (28.589, 28.599, 28.598, 28.599),
            (28_589_410, 28_598_242, 28_598_242, 28_599_778)),
    *_block("ceit_tiny", "imagenet", (76.62, 76.89, 77.14, 77.20), (6.356, 6.361, 6.361, 6.361),
            (6_356_904, 6_361_512, 6_361_128, 6_361_512)),
    *_block("t2t_vit_7", "imagenet", (71.76, 72.01, 71.91, 72.28), (4.310, 4.313, 4.312, 4.313),
            (4_310_222, 4_313_806, 4_312_782, 4_313_294)),
))

TABLE2 = PaperTable(2, "Table 2: top-1 accuracy on CIFAR-100 (T2T-ViT-7 fine-tuned from ImageNet)",
                    ("Model", "Method"), (TOP1,), (
    *_block("vit_lite_7_4", "cifar100", (74.90, 75.52, 76.67, 76.87), (3.740, 3.744, 3.742, 3.743),
            (3_740_004, 3_743_588, 3_742_564, 3_743_076)),
    *_block("t2t_vit_7", "cifar100", (83.22, 83.41, 83.39, 83.51), (4.078, 4.082, 4.081, 4.081),
            (4_078_922, 4_082_506, 4_081_482, 4_081_994)),
))


def _downstream(dataset: str, values: tuple[Mapping[str, float], ...]) -> tuple[PaperRow, ...]:
    return tuple(PaperRow("deit_tiny", dataset, m, v, ("ViT-Adapter-Ti", "DeiT-Ti", METHOD_NAMES[m]))
                 for m, v in zip(_METHODS, values))


TABLE3 = PaperTable(
    3, "Table 3: object detection on COCO 2017 (ViT-Adapter-Ti, Mask R-CNN 3x+MS)",
    ("Model", "Pre-trained", "Method"),
    (Metric("ap_box", "AP box", 1), Metric("ap_mask", "AP mask", 1)),
    _downstream("coco", ({"ap_box": 45.9, "ap_mask": 41.0}, {"ap_box": 46.2, "ap_mask": 41.2},
                         {"ap_box": 46.1, "ap_mask": 41.2}, {"ap_box": 46.5, "ap_mask": 41.4})),
    downstream=True,
)
TABLE4 = PaperTable(
    4, "Table 4: semantic segmentation on ADE20K (ViT-Adapter-Ti, UperNet)",
    ("Model", "Pre-trained", "Method"), (Metric("miou", "mIoU"),),
    _downstream("ade20k", ({"miou": 40.55}, {"miou": 41.42}, {"miou": 41.07}, {"miou": 41.69})),
    downstream=True,
)

_DT = MODEL_NAMES["deit_tiny"]
TABLE5 = PaperTable(
    5, "Table 5: the PE added to the Last LN in MPVG (DeiT-Ti, ImageNet-1K)",
    ("Model", "Method", "Last LN PE"), (TOP1,), (
        *(PaperRow("deit_tiny", "imagenet", {"base": "mpvg", "last_ln_pe": k}, {"top1": t},
                   (_DT, "MPVG", f"pos_{k}"), params=5_721_640)
          for k, t in ((11, 73.30), (8, 73.38), (5, 73.39))),
        PaperRow("deit_tiny", "imagenet", "mpvg", {"top1": 73.51}, (_DT, "MPVG", "pos_0"),
                 params=5_721_640),
        PaperRow("deit_tiny", "imagenet", "pvg", {"top1": 73.17}, (_DT, "PVG (reference)", "-"),
                 params=5_721_256),
    ),
)

TABLE6 = PaperTable(
    6, "Table 6: structural variants of MPVG (DeiT-Ti, ImageNet-1K)",
    ("Model", "Layer 0", "Hierarchical", "x+PE"), (TOP1,), (
        PaperRow("deit_tiny", "imagenet", {"base": "mpvg", "layerwise_from": 0}, {"top1": 73.31},
                 (_DT, "yes", "yes", "yes"), params=5_722_024),
        PaperRow("deit_tiny", "imagenet", {"base": "mpvg", "hierarchical": False}, {"top1": 73.48},
                 (_DT, "no", "no", "yes"), params=5_721_640),
        PaperRow("deit_tiny", "imagenet", {"base": "mpvg", "add_to_input": False}, {"top1": 73.28},
                 (_DT, "no", "yes", "no"), params=5_721_640),
        PaperRow("deit_tiny", "imagenet", "mpvg", {"top1": 73.51}, (_DT, "no", "yes", "yes"),
                 params=5_721_640),
    ),
)

FIG5 = PaperTable(
    "fig5", "Fig. 5: GAP without layer-wise PE, with and without PE at the Last LN (DeiT-Ti)",
    ("Model", "Method"), (TOP1,), (
        PaperRow("deit_tiny", "imagenet", "gap", {"top1": 72.40}, (_DT, "GAP (a)"),
                 params=5_717_032),
        PaperRow("deit_tiny", "imagenet", "gap_lastln", {"top1": 72.14}, (_DT, "GAP + Last-LN PE (b)"),
                 params=5_717_416),
    ),
)

# The PE zoo (experiments/pe_zoo.yaml): each original paper's own number where one exists for
# this backbone, read from a source found with a search tool, never from memory; blank elsewhere.
# default / mpvg: this paper's Table 1 / Table 2. RoPE-ViT (Heo et al., arXiv 2403.13298): the
# naver-ai/rope-vit README's "DeiT-III (400 epochs)" table, Top-1 (224x224), ViT-S rows: a
# different recipe (DeiT-III, 400 epochs, LayerScale) than ours, so a gap is expected. CPVT
# (arXiv 2102.10882) and MAE's sin-cos: no table for these exact backbones was found: blank.
_ROPE_VIT = "RoPE-ViT, arXiv 2403.13298, naver-ai/rope-vit README table 'DeiT-III (400 epochs)'"
_ZOO_METHODS: dict[str, str] = {
    "default": "Default", "mpvg": "MPVG", "sincos2d": "sin-cos 2-D", "rope_axial": "RoPE-Axial",
    "rope_mixed": "RoPE-Mixed", "peg": "PEG (CPVT)", "peg_gap": "PEG + GAP (CPVT-GAP)",
}
_ZOO_VALUES: dict[tuple[str, str], tuple[float, str]] = {
    ("deit_tiny", "default"): (72.14, "this paper, Table 1"),
    ("deit_tiny", "mpvg"): (73.51, "this paper, Table 1"),
    ("deit_small", "default"): (79.81, "this paper, Table 1"),
    ("deit_small", "mpvg"): (80.61, "this paper, Table 1"),
    ("deit_small", "rope_axial"): (80.9, _ROPE_VIT),
    ("deit_small", "rope_mixed"): (80.9, _ROPE_VIT),
    ("vit_lite_7_4", "default"): (74.90, "this paper, Table 2"),
    ("vit_lite_7_4", "mpvg"): (76.87, "this paper, Table 2"),
}
ZOO = PaperTable(
    "zoo", "PE zoo: DeiT-Ti/S on ImageNet-1K, ViT-Lite-7/4 on CIFAR-100 (original papers beside ours)",
    ("Model", "Method"), (TOP1,), tuple(
        PaperRow(model, dataset, method, {"top1": _ZOO_VALUES[(model, method)][0]} if (model, method) in _ZOO_VALUES
                 else {}, (MODEL_NAMES[model], label), source=_ZOO_VALUES.get((model, method), (0, ""))[1])
        for model, dataset in (("deit_tiny", "imagenet"), ("deit_small", "imagenet"), ("vit_lite_7_4", "cifar100"))
        for method, label in _ZOO_METHODS.items()
    ),
    notes=(f"paper column: this paper (Tables 1-2) and {_ROPE_VIT} (DeiT-III recipe, 400 epochs: not "
           "ours); blank: no published number for this backbone",),
)

TABLES: dict[TableId, PaperTable] = {t.id: t for t in (TABLE1, TABLE2, TABLE3, TABLE4, TABLE5,
                                                          TABLE6, FIG5)}  # the paper's own
_REPORTABLE: dict[TableId, PaperTable] = {**TABLES, ZOO.id: ZOO}  # `report --table`
TABLE_IDS: tuple[str, ...] = tuple(str(i) for i in TABLES)  # "1".."6", "fig5": for a CLI choice


def get_table(table: TableId) -> PaperTable:
    """Table 1-6 (int or "1".."6"), "fig5" or "zoo"; anything else is a one-line ValueError."""
    text = str(table).strip().lower().removeprefix("table").strip()
    key: TableId = int(text) if text.isdigit() else text
    if key not in _REPORTABLE:
        raise UnknownNameError(f"no paper table {table!r}; choose one of {', '.join(TABLE_IDS)}, zoo")
    return _REPORTABLE[key]


def find_rows(model: str, dataset: str, method: MethodLike) -> list[PaperRow]:
    """Every paper row of this cell (the same cell can appear in several tables)."""
    wanted = resolve_method(method)
    return [row for t in TABLES.values() for row in t.rows
            if row.model == model and row.dataset == dataset and row.pe_method == wanted]


__all__ = [
    "DATASET_NAMES", "FIG5", "MODEL_NAMES", "Metric", "PaperRow", "PaperTable", "TABLES",
    "TABLE_IDS", "TOP1", "ZOO", "find_rows", "get_table",
]
