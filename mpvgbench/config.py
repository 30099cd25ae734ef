"""The resolved training configuration of one job: what the trainer consumes and what a job key hashes.

Only things that change the trained weights live here. Operational settings (executor, paths,
data roots, workers, devices) live elsewhere, so the same cell in two specs is the same run.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt


class ParamGroup(BaseModel):
    """Parameters whose names match any of ``match`` (fnmatch globs, e.g. ``"blocks.*"``) train at
    ``lr_scale`` x the recipe's lr; ``lr_scale: 0`` leaves them out of the optimizer (frozen)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    match: tuple[str, ...] = Field(min_length=1)
    lr_scale: float = Field(1.0, ge=0)


class Recipe(BaseModel):
    """Training hyper-parameters. Defaults are DeiT's ImageNet recipe (paper Table 7)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: PositiveInt = 300
    cooldown_epochs: int = Field(0, ge=0)
    batch_size: PositiveInt = 1024  # global batch, over all processes
    lr: PositiveFloat = 5e-4
    lr_base_batch: Optional[PositiveInt] = 512  # lr is scaled by batch_size / lr_base_batch; null: no scaling
    min_lr: float = Field(1e-5, ge=0)
    warmup_epochs: int = Field(5, ge=0)
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
    max_steps_per_epoch: Optional[PositiveInt] = None  # smoke runs and benchmarks only
    eval_max_batches: Optional[PositiveInt] = None  # smoke runs only
    # Added after v1 (their defaults reproduce the v1 behaviour, so v1 job keys stay):
    # each parameter goes to the first group that matches its name; unmatched ones train at lr.
    # null: one lr for every parameter (mpvgbench.optim.build_optimizer).
    param_groups: Optional[tuple[ParamGroup, ...]] = None
    decay_all_params: bool = False  # weight decay on norms, biases, PEs and tokens too
    nesterov: Optional[bool] = None  # sgd only (ignored otherwise, like momentum); null: timm's "sgd" (Nesterov)

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.cooldown_epochs

    def scaled_lr(self) -> float:
        if self.lr_base_batch is None:
            return self.lr
        return self.lr * self.batch_size / self.lr_base_batch


class TrainConfig(BaseModel):
    """Everything that determines one trained model. Its hash is the job key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str  # short name from mpvgbench.models.list_models()
    method: dict[str, Any]  # canonical knobs, mpvgbench.methods.canonical_method_dict()
    dataset: str  # name from mpvgbench.data.DATASETS
    img_size: PositiveInt
    num_classes: PositiveInt
    seed: int = 0
    recipe: Recipe = Recipe()
    init_from: Optional[str] = None  # job key of a finished run whose weights start this one (fine-tuning)

    def key(self) -> str:
        return config_key(self)

    @property
    def method_label(self) -> str:
        from mpvgbench.methods import method_label

        return method_label(self.method)


def config_key(config: TrainConfig) -> str:
    """16 hex digits of sha256 over the canonical JSON of the config."""
    payload = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
