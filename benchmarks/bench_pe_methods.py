"""CPU overhead of each PE method vs ``default``: train and eval images/s, DeiT-Ti, batch 16.

Interleaved: every repetition measures every method once, in order, so load on a shared machine
hits all methods alike; the ratio to ``default`` is taken per repetition and the median reported.
Time is the process's CPU time (``--clock cpu``, default), which other processes on a loaded
machine do not inflate as much as wall-clock time (``--clock wall``).

    python benchmarks/bench_pe_methods.py [--reps 3] [--batch 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import mpvgbench.models as M

METHODS = ("default", "sincos2d", "rope_axial", "rope_mixed", "peg", "peg_gap", "mpvg")


def images_per_s(model: torch.nn.Module, x: torch.Tensor, train: bool, steps: int, clock=time.process_time) -> float:
    model.train(train)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    start = clock()
    for _ in range(steps):
        if train:
            optimizer.zero_grad(set_to_none=True)
            model(x).logsumexp(-1).mean().backward()
            optimizer.step()
        else:
            with torch.no_grad():
                model(x)
    return steps * x.shape[0] / (clock() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = {m: M.build_model("deit_tiny", m) for m in METHODS}
    x = torch.randn(args.batch, 3, 224, 224)
    for model in models.values():  # warm-up
        images_per_s(model, x[:2], True, 1)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    rates: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.reps):
        for mode in ("train", "eval"):
            for name, model in models.items():
                rates.setdefault((name, mode), []).append(images_per_s(model, x, mode == "train", args.steps, clock))
    print(f"DeiT-Ti, batch {args.batch}, {args.threads} thread(s), {args.reps} interleaved reps, "
          f"{args.clock} time, median")
    print(f"{'method':<12}{'train img/s':>12}{'x default':>10}{'eval img/s':>12}{'x default':>10}")
    for name in METHODS:
        cells = []
        for mode in ("train", "eval"):
            ratio = statistics.median(a / b for a, b in zip(rates[(name, mode)], rates[("default", mode)]))
            cells += [f"{statistics.median(rates[(name, mode)]):>12.1f}", f"{ratio:>10.3f}"]
        print(f"{name:<12}{''.join(cells)}")


if __name__ == "__main__":
    main()
