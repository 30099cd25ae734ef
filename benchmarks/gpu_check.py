"""Check a GPU machine: every model x PE method trains and evaluates compiled in bf16, fast enough.

For every model x {default, gap, lape, pvg, mpvg}, on synthetic data: ``--steps`` compiled bf16
training steps (AdamW) and ``--steps`` eval steps, after ``--warmup`` untimed steps (the
compile). All configurations, timm's own ``deit_tiny_patch16_224`` included, are built first and
then timed in interleaved chunks (chunk r of every configuration, then chunk r + 1, ...), so
machine drift hits them alike; ratios are medians of per-chunk ratios. Prints a rich table and,
with ``--json``, writes every number. Exit status 1 when a loss is not finite or a target is
missed.

Data-bound check (``--loader-seconds``, 0 to skip): each model's training pipeline (the timm
transforms its recipe uses at its default size: ImageNet JPEGs at 224, CIFAR at 32) is timed on
one core with ``bench_loader.py``; a model is data-bound here when its training img/s divided by
that per-core rate exceeds the cores this machine has per GPU. (Meaningful at full size, not
with ``--tiny``: the model then runs at its smoke size.)

``--dali`` also times ``data.loader: dali``'s training pipelines on the device (nvJPEG decode,
crop, RandAugment on the GPU; CIFAR resident on it), in img/s, for comparison with the models'
training img/s.

Targets (printed beside the numbers):
  GPU: mpvg train >= 0.97x its default, eval >= 0.99x; our default DeiT-Ti >= 1.0x timm's.
  CPU: no method below 0.95x its default (train and eval).

    python benchmarks/gpu_check.py --json gpu_check.json            # on the GPU machine
    python benchmarks/gpu_check.py --device cpu --tiny --models vit_micro   # anywhere, small
    python benchmarks/gpu_check.py --write-throughput   # img/s for `run --dry-run`'s estimate
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import timm
import torch
import torch.nn.functional as F
from torch import nn

import mpvgbench.models as M

FAMILIES = ["deit_tiny", "swin_tiny", "ceit_tiny", "t2t_vit_7", "vit_lite_7_4", "vit_micro"]
METHODS = ["default", "gap", "lape", "pvg", "mpvg"]
TIMM = "timm:deit_tiny"
GPU_TARGETS = {"mpvg_train": 0.97, "mpvg_eval": 0.99, "deit_vs_timm": 1.0}
CPU_MIN_RATIO = 0.95


@dataclass
class Config:
    """One model x method (or timm's DeiT-Ti) with its compiled step functions and its samples."""

    name: str
    method: str
    img_size: int
    train_step: Callable[[], torch.Tensor]
    eval_step: Callable[[], None]
    samples: dict[str, list[float]] = field(default_factory=lambda: {"train": [], "eval": []})
    losses: list[torch.Tensor] = field(default_factory=list)
    peak_mem_mb: float = 0.0

    @property
    def label(self) -> str:
        return TIMM if self.name == TIMM else f"{self.name}:{self.method}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # CPU: the process's peak RSS so far (Linux: KiB); monotonic, an upper bound per config
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _build(name: str, method: str, img_size: int, num_classes: int) -> nn.Module:
    if name == TIMM:
        return timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=num_classes, img_size=img_size)
    return M.build_model(name, method, num_classes=num_classes, img_size=img_size)


def _make_config(name: str, method: str, args: argparse.Namespace, device: torch.device) -> Config:
    info = M.model_info("deit_tiny" if name == TIMM else name)
    size = args.img_size or (info.smoke_img_size if args.tiny else info.default_img_size)
    torch.manual_seed(0)
    model = _build(name, method, size, args.num_classes).to(device)
    step_model = model if args.backend == "none" else torch.compile(model, backend=args.backend)
    g = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(args.batch_size, info.in_chans, size, size, generator=g).to(device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), generator=g).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    bf16 = torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def train_step() -> torch.Tensor:
        model.train()
        with bf16:
            loss = F.cross_entropy(step_model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach().float()

    def eval_step() -> None:
        model.eval()
        with torch.no_grad(), bf16:
            step_model(x)

    return Config(name, method, size, train_step, eval_step)


def _timed_chunk(cfg: Config, mode: str, steps: int, device: torch.device, batch: int) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        if mode == "train":
            cfg.losses.append(cfg.train_step())
        else:
            cfg.eval_step()
    _sync(device)
    cfg.samples[mode].append(batch * steps / (time.perf_counter() - start))
    cfg.peak_mem_mb = max(cfg.peak_mem_mb, _peak_mb(device))


def measure(args: argparse.Namespace, device: torch.device) -> list[Config]:
    configs = [_make_config(n, m, args, device) for n in args.models for m in args.methods]
    if not args.no_timm:
        configs.append(_make_config(TIMM, "default", args, device))
    for cfg in configs:  # compile both modes before any timing
        for _ in range(args.warmup):
            cfg.losses.append(cfg.train_step())
            cfg.eval_step()
    chunks = max(1, min(args.chunks, args.steps))
    per_chunk = [args.steps // chunks + (1 if i < args.steps % chunks else 0) for i in range(chunks)]
    for mode in ("train", "eval"):
        for r, steps in enumerate(per_chunk):
            order = configs[r % len(configs):] + configs[: r % len(configs)]  # rotate the order
            for cfg in order:
                _timed_chunk(cfg, mode, steps, device, args.batch_size)
    return configs


def _paired(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def summarize(configs: list[Config], args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    by_label = {c.label: c for c in configs}
    timm_cfg = by_label.get(TIMM)
    rows: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    for cfg in configs:
        losses = torch.stack(cfg.losses).tolist() if cfg.losses else []
        default = by_label.get(f"{cfg.name}:default")
        row: dict[str, Any] = {
            "model": cfg.name, "method": cfg.method, "img_size": cfg.img_size,
            "losses_finite": bool(losses) and all(math.isfinite(v) for v in losses),
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "peak_mem_mb": round(cfg.peak_mem_mb, 1),
        }
        for mode in ("train", "eval"):
            row[f"{mode}_img_s"] = round(statistics.median(cfg.samples[mode]), 2)
            row[f"{mode}_vs_default"] = (
                round(_paired(cfg.samples[mode], default.samples[mode]), 4) if default and cfg.name != TIMM else None
            )
            row[f"{mode}_vs_timm"] = round(_paired(cfg.samples[mode], timm_cfg.samples[mode]), 4) if timm_cfg else None
        rows.append(row)
        if cfg.name == TIMM or cfg.method == "default":
            continue
        for mode in ("train", "eval"):
            value = row[f"{mode}_vs_default"]
            if device.type == "cuda" and cfg.method == "mpvg":
                targets.append(_target(f"{cfg.label} {mode} vs default", value, GPU_TARGETS[f"mpvg_{mode}"]))
            elif device.type == "cpu":
                targets.append(_target(f"{cfg.label} {mode} vs default", value, CPU_MIN_RATIO))
    ours = by_label.get("deit_tiny:default")
    if device.type == "cuda" and ours and timm_cfg:
        for mode in ("train", "eval"):
            value = round(_paired(ours.samples[mode], timm_cfg.samples[mode]), 4)
            targets.append(_target(f"deit_tiny:default {mode} vs timm", value, GPU_TARGETS["deit_vs_timm"]))
    return {
        "device": str(device), "device_name": _device_name(device), "tiny": args.tiny,
        "dtype": "bfloat16", "backend": args.backend, "steps": args.steps, "warmup": args.warmup,
        "chunks": args.chunks, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "timm": timm.__version__,
        "peak_mem_kind": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process peak RSS so far",
        "results": rows, "targets": targets,
    }


def _target(name: str, value: Optional[float], minimum: float) -> dict[str, Any]:
    return {"name": name, "value": value, "min": minimum, "ok": value is not None and value >= minimum}


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else (os.uname().machine + " CPU")


def _ratio_cell(value: Optional[float], minimum: Optional[float]) -> str:
    if value is None:
        return "-"
    if minimum is None:
        return f"{value:.3f}"
    return f"[green]{value:.3f} ok[/]" if value >= minimum else f"[red]{value:.3f} LOW[/]"


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    cuda = report["device"].startswith("cuda")
    table = Table(title=f"gpu_check on {report['device_name']} ({report['backend']}, bf16, batch {report['batch_size']})")
    for col in ("model", "method", "px", "train img/s", "x default", "x timm", "eval img/s", "x default",
                "x timm", "peak MiB", "loss first->last", "target"):
        table.add_column(col, justify="left" if col in ("model", "method") else "right")
    for row in report["results"]:
        method = row["method"]
        is_method = row["model"] != TIMM and method != "default"
        mins: dict[str, Optional[float]] = {"train": None, "eval": None}
        if is_method and not cuda:
            mins = {"train": CPU_MIN_RATIO, "eval": CPU_MIN_RATIO}
        elif is_method and method == "mpvg":
            mins = {"train": GPU_TARGETS["mpvg_train"], "eval": GPU_TARGETS["mpvg_eval"]}
        timm_min = GPU_TARGETS["deit_vs_timm"] if cuda and row["model"] == "deit_tiny" and method == "default" else None
        loss = f"{row['first_loss']:.3f}->{row['last_loss']:.3f}" if row["losses_finite"] else "[red]NOT FINITE[/]"
        target = []
        if mins["train"] is not None:
            target.append(f"train >= {mins['train']:g}x, eval >= {mins['eval']:g}x default")
        if timm_min is not None:
            target.append(f">= {timm_min:g}x timm")
        table.add_row(
            row["model"], method, str(row["img_size"]),
            f"{row['train_img_s']:.1f}", _ratio_cell(row["train_vs_default"], mins["train"]),
            _ratio_cell(row["train_vs_timm"], timm_min),
            f"{row['eval_img_s']:.1f}", _ratio_cell(row["eval_vs_default"], mins["eval"]),
            _ratio_cell(row["eval_vs_timm"], timm_min),
            f"{row['peak_mem_mb']:.0f}", loss, "; ".join(target) or "-",
        )
    console = Console(width=200)  # the table is wide; never squeeze it into a pipe's 80 columns
    console.print(table)
    console.print(f"peak memory: {report['peak_mem_kind']}")
    missed = [t for t in report["targets"] if not t["ok"]]
    console.print(f"targets: {len(report['targets']) - len(missed)}/{len(report['targets'])} met"
                  + "".join(f"\n  MISSED {t['name']}: {t['value']} < {t['min']}" for t in missed))
    ddp = report.get("ddp", {})
    console.print(f"DDP: {ddp.get('status', 'not run')}")


# ------------------------------------------------------------------------------------- DDP


def _ddp_worker(rank: int, world: int, backend: str, port: int, queue: Any) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.manual_seed(0)  # same init on both ranks (DDP also broadcasts rank 0's)
        name = "deit_tiny" if device.type == "cuda" else "vit_micro"
        info = M.model_info(name)
        size = info.default_img_size if device.type == "cuda" else info.smoke_img_size
        model = nn.parallel.DistributedDataParallel(
            M.build_model(name, "mpvg", num_classes=10, img_size=size).to(device),
            device_ids=[rank] if device.type == "cuda" else None,
        )
        g = torch.Generator().manual_seed(100 + rank)  # different data per rank
        x = torch.randn(8, info.in_chans, size, size, generator=g).to(device)
        y = torch.randint(0, 10, (8,), generator=g).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        # after one synchronised step every rank must hold the same weights
        checksum = torch.stack([p.detach().float().sum() for p in model.parameters()]).sum().reshape(1)
        gathered = [torch.zeros_like(checksum) for _ in range(world)]
        dist.all_gather(gathered, checksum)
        if rank == 0:
            same = all(torch.allclose(gathered[0], t) for t in gathered)
            queue.put({"loss_finite": bool(torch.isfinite(loss)), "weights_equal": same})
    finally:
        dist.destroy_process_group()


def ddp_check(device: torch.device) -> dict[str, Any]:
    """One 2-process DDP step: NCCL on 2 GPUs; gloo on CPU (the same code path, runnable anywhere)."""
    import socket

    import torch.multiprocessing as mp

    if device.type == "cuda" and torch.cuda.device_count() < 2:
        return {"ran": False, "status": f"skipped: needs 2 GPUs, found {torch.cuda.device_count()}"}
    backend = "nccl" if device.type == "cuda" else "gloo"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_ddp_worker, args=(2, backend, port, queue), nprocs=2, start_method="spawn")
    result = queue.get()
    ok = result["loss_finite"] and result["weights_equal"]
    return {"ran": True, "backend": backend, "ok": ok, **result,
            "status": f"2-process {backend} step {'ok' if ok else 'FAILED'} ({result})"}


# ------------------------------------------------------------------------------ data-bound


def data_bound_check(report: dict[str, Any], seconds: float, images: int = 100) -> dict[str, Any]:
    """Per model: cores its loader needs at this GPU's training speed vs cores here per GPU."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_loader

    gpus = max(1, torch.cuda.device_count()) if report["device"].startswith("cuda") else 1
    cores_here = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = torch.get_num_threads()
    rows: list[dict[str, Any]] = []
    try:
        used = {r["model"] for r in report["results"]}
        pipelines = [p for p in bench_loader.shipped_pipelines() if p.split == "train" and p.models & used]
        if pipelines:  # vit_micro trains on the in-memory digits: no loader to time
            with tempfile.TemporaryDirectory(prefix="gpu_check_loader_") as tmp:
                rows = bench_loader.measure(pipelines, bench_loader.make_roots(Path(tmp), images), seconds)
    finally:
        torch.set_num_threads(threads)
    models = []
    for need in bench_loader.cores_per_gpu(report, rows):
        need["cores_here_per_gpu"] = cores_here // gpus
        need["data_bound"] = need["cores_per_gpu"] > need["cores_here_per_gpu"]
        models.append(need)
    return {"cores_here": cores_here, "gpus": gpus, "models": models, "pipelines": rows}


def print_data_bound(check: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"data-bound? {check['cores_here']} cores for {check['gpus']} GPU(s), timm loader")
    for col in ("model", "train img/s", "loader img/s/core", "cores needed", "cores here", "data-bound"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for m in check["models"]:
        bound = "[red]yes[/]" if m["data_bound"] else "[green]no[/]"
        table.add_row(m["model"], f"{m['gpu_train_img_s']:.0f}", f"{m['loader_img_s_per_core']:.0f}",
                      str(m["cores_per_gpu"]), str(m["cores_here_per_gpu"]), bound)
    Console(width=160).print(table)


DALI_PIPELINES = ("imagenet-224-train", "cifar100-32-train")  # DeiT family on JPEGs; ViT-Lite on CIFAR


def dali_check(device: torch.device, *, images: int = 100, batches: int = 20, batch_size: int = 128) -> dict[str, Any]:
    """Training img/s of ``data.loader: dali`` on this device (GPU decode and augmentation; on a
    CPU, DALI's CPU mode), for the two training pipelines, after one untimed batch (graph build)."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_loader
    from mpvgbench.data import build_datasets
    from mpvgbench.data_dali import build_dali_loader, require_dali

    require_dali()
    threads = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu_check_dali_") as tmp:
        roots = bench_loader.make_roots(Path(tmp), images)
        for pipeline in (p for p in bench_loader.shipped_pipelines() if p.name in DALI_PIPELINES):
            real = pipeline.config.dataset
            config = pipeline.config.model_copy(update={
                "dataset": bench_loader.STAND_IN[real], "num_classes": 10, "loader": "dali"})
            train, _ = build_datasets(config, roots[real], train_transform_only=True)
            sampler = torch.utils.data.RandomSampler(train, replacement=True, num_samples=batch_size * (batches + 1),
                                                     generator=torch.Generator().manual_seed(0))
            loader = build_dali_loader(config, train, sampler, is_training=True, batch_size=batch_size, device=device,
                                       num_threads=threads, generator=torch.Generator().manual_seed(0))
            batch_iter = iter(loader)
            next(batch_iter)  # builds the graph and the pipeline
            _sync(device)
            start = time.perf_counter()
            for _ in range(batches):
                x, _ = next(batch_iter)
            _sync(device)
            rate = batch_size * batches / (time.perf_counter() - start)
            rows.append({"pipeline": pipeline.name, "models": sorted(pipeline.models), "img_s": round(rate, 1),
                         "finite": bool(torch.isfinite(x).all())})
    return {"device": str(device), "threads": threads, "batch_size": batch_size, "pipelines": rows}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="catalog smoke image sizes, batch 4 (a CPU run in minutes)")
    p.add_argument("--models", nargs="+", default=FAMILIES, choices=M.list_models())
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--steps", type=int, default=20, help="timed training steps and eval steps per config")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per mode first (compilation)")
    p.add_argument("--chunks", type=int, default=4, help="interleaved chunks the timed steps are split into")
    p.add_argument("--batch-size", type=int, default=None, help="default: 128 (GPU), 4 with --tiny")
    p.add_argument("--img-size", type=int, default=None, help="override every model's image size")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--backend", default="inductor", help="torch.compile backend; 'none': eager")
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: leave as is)")
    p.add_argument("--no-timm", action="store_true", help="skip timm's deit_tiny_patch16_224")
    p.add_argument("--ddp", choices=["auto", "off"], default="auto",
                   help="auto: 2-process step (NCCL with 2 GPUs, gloo on CPU)")
    p.add_argument("--loader-seconds", type=float, default=5.0,
                   help="seconds per training pipeline for the data-bound check (0: skip it)")
    p.add_argument("--dali", action="store_true", help="also time data.loader: dali's training pipelines")
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    p.add_argument("--write-throughput", type=Path, nargs="?", const=Path("throughput.json"), default=None,
                   metavar="PATH", help="record each model's training img/s for this device in PATH "
                   "(default throughput.json), which `mpvgbench run --dry-run` reads for its cost estimate")
    args = p.parse_args(argv)
    if args.batch_size is None:
        args.batch_size = 4 if args.tiny else 128
    if "default" not in args.methods:
        args.methods = ["default", *args.methods]  # every ratio is to the model's default
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    # many model instances go through the same forward code: without this, dynamo stops
    # recompiling after its limit (8) and silently runs the rest eagerly
    torch._dynamo.config.recompile_limit = 1024
    torch._dynamo.config.accumulated_recompile_limit = 4096
    report = summarize(measure(args, device), args, device)
    report["ddp"] = ddp_check(device) if args.ddp == "auto" else {"ran": False, "status": "skipped: --ddp off"}
    print_report(report)
    if args.loader_seconds > 0:
        report["data_bound"] = data_bound_check(report, args.loader_seconds)
        print_data_bound(report["data_bound"])
    if args.dali:
        report["dali"] = dali_check(device)
        for row in report["dali"]["pipelines"]:
            print(f"DALI {row['pipeline']} on {report['dali']['device']}: {row['img_s']:.0f} img/s "
                  f"({report['dali']['threads']} threads, batch {report['dali']['batch_size']})")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.write_throughput is not None:
        from mpvgbench.cost import write_throughputs

        write_throughputs(args.write_throughput, report["device_name"],
                          [r for r in report["results"] if r["model"] != TIMM])
    failed = not all(r["losses_finite"] for r in report["results"])
    failed |= not all(t["ok"] for t in report["targets"])
    failed |= report["ddp"].get("ran", False) and not report["ddp"].get("ok", False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
