"""Images/s per CPU core of every recipe's input pipeline, and the cores a GPU needs to be fed.

Each distinct train and eval pipeline of the shipped specs' classification cells (the timm
transforms ``mpvgbench.data`` builds from the recipe) runs in this one process on one thread
(one core): the real reader (ImageFolder decoding JPEGs, CIFAR100 reading its arrays), the
transform and the DataLoader's collate, over generated ImageNet-sized JPEGs (500x375, quality 90)
and CIFAR-100-format arrays (32x32). Decode alone is timed too. Rates are images per CPU-second
of this process (``time.process_time``), not per wall-clock second. Mixup/CutMix run on the device
batch in the trainer and are not a loader cost.

With ``--gpu-json`` (the file ``gpu_check.py --json`` writes) it divides each model's training
throughput by its pipeline's per-core rate: the cores one GPU needs so that training is not
data-bound.

    python benchmarks/bench_loader.py                           # ~2 minutes on one core
    python benchmarks/bench_loader.py --gpu-json gpu_check.json --json loader.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mpvgbench.catalog import model_info  # noqa: E402
from mpvgbench.config import TrainConfig  # noqa: E402
from mpvgbench.data import build_datasets  # noqa: E402
from mpvgbench.data_standins import make_cifar100_standin, make_imagenet_standin  # noqa: E402
from mpvgbench.matrix import expand  # noqa: E402
from mpvgbench.spec import load_spec  # noqa: E402

STAND_IN = {"imagenet": "imagenet_synthetic", "cifar100": "cifar100_synthetic"}
JPEG_SIZE, JPEG_QUALITY = (500, 375), 90  # a typical ImageNet photo


@dataclass
class Pipeline:
    """One distinct pipeline: the config that builds it and the models that use it."""

    name: str
    split: str  # "train" or "eval"
    config: TrainConfig
    models: set[str]


def shipped_pipelines() -> list[Pipeline]:
    """Every distinct (train and eval) transform of the shipped specs' classification cells."""
    found: dict[tuple[Any, ...], Pipeline] = {}
    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        for job in expand(load_spec(path)):
            c, r = job.config, job.config.recipe
            if c.dataset not in STAND_IN:
                continue
            for split, identity in (
                ("train", (c.dataset, c.img_size, r.train_crop_scale, r.color_jitter, r.randaugment, r.random_erasing)),
                ("eval", (c.dataset, c.img_size, r.eval_crop_pct)),
            ):
                key = (split, *identity)
                if key not in found:
                    found[key] = Pipeline(f"{c.dataset}-{c.img_size}-{split}", split, c, set())
                found[key].models.add(c.model)
    names: dict[str, int] = {}
    for p in found.values():  # two eval crops at one size: number them
        names[p.name] = names.get(p.name, 0) + 1
        if names[p.name] > 1:
            p.name += f"-{names[p.name]}"
    return list(found.values())


def make_roots(base: Path, images: int) -> dict[str, Path]:
    per_class = max(1, images // 10)
    return {
        "imagenet": make_imagenet_standin(base / "imagenet", classes=10, train_per_class=per_class,
                                          val_per_class=per_class, size=JPEG_SIZE, quality=JPEG_QUALITY,
                                          oddities=False),
        "cifar100": make_cifar100_standin(base / "cifar100", train_per_class=per_class, test_per_class=per_class),
    }


def _dataset(pipeline: Pipeline, root: Path, *, transform: bool = True) -> Any:
    c = pipeline.config
    standin = c.model_copy(update={"dataset": STAND_IN[c.dataset], "num_classes": 10})
    train, val = build_datasets(standin, root)
    ds = train if pipeline.split == "train" else val
    if not transform:
        ds.transform = None
    return ds


def images_per_s(dataset: Any, seconds: float, batch_size: int = 64, collate: bool = True) -> float:
    """One core: this process on one thread reads, transforms and collates for ``seconds`` of
    its own CPU time; images per CPU-second, so a machine shared with other work still
    measures what one core of it does (wall-clock would count the time others held the core)."""
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0,
                        collate_fn=None if collate else (lambda batch: batch))
    done, start = 0, time.process_time()
    while time.process_time() - start < seconds:
        for batch in loader:
            done += len(batch[0]) if collate else len(batch)
            if time.process_time() - start >= seconds:
                break
    return done / (time.process_time() - start)


def measure(pipelines: list[Pipeline], roots: dict[str, Path], seconds: float) -> list[dict[str, Any]]:
    torch.set_num_threads(1)
    rows = []
    decode_done: dict[str, float] = {}
    for p in pipelines:
        dataset_name = p.config.dataset
        if dataset_name not in decode_done:  # the reader alone: JPEG decode + RGB, or array lookup
            decode_done[dataset_name] = images_per_s(_dataset(p, roots[dataset_name], transform=False),
                                                     seconds, collate=False)
        rate = images_per_s(_dataset(p, roots[dataset_name]), seconds)
        rows.append({"pipeline": p.name, "split": p.split, "img_size": p.config.img_size,
                     "models": sorted(p.models), "img_s_per_core": round(rate, 1),
                     "ms_per_img": round(1000 / rate, 2), "decode_img_s_per_core": round(decode_done[dataset_name], 1)})
    return rows


def pipeline_for(model: str, rows: list[dict[str, Any]], split: str = "train") -> Optional[dict[str, Any]]:
    """The pipeline row a model trains with at its default size (ImageNet at 224, CIFAR at 32)."""
    info = model_info(model)
    for row in rows:
        if row["split"] == split and model in row["models"] and row["img_size"] == info.default_img_size:
            return row
    return None


def cores_per_gpu(gpu_report: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model (its default method's numbers): training img/s on the GPU / per-core loader img/s."""
    out = []
    for result in gpu_report.get("results", []):
        if result["method"] != "default" or ":" in result["model"]:
            continue
        row = pipeline_for(result["model"], rows)
        if row is None:
            continue
        needed = result["train_img_s"] / row["img_s_per_core"]
        out.append({"model": result["model"], "gpu_train_img_s": result["train_img_s"],
                    "pipeline": row["pipeline"], "loader_img_s_per_core": row["img_s_per_core"],
                    "cores_per_gpu": math.ceil(needed)})
    return out


def print_tables(rows: list[dict[str, Any]], cores: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="input pipelines, one core (decode + transform + collate)")
    for col in ("pipeline", "models", "img/s per core", "ms/img", "decode only img/s"):
        table.add_column(col, justify="left" if col in ("pipeline", "models") else "right")
    for r in rows:
        table.add_row(r["pipeline"], ", ".join(r["models"]), f"{r['img_s_per_core']:.0f}", f"{r['ms_per_img']:.2f}",
                      f"{r['decode_img_s_per_core']:.0f}")
    console = Console(width=160)
    console.print(table)
    if cores:
        need = Table(title="cores one GPU needs (gpu_check train img/s / loader img/s per core)")
        for col in ("model", "GPU train img/s", "pipeline", "loader img/s/core", "cores per GPU"):
            need.add_column(col, justify="left" if col in ("model", "pipeline") else "right")
        for c in cores:
            need.add_row(c["model"], f"{c['gpu_train_img_s']:.0f}", c["pipeline"],
                         f"{c['loader_img_s_per_core']:.0f}", str(c["cores_per_gpu"]))
        console.print(need)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=200, help="generated images per split and dataset")
    p.add_argument("--seconds", type=float, default=8.0, help="timed seconds per pipeline")
    p.add_argument("--only", nargs="*", default=None, help="pipeline names to run (default: all)")
    p.add_argument("--gpu-json", type=Path, default=None, help="gpu_check.py --json output: cores per GPU")
    p.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    pipelines = [pl for pl in shipped_pipelines() if args.only is None or pl.name in args.only]
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        rows = measure(pipelines, make_roots(Path(tmp), args.images), args.seconds)
    cores = cores_per_gpu(json.loads(args.gpu_json.read_text()), rows) if args.gpu_json else []
    print_tables(rows, cores)
    if args.json is not None:
        args.json.write_text(json.dumps({"jpeg": list(JPEG_SIZE), "quality": JPEG_QUALITY, "torch_threads": 1,
                                         "pipelines": rows, "cores_per_gpu": cores}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
