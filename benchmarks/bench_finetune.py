"""Does the Table 7 fine-tune recipe (lr 5e-2) keep a pretrained ViT intact? A CPU check.

Paper Table 7 fine-tunes T2T-ViT-7 on CIFAR-100 at lr 5e-2. That lr is T2T-ViT's official
transfer script's, which runs SGD with the backbone at 0.01 x lr (mpvgbench's default recipe
now). Before, mpvgbench ran AdamW at 5e-2 on every parameter. This script:

1. "pre-trains" DeiT-Ti and T2T-ViT-7 (32x32, synthetic data: noisy class prototypes, 10
   classes) a little with AdamW at a small lr, the stand-in for the ImageNet checkpoint;
2. fine-tunes copies of it (new 20-class head; the new classes are mixtures of the old
   prototypes and new ones, so the pretrained features help) for ``--steps`` steps at the
   Table 7 lr with three optimizer setups:
     - ``new``:      the default recipe (mpvgbench.optim.build_optimizer: SGD, param groups),
     - ``adamw``:    v1's recipe (AdamW at 5e-2 on everything, optim.build_optimizer without param_groups),
     - ``sgd-flat``: v1's recipe with ``optimizer: sgd`` (one lr for every parameter);
3. prints the fine-tune loss at the start (mean of the first 20 steps), its peak, the end (mean
   of the last 20), the validation accuracy before/after, how far the pretrained backbone moved
   (||w - w0|| / ||w0|| over the non-head weights: near 0 keeps the pretraining, ~1 or more
   replaces it), and whether the run diverged (non-finite loss, or end loss above start).

    python benchmarks/bench_finetune.py                  # ~12 min on one busy CPU thread
    python benchmarks/bench_finetune.py --steps 300 --threads 1
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import mpvgbench.models as M
from mpvgbench.config import Recipe
from mpvgbench.optim import build_optimizer
from mpvgbench.recipes import default_recipe
from mpvgbench.train.classification_parts import build_scheduler

IMG, PRE_CLASSES, FT_CLASSES = 32, 10, 20


def smooth_patterns(n: int, gen: torch.Generator) -> Tensor:
    """``n`` smooth random 3x32x32 images (4x4 noise, bilinearly upsampled), unit variance."""
    low = torch.randn(n, 3, 4, 4, generator=gen)
    return F.interpolate(low, size=(IMG, IMG), mode="bilinear", align_corners=False) * 1.5


def make_task(prototypes: Tensor, per_class: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    labels = torch.arange(len(prototypes)).repeat_interleave(per_class)
    images = prototypes[labels] + 0.8 * torch.randn(len(labels), 3, IMG, IMG, generator=gen)
    return images, labels


def batches(x: Tensor, y: Tensor, batch: int, gen: torch.Generator) -> Callable[[], tuple[Tensor, Tensor]]:
    def draw() -> tuple[Tensor, Tensor]:
        idx = torch.randint(len(y), (batch,), generator=gen)
        return x[idx], y[idx]

    return draw


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    hits = sum(int((model(x[i:i + 256]).argmax(1) == y[i:i + 256]).sum()) for i in range(0, len(y), 256))
    model.train()
    return 100.0 * hits / len(y)


def pretrain(name: str, x: Tensor, y: Tensor, steps: int, batch: int) -> dict[str, Tensor]:
    model = M.build_model(name, "default", num_classes=PRE_CLASSES, img_size=IMG)
    recipe = Recipe(lr=1e-3, lr_base_batch=None, weight_decay=0.05)
    optimizer = build_optimizer(model, recipe)
    draw = batches(x, y, batch, torch.Generator().manual_seed(1))
    for _ in range(steps):
        xb, yb = draw()
        loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    print(f"  {name}: pre-trained {steps} steps, train acc {accuracy(model, x, y):.1f}% ({PRE_CLASSES} classes)")
    return {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}


def v1_recipe(new: Recipe) -> Recipe:
    """The v1 default of the T2T-ViT CIFAR-100 fine-tune: AdamW, one lr, min_lr 0, no drop path."""
    return new.model_copy(update={
        "optimizer": "adamw", "param_groups": None, "decay_all_params": False, "nesterov": None,
        "min_lr": 0.0, "drop_path": 0.0,
    })


def finetune(name: str, backbone: dict[str, Tensor], setup: str, data: tuple[Tensor, ...],
             steps: int, batch: int) -> dict[str, float]:
    recipe = default_recipe("t2t", "cifar100")  # Table 7's fine-tune: lr 5e-2, batch 128, wd 5e-4
    build: Callable[[nn.Module, Recipe], torch.optim.Optimizer] = build_optimizer
    if setup != "new":
        recipe = v1_recipe(recipe)
        build = build_optimizer  # v1's optimizer: the same without param_groups (optim.py)
        if setup == "sgd-flat":
            recipe = recipe.model_copy(update={"optimizer": "sgd"})
    torch.manual_seed(0)  # same new head and drop-path draws for every setup
    model = M.build_model(name, "default", num_classes=FT_CLASSES, img_size=IMG,
                          drop_path_rate=recipe.drop_path)
    missing = model.load_state_dict(backbone, strict=False).missing_keys
    assert all(k.startswith("head.") for k in missing), missing
    optimizer = build(model, recipe)
    scheduler = build_scheduler(optimizer, recipe.model_copy(update={"epochs": 1}), steps)
    x, y, val_x, val_y = data
    draw = batches(x, y, batch, torch.Generator().manual_seed(2))
    start_acc = accuracy(model, val_x, val_y)
    pretrained = {k: v.clone() for k, v in backbone.items() if v.is_floating_point()}
    losses: list[float] = []
    for step in range(steps):
        xb, yb = draw()
        loss = F.cross_entropy(model(xb), yb)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step_update(step + 1)
    window = max(1, min(20, len(losses) // 5))
    start, end = sum(losses[:window]) / window, sum(losses[-window:]) / window
    now = model.state_dict()
    moved = sum(float((now[k] - w0).pow(2).sum()) for k, w0 in pretrained.items())
    size = sum(float(w0.pow(2).sum()) for w0 in pretrained.values())
    return {"start": start, "end": end, "peak": max(losses), "steps": len(losses),
            "acc_before": start_acc, "acc_after": accuracy(model, val_x, val_y),
            "drift": math.sqrt(moved / size)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="fine-tune steps per setup")
    parser.add_argument("--pretrain-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=["deit_tiny", "t2t_vit_7"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(0)
    old = smooth_patterns(PRE_CLASSES, gen)
    new = 0.8 * old[torch.arange(FT_CLASSES) % PRE_CLASSES] + 0.8 * smooth_patterns(FT_CLASSES, gen)
    pre_x, pre_y = make_task(old, 200, gen)
    ft_x, ft_y = make_task(new, 100, gen)
    val_x, val_y = make_task(new, 25, gen)
    print(f"synthetic {IMG}x{IMG}: pre-train {len(pre_y)} images / {PRE_CLASSES} classes, "
          f"fine-tune {len(ft_y)} / {FT_CLASSES} (val {len(val_y)}), batch {args.batch_size}, "
          f"{args.steps} fine-tune steps at lr 5e-2 (paper Table 7)")
    header = f"{'model':<10} {'setup':<9} {'loss start':>10} {'peak':>7} {'end':>6} " \
             f"{'val acc before->after':>21} {'drift':>6} {'verdict':>8} {'time':>5}"
    results = []
    for name in args.models:
        backbone = pretrain(name, pre_x, pre_y, args.pretrain_steps, args.batch_size)
        for setup in ("new", "adamw", "sgd-flat"):
            t0 = time.perf_counter()
            r = finetune(name, backbone, setup, (ft_x, ft_y, val_x, val_y), args.steps, args.batch_size)
            diverged = r["steps"] < args.steps or not math.isfinite(r["end"]) or r["end"] > r["start"]
            verdict = "DIVERGED" if diverged else "ok"
            results.append(f"{name:<10} {setup:<9} {r['start']:>10.3f} {r['peak']:>7.3f} {r['end']:>6.3f} "
                           f"{r['acc_before']:>10.1f}% -> {r['acc_after']:>5.1f}% {r['drift']:>6.3f} "
                           f"{verdict:>8} {time.perf_counter() - t0:>4.0f}s")
            print("  " + results[-1])
    print("\n" + header)
    print("\n".join(results))
    print(f"(chance: loss {math.log(FT_CLASSES):.3f}, accuracy {100 / FT_CLASSES:.1f}%)")


if __name__ == "__main__":
    main()
