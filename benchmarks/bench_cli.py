"""End-to-end CLI timings against the targets of the benchmark issue (printed, never asserted).

    python benchmarks/bench_cli.py [--skip-quickstart] [--jobs 10000]

1. quickstart end to end: `mpvgbench run experiments/quickstart.yaml` + `mpvgbench report`
   in a fresh directory (target: under 3 minutes on a 2-core machine);
2. `mpvgbench run --dry-run` of a 10,000-job spec (target: under 2 s);
3. `mpvgbench report` over 10,000 stored runs (target: under 2 s).
Each is a real subprocess, interpreter start and imports included.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "mpvgbench"]


def timed(args: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "120"})
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return elapsed, done.stdout


def bench_quickstart(tmp: Path) -> None:
    run_s, _ = timed([*CLI, "run", str(ROOT / "experiments" / "quickstart.yaml")], tmp)
    report_s, text = timed([*CLI, "report", "--format", "markdown"], tmp)
    total = run_s + report_s
    print(f"quickstart: run {run_s:.1f} s + report {report_s:.1f} s = {total:.1f} s "
          f"(target 180 s: {total / 180:.2f}x of budget)")
    print(text)


def bench_dry_run(tmp: Path, n_jobs: int) -> None:
    methods = ["default", "gap", "lape", "pvg", "mpvg"]
    seeds = list(range(n_jobs // len(methods)))
    spec = tmp / "big.yaml"
    spec.write_text(
        "name: big\nmodels: [vit_micro]\n"
        f"methods: [{', '.join(methods)}]\ndatasets: [digits]\nseeds: [{', '.join(map(str, seeds))}]\n"
    )
    elapsed, out = timed([*CLI, "run", str(spec), "--dry-run"], tmp)
    print(f"run --dry-run, {out.strip().splitlines()[-1]}: {elapsed:.2f} s (target 2 s: {elapsed / 2:.2f}x)")


def bench_report(tmp: Path, n_runs: int) -> None:
    location = ROOT / "benchmarks" / "bench_store.py"
    module_spec = importlib.util.spec_from_file_location("bench_store", location)
    assert module_spec and module_spec.loader
    bench_store = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(bench_store)
    db = tmp / "big.db"
    bench_store.phase_report(str(db), n_runs)  # stores n finished runs (and prints its own timings)
    for args in (["report", "--table", "1"], ["report"]):
        elapsed, _ = timed([*CLI, *args, "--db", str(db), "--format", "csv"], tmp)
        print(f"mpvgbench {' '.join(args)} over {n_runs} stored runs: {elapsed:.2f} s "
              f"(target 2 s: {elapsed / 2:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-quickstart", action="store_true")
    parser.add_argument("--jobs", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mpvgbench-bench-") as name:
        tmp = Path(name)
        print(f"machine: {os.cpu_count()} cpus, python {sys.version.split()[0]}")
        bench_dry_run(tmp, args.jobs)
        bench_report(tmp, args.jobs)
        if not args.skip_quickstart:
            bench_quickstart(tmp)


if __name__ == "__main__":
    main()
