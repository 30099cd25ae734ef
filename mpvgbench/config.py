"""The resolved training configuration of one job: what the trainer consumes and what a job key hashes.

Only things that change the trained weights live here. Operational settings (executor, paths,
data roots, workers, devices) live elsewhere, so the same cell in two specs is the same run.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Annotated, Any, Literal, Optional

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, PositiveFloat, Strict,
                      field_validator)

from mpvgbench.methods import PEMethod, resolve_method


# Counts are whole numbers, never booleans (``epochs: true`` is not one epoch); no value is
# infinite or NaN (``lr: .inf`` validates as a float but trains nothing).
Count = Annotated[int, Strict(), Field(gt=0)]
NonNegativeCount = Annotated[int, Strict(), Field(ge=0)]


class ParamGroup(BaseModel):
    """Parameters whose names match any of ``match`` (fnmatch globs, e.g. ``"blocks.*"``) train at
    ``lr_scale`` x the recipe's lr; ``lr_scale: 0`` leaves them out of the optimizer (frozen)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    match: tuple[str, ...] = Field(min_length=1)
    lr_scale: float = Field(1.0, ge=0)


class Recipe(BaseModel):
    """Training hyper-parameters. Defaults are DeiT's ImageNet recipe (paper Table 7)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    epochs: Count = 300
    cooldown_epochs: NonNegativeCount = 0
    batch_size: Count = 1024  # global batch, over all processes
    lr: PositiveFloat = 5e-4
    lr_base_batch: Optional[Count] = 512  # lr is scaled by batch_size / lr_base_batch; null: no scaling
    min_lr: float = Field(1e-5, ge=0)
    warmup_epochs: NonNegativeCount = 5
    warmup_lr: float = Field(1e-6, ge=0)
    optimizer: Literal["adamw", "sgd", "adam", "lamb"] = "adamw"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.05, ge=0)
    sched: Literal["cosine", "step", "none"] = "cosine"
    drop_path: float = Field(0.1, ge=0, lt=1)
    drop: float = Field(0.0, ge=0, lt=1)
    grad_clip: Optional[PositiveFloat] = None
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    mixup: float = Field(0.8, ge=0)
    cutmix: float = Field(1.0, ge=0)
    mixup_prob: float = Field(1.0, ge=0, le=1)
    mixup_switch_prob: float = Field(0.5, ge=0, le=1)
    randaugment: Optional[str] = "rand-m9-mstd0.5-inc1"  # timm auto_augment string; null: off
    color_jitter: float = Field(0.4, ge=0)
    random_erasing: float = Field(0.25, ge=0, le=1)
    train_crop_scale: tuple[float, float] = (0.08, 1.0)
    eval_crop_pct: float = Field(0.875, gt=0, le=1)  # 256 -> 224
    repeated_aug: bool = True
    ema: bool = False
    ema_decay: float = Field(0.99996, gt=0, lt=1)
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    compile: bool = False  # torch.compile on CUDA; ignored on CPU
    max_steps_per_epoch: Optional[Count] = None  # smoke runs and benchmarks only
    eval_max_batches: Optional[Count] = None  # smoke runs only
    # Added after v1 (their defaults reproduce the v1 behaviour, so v1 job keys stay):
    # each parameter goes to the first group that matches its name; unmatched ones train at lr.
    # null: one lr for every parameter (mpvgbench.optim.build_optimizer).
    param_groups: Optional[tuple[ParamGroup, ...]] = None
    decay_all_params: bool = False  # weight decay on norms, biases, PEs and tokens too
    nesterov: Optional[bool] = None  # sgd only (ignored otherwise, like momentum); null: timm's "sgd" (Nesterov)
    # dense prediction only: an iteration-based schedule (ADE20K: 160k); null: ``epochs`` rule
    max_iters: Optional[Count] = None
    # dense prediction only: MPVG's Last-LN PE term inside ViT-Adapter, which the paper leaves
    # open (docs/downstream.md): "skip" (official ViT-Adapter: no final LN) or "apply" (LN + LN''
    # on the ViT tokens after the last block, before they join the pyramid)
    adapter_last_ln: Literal["skip", "apply"] = "skip"

    @field_validator("train_crop_scale")
    @classmethod
    def _crop_scale(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high <= 1:
            raise ValueError(f"train_crop_scale must be two area fractions 0 < min <= max <= 1, got {list(value)}")
        return value

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.cooldown_epochs

    def scaled_lr(self) -> float:
        if self.lr_base_batch is None:
            return self.lr
        return self.lr * self.batch_size / self.lr_base_batch


class TrainConfig(BaseModel):
    """Everything that determines one trained model. Its hash is the job key."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model: str  # short name from mpvgbench.catalog
    # stored as its five knobs (+ encoding / plugin identity when not the learned PE: PEMethod.to_json)
    method: Annotated[PEMethod, BeforeValidator(resolve_method), PlainSerializer(PEMethod.to_json, when_used="json")]
    dataset: str  # name from mpvgbench.data.DATASETS
    img_size: Count
    num_classes: Count
    seed: NonNegativeCount = 0
    recipe: Recipe = Recipe()
    init_from: Optional[str] = None  # job key of a finished run whose weights start this one (fine-tuning)
    # Added after v1: the input pipeline (spec data.loader). DALI's augmentations are its own
    # (docs/data.md), so a dali run is another run; at the default it is left out of the key.
    loader: Literal["timm", "dali"] = "timm"

    def key(self) -> str:
        return config_key(self)

    @property
    def method_label(self) -> str:
        return self.method.label


# The fields every job key of schema v1 hashed. A field added later is left out of the hash while
# it holds its default, so adding a knob never changes the key of a run that does not use it.
_V1_CONFIG_FIELDS = frozenset(
    {"model", "method", "dataset", "img_size", "num_classes", "seed", "recipe", "init_from"}
)
_V1_RECIPE_FIELDS = frozenset({
    "epochs", "cooldown_epochs", "batch_size", "lr", "lr_base_batch", "min_lr", "warmup_epochs",
    "warmup_lr", "optimizer", "momentum", "weight_decay", "sched", "drop_path", "drop",
    "grad_clip", "label_smoothing", "mixup", "cutmix", "mixup_prob", "mixup_switch_prob",
    "randaugment", "color_jitter", "random_erasing", "train_crop_scale", "eval_crop_pct",
    "repeated_aug", "ema", "ema_decay", "amp", "compile", "max_steps_per_epoch", "eval_max_batches",
})


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _json_fields(model: BaseModel, v1_fields: frozenset[str]) -> dict[str, Any]:
    """``model_dump(mode="json")`` without the post-v1 fields that hold their default."""
    dumped = model.model_dump(mode="json")
    for name, info in type(model).model_fields.items():
        if name not in v1_fields and getattr(model, name) == info.get_default(call_default_factory=True):
            del dumped[name]
    return dumped


@functools.lru_cache(maxsize=1024)
def _recipe_json(recipe: Recipe) -> str:
    # Recipes and methods are frozen and shared by every seed of a cell: encode each once.
    return _canonical_json(_json_fields(recipe, _V1_RECIPE_FIELDS))


@functools.lru_cache(maxsize=1024)
def _method_json(method: PEMethod) -> str:
    return _canonical_json(method.to_json())


def _scalar_json(value: Any) -> Optional[str]:
    """JSON of a str/int/bool/None exactly as ``json.dumps`` writes it; None for anything else."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.encoder.encode_basestring_ascii(value)
    return None


def config_payload(config: TrainConfig) -> str:
    """The canonical JSON a job key hashes: ``model_dump(mode="json")`` with sorted keys and no
    spaces, post-v1 fields left out while they hold their default. Built field by field so that
    the recipe and the method, shared by many jobs, are encoded once (10k-job dry-runs)."""
    fields = type(config).model_fields
    parts = []
    for name in sorted(fields):
        value = getattr(config, name)
        if name == "recipe":
            text = _recipe_json(value)
        elif name == "method":
            text = _method_json(value)
        elif name not in _V1_CONFIG_FIELDS and value == fields[name].get_default(call_default_factory=True):
            continue
        else:
            text = _scalar_json(value) or _canonical_json(config.model_dump(mode="json", include={name})[name])
        parts.append(f'"{name}":{text}')
    return "{" + ",".join(parts) + "}"


def config_key(config: TrainConfig) -> str:
    """16 hex digits of sha256 over the canonical JSON of the config: the job key."""
    return hashlib.sha256(config_payload(config).encode()).hexdigest()[:16]
