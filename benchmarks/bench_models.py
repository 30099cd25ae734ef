"""Throughput of the PE methods against the default and against timm's own DeiT-Ti.

Eval (no grad) and train step (forward, cross-entropy, backward, AdamW step)
in images/s for default / lape / pvg / mpvg on DeiT-Ti and ViT-Lite-7/4, plus timm's
``deit_tiny_patch16_224`` built in the same process. Every configuration is warmed up, then the
repetitions are interleaved (rep 1 of every model, rep 2 of every model, ...) so drift in machine
load hits all of them alike (the order rotates every repetition). Throughput is the median over
repetitions; ratios are medians of the per-repetition ratios (paired, so slow drift cancels).
All models of one backbone (timm's DeiT-Ti included) share every weight whose name and shape match.

Targets: eval overhead of any method over default <= 2%; train-step overhead of mpvg over default
<= 5% (CPU); our default DeiT-Ti >= 0.98x timm's.

    python benchmarks/bench_models.py --device cpu --batch-size 16 --iters 3 --reps 5 --threads 2
    python benchmarks/bench_models.py --device cpu --threads 1 --clock process   # shared machine
    python benchmarks/bench_models.py --device cuda --batch-size 256 --amp
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

import mpvgbench.models as M

TIMM_BASELINE = "timm:deit_tiny_patch16_224"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _build(entry: str, num_classes: int) -> nn.Module:
    if entry == TIMM_BASELINE:
        return timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=num_classes)
    name, method = entry.split(":")
    return M.build_model(name, method, num_classes=num_classes)


@torch.no_grad()
def _share_weights(dst: nn.Module, src: nn.Module) -> None:
    """Copy every tensor whose name and shape match: CPU speed depends a little on the weight
    values (seen: 1-2% between two random inits of the same timm model), which must not pass
    for method overhead."""
    dst_sd = dst.state_dict()
    for name, t in src.state_dict().items():
        if name in dst_sd and dst_sd[name].shape == t.shape:
            dst_sd[name].copy_(t)


def _runner(model: nn.Module, mode: str, x: torch.Tensor, y: torch.Tensor, amp: bool) -> Callable[[], None]:
    autocast = (
        torch.autocast(device_type=x.device.type, dtype=torch.bfloat16) if amp else nullcontext()
    )
    if mode == "eval":
        model.eval()

        def step() -> None:
            with torch.no_grad(), autocast:
                model(x)

        return step
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)

    def train_step() -> None:
        with autocast:
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return train_step


def _time(step: Callable[[], None], iters: int, device: torch.device, clock: str) -> float:
    now = time.process_time if clock == "process" else time.perf_counter
    _sync(device)
    start = now()
    for _ in range(iters):
        step()
    _sync(device)
    return now() - start


Samples = dict[str, dict[str, list[float]]]  # mode -> entry -> images/s, one per repetition


def _backbone(entry: str) -> str:
    return "deit_tiny" if entry == TIMM_BASELINE else entry.split(":")[0]


def run(args: argparse.Namespace) -> Samples:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    entries: list[str] = []
    for name in args.models:
        entries += [f"{name}:{m}" for m in args.methods]
        if name == "deit_tiny" and not args.no_timm:
            entries.append(TIMM_BASELINE)
    results: Samples = {}
    for mode in args.modes:
        steps: dict[str, Callable[[], None]] = {}
        reference: dict[str, nn.Module] = {}  # the first model built per backbone
        for entry in entries:
            name = _backbone(entry)
            size, chans = M.default_img_size(name), 1 if name == "vit_micro" else 3
            model = _build(entry, args.num_classes)
            if name in reference:
                _share_weights(model, reference[name])
            else:
                reference[name] = model
            model = model.to(device)
            x = torch.randn(args.batch_size, chans, size, size, device=device)
            y = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
            steps[entry] = _runner(model, mode, x, y, args.amp)
            for _ in range(args.warmup):
                steps[entry]()
        samples: dict[str, list[float]] = {e: [] for e in entries}
        for rep in range(args.reps):
            # interleaved, and rotated so that no entry always runs first (or after the same one)
            order = entries[rep % len(entries):] + entries[: rep % len(entries)]
            for entry in order if rep % 2 == 0 else order[::-1]:
                seconds = _time(steps[entry], args.iters, device, args.clock)
                samples[entry].append(args.batch_size * args.iters / seconds)
        results[mode] = samples
        del steps, reference
    return results


def _paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over repetitions of a/b measured in the same repetition (cancels slow drift)."""
    return statistics.median(x / y for x, y in zip(a, b))


def report(results: Samples, args: argparse.Namespace) -> list[str]:
    lines = [
        f"device={args.device} threads={torch.get_num_threads()} batch={args.batch_size} "
        f"iters={args.iters} reps={args.reps} amp={args.amp} clock={args.clock} "
        f"torch={torch.__version__} timm={timm.__version__}"
    ]
    failures: list[str] = []
    for mode, res in results.items():
        lines.append(f"\n[{mode}]  images/s (median)   throughput ratio to the model's default (paired median)")
        for entry, ips in res.items():
            base = res.get(f"{_backbone(entry)}:default")
            ratio = _paired_ratio(ips, base) if base else None
            lines.append(f"  {entry:28s} {statistics.median(ips):10.1f}   " + (f"{ratio:6.3f}x" if ratio else "   -"))
            if ratio and entry != TIMM_BASELINE and not entry.endswith(":default"):
                overhead = 1.0 / ratio - 1.0  # extra time per image
                limit = 0.02 if mode == "eval" else (0.05 if entry.endswith(":mpvg") else None)
                if limit is not None and overhead > limit:
                    failures.append(f"{mode} {entry}: overhead {overhead:+.1%} > {limit:.0%}")
        if TIMM_BASELINE in res and "deit_tiny:default" in res:
            r = _paired_ratio(res["deit_tiny:default"], res[TIMM_BASELINE])
            lines.append(f"  ours default / timm deit_tiny: {r:.3f}x (target >= 0.98x)")
            if r < 0.98:
                failures.append(f"{mode} deit_tiny default is {r:.3f}x timm's")
    lines.append("\ntargets met" if not failures else "\nMISSED: " + "; ".join(failures))
    return lines


def main(argv: Any = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--iters", type=int, default=5, help="steps per timed repetition")
    p.add_argument("--reps", type=int, default=5, help="interleaved repetitions (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--models", nargs="+", default=["deit_tiny", "vit_lite_7_4"])
    p.add_argument("--methods", nargs="+", default=["default", "lape", "pvg", "mpvg"])
    p.add_argument("--modes", nargs="+", default=["eval", "train"], choices=["eval", "train"])
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument(
        "--clock", choices=["wall", "process"], default="wall",
        help="process: this process's CPU time (CPU only; robust on a shared machine, use --threads 1)",
    )
    p.add_argument("--no-timm", action="store_true", help="skip timm's deit_tiny baseline")
    args = p.parse_args(argv)
    if args.clock == "process" and args.device != "cpu":
        p.error("--clock process measures CPU time; use it with --device cpu")
    print("\n".join(report(run(args), args)), flush=True)


if __name__ == "__main__":
    main()
