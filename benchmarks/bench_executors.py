"""Epoch time of the same small spec on the local and the Slurm executor (printed, never asserted).

    python benchmarks/bench_executors.py [--epochs 3] [--cpus 1]

Trains vit_micro/default on digits for ``--epochs`` epochs, once through `mpvgbench run
--executor local` (one worker) and once through `--executor slurm --wait` with
``slurm.cpus_per_task = --cpus``, each in a fresh directory, and prints the median
``epoch_time_s`` of each run (metrics.jsonl) and their ratio (target: Slurm within 1.2x of
local). Needs a Slurm cluster (`bash scripts/slurm.sh start`). The local run gets the same
thread count (OMP_NUM_THREADS = --cpus), so the two differ only by the executor.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-m", "mpvgbench"]


def run_spec(tmp: Path, executor: str, epochs: int, cpus: int) -> tuple[float, list[float]]:
    spec = {
        "name": f"bench_{executor}", "models": ["vit_micro"], "methods": ["default"], "datasets": ["digits"],
        "recipe": {"epochs": epochs}, "executor": {"name": executor, "device": "cpu"},
        "slurm": {"time": 30, "cpus_per_task": cpus, "folder": str(tmp / "slurm-logs")},
    }
    path = tmp / f"{executor}.yaml"
    path.write_text(json.dumps(spec))
    args = [*CLI, "run", str(path), "--db", str(tmp / f"{executor}.db"), "--runs-dir", str(tmp / executor)]
    if executor == "slurm":
        args.append("--wait")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if executor == "local":
        env.update(OMP_NUM_THREADS=str(cpus), MKL_NUM_THREADS=str(cpus))
    # else: nothing inherited (sbatch exports the caller's environment); the job's own setup
    # derives the threads from its allocation
    start = time.perf_counter()
    done = subprocess.run(args, cwd=tmp, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    (metrics,) = (tmp / executor).glob("*/metrics.jsonl")
    times = [json.loads(line)["epoch_time_s"] for line in metrics.read_text().splitlines() if line.strip()]
    return wall, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=1, help="cpus_per_task on Slurm, threads locally")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mpvg-bench-exec-") as name:
        tmp = Path(name)
        results = {}
        for executor in ("local", "slurm"):
            wall, times = run_spec(tmp, executor, opts.epochs, opts.cpus)
            results[executor] = statistics.median(times)
            print(f"{executor:>5}: median epoch {results[executor]:.2f} s "
                  f"(epochs {', '.join(f'{t:.2f}' for t in times)}; command {wall:.1f} s)")
    ratio = results["slurm"] / results["local"]
    verdict = "ok" if ratio <= 1.2 else "over the 1.2x target"
    print(f"slurm/local epoch time: {ratio:.2f}x ({verdict}; {opts.cpus} CPU(s) per job)")


if __name__ == "__main__":
    main()
