"""Store under concurrent writers, and the report over 10,000 stored runs.

    .venv/bin/python benchmarks/bench_store.py [--procs 16] [--runs 1000] [--epochs 5]
                                               [--report-runs 10000] [--url URL]

Phase 1: ``--procs`` processes share one database (a SQLite file unless ``--url``). Each
registers every job (overlapping inserts), then walks all keys in its own random order, claims
what it can, heartbeats, and ingests the run directory of each claim (metrics + result). It
prints the count of "database is locked" errors (must be 0), lost rows (must be 0) and keys
claimed twice (must be 0). Phase 2: 10,000 finished runs, then the time of ``build_table`` +
``render`` for Table 1 and the pivot, in-process and as a fresh interpreter (imports included).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mpvgbench.config import Recipe, TrainConfig  # noqa: E402
from mpvgbench.methods import PRESETS, canonical_method_dict  # noqa: E402
from mpvgbench.paper import MODEL_NAMES  # noqa: E402


class Job:
    def __init__(self, config: TrainConfig) -> None:
        self.config, self.key = config, config.key()


def make_jobs(n: int, first_seed: int = 0) -> list[Job]:
    models, methods = list(MODEL_NAMES), list(PRESETS)
    return [Job(TrainConfig(
        model=models[i % len(models)], method=canonical_method_dict(methods[(i // 7) % len(methods)]),
        dataset="imagenet", img_size=224, num_classes=1000, seed=first_seed + i // 56,
        recipe=Recipe(epochs=300),
    )) for i in range(n)]


def write_run_dirs(root: Path, jobs: list[Job], epochs: int) -> None:
    """What workers would leave behind (plain writes: this is not what is measured)."""
    for i, job in enumerate(jobs):
        d = root / job.key
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps(job.config.model_dump(mode="json")))
        (d / "metrics.jsonl").write_text("".join(
            json.dumps({"epoch": e, "train_loss": 3.0, "val_loss": 2.0, "top1": 60.0 + e,
                        "top5": 85.0, "lr": 1e-3, "epoch_time_s": 9.0, "images_per_s": 1e3}) + "\n"
            for e in range(epochs)))
        (d / "result.json").write_text(json.dumps({
            "key": job.key, "final_top1": 70.0 + i % 5, "best_top1": 75.0, "final_top5": 90.0,
            "best_top5": 91.0, "epochs": epochs, "wall_time_s": 1.0,
            "env": {"host": "bench", "torch": "2", "timm": "1", "device": "cpu"}}))


def writer(url: str, proc: int, n_runs: int, runs_root: str, queue: Any) -> None:
    from mpvgbench.store import Store

    locked = other = 0
    claimed: list[str] = []
    owner = f"bench:{proc}"
    jobs = make_jobs(n_runs)
    start = time.perf_counter()

    def attempt(fn: Any, *args: Any, **kw: Any) -> Any:
        nonlocal locked, other
        try:
            return fn(*args, **kw)
        except Exception as exc:  # counted, not raised: the benchmark reports them
            if "locked" in str(exc):
                locked += 1
            else:
                other += 1
                print(f"[proc {proc}] {type(exc).__name__}: {exc}", file=sys.stderr)
            return None

    store = Store(url)
    attempt(store.register_jobs, jobs, "bench")
    keys = [j.key for j in jobs]
    random.Random(proc).shuffle(keys)
    for i, key in enumerate(keys):
        if attempt(store.claim, key, owner, stale_after_s=3600):
            claimed.append(key)
            attempt(store.ingest_run_dir, Path(runs_root) / key)
        if i % 50 == 0:
            attempt(store.heartbeat, owner)
    store.close()
    queue.put((proc, claimed, locked, other, time.perf_counter() - start))


def phase_writers(url: str, procs: int, n_runs: int, epochs: int, tmp: Path) -> bool:
    from mpvgbench.store import Store

    runs_root = tmp / "runs"
    write_run_dirs(runs_root, make_jobs(n_runs), epochs)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    start = time.perf_counter()
    ps = [ctx.Process(target=writer, args=(url, i, n_runs, str(runs_root), queue)) for i in range(procs)]
    for p in ps:
        p.start()
    out = [queue.get(timeout=1800) for _ in ps]
    for p in ps:
        p.join()
    wall = time.perf_counter() - start
    claimed = [k for _, ks, *_ in out for k in ks]
    locked, other = sum(o[2] for o in out), sum(o[3] for o in out)
    with Store(url) as store:
        counts = store.status_counts("bench")
        n_results = len(store.results_frame("bench"))
        n_metrics = sum(len(store.metrics(k)) for k in set(claimed))
        attempts = {r.attempts for r in store.runs("bench")}
    expected = n_runs * (2 + epochs)  # runs + results + metrics rows
    lost = expected - (counts["finished"] + n_results + n_metrics)
    twice = len(claimed) - len(set(claimed))
    print(f"phase 1: {procs} processes x {n_runs} runs x {epochs} epochs on {url.split('://')[0]}: "
          f"{wall:.1f} s wall ({n_runs / wall:.0f} claims+ingests/s)")
    print(f"  database is locked errors: {locked}")
    print(f"  other errors:              {other}")
    print(f"  lost rows:                 {lost} (of {expected}); status {counts}")
    print(f"  keys claimed twice:        {twice}; attempts per run {sorted(attempts)}")
    return locked == 0 and other == 0 and lost == 0 and twice == 0 and attempts == {1}


def phase_report(url: str, n: int) -> None:
    import sqlalchemy as sa

    from mpvgbench import store_schema as S
    from mpvgbench.methods import method_label
    from mpvgbench.report import build_table, render
    from mpvgbench.store import Store

    jobs = make_jobs(n, first_seed=1_000_000)  # keys distinct from phase 1's
    with Store(url) as store, store._engine.begin() as conn:
        t = time.perf_counter()
        runs, results = [], []
        for i, job in enumerate(jobs):
            cfg = job.config.model_dump(mode="json")
            runs.append({"key": job.key, "model": cfg["model"], "method_label": method_label(cfg["method"]),
                         "method": cfg["method"], "dataset": "imagenet", "seed": cfg["seed"],
                         "config": cfg, "variant": S.config_variant(cfg), "status": "finished",
                         "attempts": 1, "created_at": 0.0, "wall_time_s": 1.0})
            results.append({"key": job.key, "final_top1": 70.0 + i % 5, "best_top1": 75.0,
                            "final_top5": 90.0, "best_top5": 91.0, "epochs": 300,
                            "extra": {"env": {"host": "bench"}}})
        conn.execute(sa.insert(S.runs), runs)
        conn.execute(sa.insert(S.results), results)
        conn.execute(sa.insert(S.run_specs), [{"key": j.key, "spec_name": "big"} for j in jobs])
    print(f"phase 2: {n} finished runs stored in {time.perf_counter() - t:.1f} s")
    for table in (1, None):
        t = time.perf_counter()
        with Store(url) as store:
            text = render(build_table(store, table, spec="big"), "table")
        print(f"  report --table {table}: {time.perf_counter() - t:.2f} s in-process ({len(text)} chars)")
    code = ("import time; t = time.perf_counter(); import sys; sys.path.insert(0, sys.argv[2]); "
            "from mpvgbench.store import Store; from mpvgbench.report import build_table, render; "
            "render(build_table(Store(sys.argv[1]), 1, spec='big'), 'table'); "
            "print(time.perf_counter() - t)")
    t = time.perf_counter()
    inner = subprocess.run([sys.executable, "-c", code, url, str(ROOT)], capture_output=True, text=True,
                           check=True).stdout.strip()
    print(f"  report --table 1, fresh interpreter: {time.perf_counter() - t:.2f} s end to end "
          f"({float(inner):.2f} s after interpreter start, imports included)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", type=int, default=16)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--report-runs", type=int, default=10_000)
    ap.add_argument("--url", help="database URL (default: a SQLite file in a temp dir)")
    args = ap.parse_args()
    if args.url:
        from mpvgbench.store import Store

        with Store(args.url) as store:
            if sum(store.status_counts().values()):
                sys.exit(f"--url {store.where} is not empty; the benchmark needs an empty database")
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        url = args.url or str(Path(tmp) / "bench.db")
        ok = phase_writers(url, args.procs, args.runs, args.epochs, Path(tmp))
        phase_report(url if args.url else str(Path(tmp) / "report.db"), args.report_runs)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
