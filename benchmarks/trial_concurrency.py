"""A repeatable adversarial trial: C coordinators run one spec at once while P pollers call
`status` and `report` in a loop; then every job must be finished, trained once (one attempt,
one `[running]` line in all coordinators' output together) and no output may mention a lock.

    python benchmarks/trial_concurrency.py [--coordinators 3] [--pollers 2] [--jobs 6] [--rounds 1]

Prints one line per round and a total: coordinators x pollers, jobs, duplicates, lock errors,
tracebacks, failed runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEC = """name: trial
models: [vit_micro]
methods: [default, pvg, mpvg]
datasets: [digits]
seeds: [{seeds}]
recipe: {{epochs: 2, max_steps_per_epoch: 3, eval_max_batches: 1}}
data: {{num_workers: 0}}
executor: {{name: local, workers: 1, device: cpu}}
"""


def cli(*args: str, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "mpvgbench", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def one_round(coordinators: int, pollers: int, jobs: int) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "spec.yaml").write_text(SPEC.format(seeds=", ".join(map(str, range(max(1, jobs // 3))))))
        runs = [cli("run", "spec.yaml", cwd=work) for _ in range(coordinators)]
        outputs: list[str] = []
        polls = 0
        while any(p.poll() is None for p in runs):
            if (work / "results.db").exists():
                procs = [cli(("status", "report")[i % 2], cwd=work) for i in range(pollers)]
                outputs += [p.communicate()[0] for p in procs]
                polls += len(procs)
            time.sleep(0.5)
        outputs += [p.communicate()[0] for p in runs]
        import sqlite3

        rows = sqlite3.connect(work / "results.db").execute("SELECT status, attempts FROM runs").fetchall()
        text = "\n".join(outputs)
        return {
            "jobs": len(rows), "polls": polls,
            "not_finished": sum(status != "finished" for status, _ in rows),
            "duplicates": sum(attempts > 1 for _, attempts in rows)
            + max(0, text.count("[running]") - len(rows)),
            "lock_errors": text.lower().count("database is locked"),
            "tracebacks": text.count("Traceback"),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coordinators", type=int, default=3)
    parser.add_argument("--pollers", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    total: dict[str, int] = {}
    for r in range(args.rounds):
        result = one_round(args.coordinators, args.pollers, args.jobs)
        print(f"round {r + 1}: {args.coordinators} coordinators x {args.pollers} pollers: {result}")
        for k, v in result.items():
            total[k] = total.get(k, 0) + v
    print(f"total over {args.rounds} round(s): {total}")
    sys.exit(1 if total["not_finished"] or total["duplicates"] or total["lock_errors"] or total["tracebacks"] else 0)


if __name__ == "__main__":
    main()
