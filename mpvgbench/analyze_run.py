"""Analyse one run directory (``mpvgbench analyze``): build its model as the trainer did, load its
weights, run validation images through it and compute :mod:`mpvgbench.analyze`'s numbers.

The numbers and their definitions live in :mod:`mpvgbench.analyze`; this module is the run
directory side (checkpoint, config, data root) and the JSON record of one analysis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from mpvgbench.analyze import (
    NO_LAYERWISE_NOTE, collect_activations, last_ln_stats, layer_correlations,
)
from mpvgbench.catalog import task_of
from mpvgbench.errors import MpvgbenchError
from mpvgbench.methods import method_label
from mpvgbench.rundir import RunDir, RunDirError, read_checkpoint, read_config, read_job, read_result

__all__ = ["NotAnalysableError", "analyze_run", "load_model", "load_val_images", "not_analysable_reason"]


class NotAnalysableError(MpvgbenchError):
    """A run whose model is not a classifier whose forward pass the analysis measures."""


def not_analysable_reason(key: str, dataset: str, init_from: Optional[str]) -> Optional[str]:
    """Why a run cannot be analysed, in one line naming what to analyse instead (None: it can).

    A dense-prediction run's DeiT runs inside ViT-Adapter-Ti on multi-scale features with its
    PE interpolated to each image's grid; hooking it as a classifier on classification images
    would measure a forward pass it was never trained for, so its numbers would not be the
    paper's (Figs. 2-8 analyse the ImageNet classifiers). Its parent is such a classifier.
    """
    task = task_of(dataset)
    if task.name == "classification":
        return None
    instead = (f"analyze the DeiT-Ti it was fine-tuned from: mpvgbench analyze {init_from[:16]}"
               if init_from else "it was trained from scratch, so no classification run stands behind it")
    return (f"run {key[:8]} is a {task.name} run ({dataset}, ViT-Adapter-Ti) whose DeiT sees multi-scale "
            f"features and an interpolated PE, not a classifier's forward pass; {instead}")


def load_model(run_dir: Path | str, *, weights: str = "model", device: str = "cpu") -> tuple[nn.Module, Any, str]:
    """Build the run's model and load its checkpoint: ``(model, TrainConfig, weights_used)``.

    ``weights``: ``"model"`` (the weights whose top-1 is the run's result) or ``"ema"`` (the
    trainer's EMA copy; only when the recipe had ``ema: true``).
    """
    # the trainer's own builder, so the analysed model is built exactly as it was trained
    from mpvgbench.models import build_model_for_config

    if weights not in ("model", "ema"):
        raise ValueError(f"weights must be 'model' or 'ema', got {weights!r}")
    rd = RunDir(run_dir)
    config = read_config(rd.path)
    reason = not_analysable_reason(rd.path.name, config.dataset, config.init_from)
    if reason is not None:
        raise NotAnalysableError(reason)
    ckpt = read_checkpoint(rd.path)
    if ckpt is None:
        raise RunDirError(f"run {rd.path.name} has no checkpoint.pt in {rd.path}; it cannot be analyzed (retrain it)")
    state = ckpt["model"]
    if weights == "ema":
        state = _ema_state(ckpt)
        if state is None:
            raise RunDirError(f"run {rd.path.name}: its checkpoint has no EMA weights (recipe ema: false); use --weights model")
    model = build_model_for_config(config)
    model.load_state_dict(state)
    return model.to(device).eval(), config, weights


def _ema_state(ckpt: dict[str, Any]) -> Optional[dict[str, Tensor]]:
    value = ckpt.get("ema")
    if not isinstance(value, dict) or not value:
        return None
    # timm's ModelEmaV3 is a module wrapping the model: its keys carry a "module." prefix
    return {k.removeprefix("module."): v for k, v in value.items()}


def load_val_images(config: Any, data_root: Optional[str], n: int) -> Tensor:
    """``n`` validation images of the run's dataset (eval transforms), spread evenly over it.

    Evenly spaced indices, not the first ``n``: class-sorted sets (ImageFolder) would otherwise
    give ``n`` images of class 0. Deterministic, so every run of a comparison sees the same images.
    """
    from mpvgbench.data import build_datasets

    _, val = build_datasets(config, data_root)
    total = len(val)
    if total == 0:
        raise ValueError(f"dataset {config.dataset} has no validation images")
    count = min(n, total)
    indices = [i * total // count for i in range(count)]
    return torch.stack([val[i][0] for i in indices])


def analyze_run(
    run_dir: Path | str,
    *,
    images: int = 256,
    out_dir: Optional[Path | str] = None,
    device: str = "cpu",
    weights: str = "model",
    n_samples: int = 4,
    data_root: Optional[str] = None,
) -> dict[str, Any]:
    """Analyze one finished run; with ``out_dir``, also write its figures to ``out_dir/<key>/``.

    Returns a JSON-able dict: identification, ``correlation`` (per block, None where the block
    gets no PE; None entirely with ``correlation_note`` when the method has no layer-wise PE),
    ``last_ln`` (:func:`last_ln_stats`), ``figures`` (paths) and ``curve`` fields for plotting.
    """
    rd = RunDir(run_dir)
    model, config, used = load_model(rd.path, weights=weights, device=device)
    root = data_root if data_root is not None else read_job(rd.path).get("data_root")
    batch = load_val_images(config, root, images)
    acts = collect_activations(model, batch, n_samples=n_samples, device=device)
    result = read_result(rd.path) or {}
    corr = layer_correlations(acts) if acts.has_layerwise_pe else None
    analysis: dict[str, Any] = {
        "key": rd.path.name,
        "model": config.model,
        "method": method_label(config.method),
        "dataset": config.dataset,
        "pool": acts.method.pool,
        "images": acts.n_images,
        "weights": used,
        "top1": result.get("final_top1"),
        "depth": acts.depth,
        "correlation": corr,
        "correlation_note": None if corr is not None else NO_LAYERWISE_NOTE,
        "last_ln": last_ln_stats(model, acts),
        "figures": {},
    }
    if out_dir is not None:
        from mpvgbench.analyze_plots import write_run_figures

        analysis["figures"] = write_run_figures(acts.figure_arrays(), analysis, Path(out_dir).absolute() / rd.path.name)
    return analysis
