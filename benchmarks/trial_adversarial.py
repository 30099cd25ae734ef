"""Adversarial trial (issue 23): bad input, damaged run files, security, concurrency and kills.

    PYTHONPATH=. python benchmarks/trial_adversarial.py [--budget-s 1500] [--only CATEGORY] [--json OUT]

Every case runs in a fresh directory with its own database and runs dir, on `vit_micro` and
sklearn's digits (CPU, a few steps), and is bounded in time. A case *holds* when mpvgbench
answers as promised: bad input is one line and exit 2 (never a traceback, never a hang), a
damaged file is named (or set aside) without a traceback, nothing is written outside the runs
root, and nothing is trained twice. The table printed at the end (category, cases, held) is the
one in docs/reliability.md. The bad-input cases are in trial_inputs.py, the helpers every case
uses in trial_support.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from trial_inputs import option_cases, spec_cases
from trial_support import (BASELINE, FAST, Broke, Case, job_keys, spawn, workers_on, attempts, baseline,
                           cli, expect_no_bug, expect_user_error, invoke, write)


# ------------------------------------------------------------------------ damaged run files


DAMAGE: dict[str, Callable[[Path], None]] = {
    "result.json empty": lambda d: (d / "result.json").write_text(""),
    "result.json garbage": lambda d: (d / "result.json").write_text("{not json"),
    "result.json a list": lambda d: (d / "result.json").write_text("[1, 2]"),
    "result.json NaN top-1": lambda d: (d / "result.json").write_text('{"final_top1": NaN}'),
    "result.json 1 GB number": lambda d: (d / "result.json").write_text('{"final_top1": 1e999}'),
    "result.json a directory": lambda d: ((d / "result.json").unlink(), (d / "result.json").mkdir()),
    "metrics.jsonl garbage": lambda d: (d / "metrics.jsonl").write_text("{\n[\n"),
    "metrics.jsonl binary": lambda d: (d / "metrics.jsonl").write_bytes(b"\x00\xff" * 100),
    "progress.json a list": lambda d: (d / "progress.json").write_text("[]"),
    "progress.json garbage": lambda d: (d / "progress.json").write_text("{"),
    "worker.json a list": lambda d: (d / "worker.json").write_text("[1]"),
    "worker.json pid 1": lambda d: (d / "worker.json").write_text(json.dumps({"host": os.uname().nodename, "pid": 1})),
    "worker.json garbage": lambda d: (d / "worker.json").write_text("\x00"),
    "config.json garbage": lambda d: (d / "config.json").write_text("{"),
    "config.json other key": lambda d: (d / "config.json").write_text('{"model": "x"}'),
    "job.json a list": lambda d: (d / "job.json").write_text("[]"),
    "checkpoint.pt empty": lambda d: (d / "checkpoint.pt").write_bytes(b""),
    "checkpoint.pt truncated": lambda d: (d / "checkpoint.pt").write_bytes((d / "checkpoint.pt").read_bytes()[:100]),
    "checkpoint.pt garbage": lambda d: (d / "checkpoint.pt").write_bytes(os.urandom(4096)),
    "stderr.log a directory": lambda d: ((d / "stderr.log").unlink(), (d / "stderr.log").mkdir()),
    "stdout.log a link to /etc/passwd": lambda d: ((d / "stdout.log").unlink(), (d / "stdout.log").symlink_to("/etc/passwd")),
    "stdout.log 20 MB": lambda d: (d / "stdout.log").write_text("z" * 20_000_000),
    "slurm.json garbage": lambda d: (d / "slurm.json").write_text("{"),
    "slurm.json a list": lambda d: (d / "slurm.json").write_text("[]"),
    "slurm.json unknown job": lambda d: (d / "slurm.json").write_text('{"job_id": "999999999"}'),
    "slurm_state.json garbage": lambda d: (d / "slurm_state.json").write_text("{"),
    "error.json garbage": lambda d: (d / "error.json").write_text("{"),
    ".lock a directory": lambda d: ((d / ".lock").unlink(missing_ok=True), (d / ".lock").mkdir()),
    "leftover .tmp files": lambda d: (d / ".checkpoint.pt.123.tmp").write_bytes(b"x"),
    "run dir a file": lambda d: (shutil.rmtree(d), d.write_text("x")),
    "run dir a link outside": lambda d: (shutil.rmtree(d), d.symlink_to(d.parent.parent / "outside")),
    "run dir deleted": lambda d: shutil.rmtree(d),
    "run dir unreadable": lambda d: d.chmod(0),
}


def damage_cases() -> Iterator[Case]:
    for label, damage in DAMAGE.items():
        for command in (["status", "--all"], ["logs", "KEY"], ["report"], ["run", "fast.yaml", "--dry-run"],
                        ["run", "fast.yaml", "--executor", "debug"]):
            def check(tmp: Path, damage: Callable[[Path], None] = damage, command: list[str] = command) -> None:
                run_dir, key = baseline(tmp)
                (tmp / "outside").mkdir()
                (tmp / "outside" / "keep").write_text("keep")
                before = run_dir.exists() and attempts(run_dir)
                damage(run_dir)
                os.chdir(tmp)
                try:
                    args = [key[:8] if a == "KEY" else a for a in command]
                    result = invoke(*args)
                finally:
                    with contextlib.suppress(OSError):
                        run_dir.chmod(0o755)
                expect_no_bug(result)
                if (tmp / "outside" / "keep").read_text() != "keep" or len(list((tmp / "outside").iterdir())) != 1:
                    raise Broke("wrote outside the runs root")
                if command[0] == "run" and "--dry-run" not in command and run_dir.is_dir() and \
                        not run_dir.is_symlink() and attempts(run_dir) > (before or 0):
                    raise Broke("a finished run was trained again")
            yield Case("damaged run files", f"{label}: {command[0]}{' --dry-run' if '--dry-run' in command else ''}",
                       check, timeout_s=120)


# ---------------------------------------------------------------------------------- security


def security_cases() -> Iterator[Case]:
    def force_through_link(tmp: Path) -> None:
        run_dir, key = baseline(tmp)
        (tmp / "outside").mkdir()
        (tmp / "outside" / "result.json").write_text("mine")
        shutil.rmtree(run_dir)
        run_dir.symlink_to(tmp / "outside")
        os.chdir(tmp)
        expect_user_error(invoke("run", "fast.yaml", "--force"), "symbolic link")
        if sorted(p.name for p in (tmp / "outside").iterdir()) != ["result.json"]:
            raise Broke("--force wrote through a link")
    yield Case("security", "--force through a linked run dir", force_through_link)

    def log_link(tmp: Path) -> None:
        run_dir, key = baseline(tmp)
        (run_dir / "stdout.log").unlink()
        (run_dir / "stdout.log").symlink_to("/etc/passwd")
        result = invoke("logs", key[:8])
        if "root:" in result.output:
            raise Broke("logs followed a link out of the run dir")
    yield Case("security", "logs never follows a link", log_link)
    for tag in ("!!python/object/apply:os.system ['touch pwned']", "!!python/name:os.system", "!!binary aGk=",
                "!!set {a}", "!!omap [a: 1]", "!<tag:yaml.org,2002:python/none> x"):
        def check(tmp: Path, tag: str = tag) -> None:
            os.chdir(tmp)
            expect_no_bug(invoke("run", write(tmp / "s.yaml", f"name: {tag}\n"), "--dry-run"), (2,))
            if (tmp / "pwned").exists():
                raise Broke("a YAML tag executed code")
        yield Case("security", f"YAML tag {tag[:30]}", check)
    for value in ("x'; DROP TABLE runs;--", "<script>alert(1)</script>", "../../../../etc/passwd", "$(touch pwned)",
                  "`touch pwned`", "%s%s%s%n", "\u202e", "a/b"):
        def check(tmp: Path, value: str = value) -> None:
            os.chdir(tmp)
            expect_no_bug(invoke("run", write(tmp / "s.yaml", json.dumps({**FAST, "name": value})), "--dry-run"), (2,))
            if (tmp / "pwned").exists():
                raise Broke("a spec value was executed")
        yield Case("security", f"spec name {value[:20]!r}", check)

    def pickle_checkpoint(tmp: Path) -> None:
        import torch

        run_dir, key = baseline(tmp)

        class Payload:
            def __reduce__(self) -> Any:
                return (os.system, (f"touch {tmp / 'pwned'}",))
        torch.save({"model": Payload()}, run_dir / "checkpoint.pt")
        (run_dir / "result.json").unlink()
        import sqlite3

        with sqlite3.connect(tmp / "results.db") as db:
            db.execute("UPDATE runs SET status='pending'")
        os.chdir(tmp)
        result = cli("run", "fast.yaml", "--executor", "debug", cwd=tmp, timeout=120)
        if (tmp / "pwned").exists():
            raise Broke("a pickled checkpoint executed code")
        expect_no_bug(result)
    yield Case("security", "pickle payload in checkpoint.pt", pickle_checkpoint, timeout_s=180)


# ------------------------------------------------------------------------- concurrency, kills


def concurrency_cases() -> Iterator[Case]:
    def two_databases(tmp: Path) -> None:
        spec = write(tmp / "s.yaml", json.dumps({**FAST, "seeds": [0, 1], "recipe": {"epochs": 4, "max_steps_per_epoch": 8}}))
        a = spawn(tmp, "run", spec, "--db", "a.db")
        b = spawn(tmp, "run", spec, "--db", "b.db")
        for proc in (a, b):
            proc.communicate(timeout=300)
        for key in job_keys(tmp, spec):
            if attempts(tmp / "runs" / key) != 1:
                raise Broke(f"{key} trained {attempts(tmp / 'runs' / key)} times by two databases")
    yield Case("concurrency", "two databases on one runs dir", two_databases, timeout_s=400)

    def two_coordinators(tmp: Path) -> None:
        spec = write(tmp / "s.yaml", json.dumps({**FAST, "seeds": [0, 1, 2]}))
        procs = [spawn(tmp, "run", spec) for _ in range(2)]
        poller = [spawn(tmp, "status") for _ in range(3)]
        for proc in procs + poller:
            out, _ = proc.communicate(timeout=300)
            if "Traceback" in out:
                raise Broke(out[-300:])
        if any(proc.returncode != 0 for proc in procs):
            raise Broke(f"exit codes {[p.returncode for p in procs]}")
        for key in job_keys(tmp, spec):
            if attempts(tmp / "runs" / key) != 1:
                raise Broke(f"{key} trained twice")
    yield Case("concurrency", "two coordinators, one database, pollers", two_coordinators, timeout_s=400)

    def cancel_then_retry(tmp: Path) -> None:
        spec = write(tmp / "s.yaml", json.dumps({**FAST, "recipe": {"epochs": 400, "max_steps_per_epoch": 8}}))
        first = spawn(tmp, "run", spec)
        (key,) = job_keys(tmp, spec)
        try:
            deadline = time.time() + 60
            while not (tmp / "runs" / key / "progress.json").exists() and time.time() < deadline:
                time.sleep(0.5)
            expect_no_bug(cli("cancel", spec, cwd=tmp), (0,))
            second = spawn(tmp, "run", spec, "--retry-failed")
            most = 0
            for _ in range(60):  # 12 s: the window in which two workers used to overlap
                most = max(most, workers_on(tmp / "runs" / key))
                time.sleep(0.2)
            if most > 1:
                raise Broke(f"{most} workers trained one run directory at once")
        finally:
            for proc in [first, *([second] if "second" in locals() else [])]:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                proc.communicate(timeout=60)
    yield Case("concurrency", "cancel then an immediate --retry-failed", cancel_then_retry, timeout_s=200)


def kill_cases() -> Iterator[Case]:
    for sig, label in ((signal.SIGKILL, "kill -9"), (signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "Ctrl-C")):
        for executor in ("local", "debug"):
            def check(tmp: Path, sig: signal.Signals = sig, executor: str = executor) -> None:
                spec = write(tmp / "s.yaml", json.dumps({**FAST, "recipe": {"epochs": 6, "max_steps_per_epoch": 30}}))
                proc = spawn(tmp, "run", spec, "--executor", executor)
                (key,) = job_keys(tmp, spec)
                deadline = time.time() + 90
                while not (tmp / "runs" / key / "metrics.jsonl").exists() and time.time() < deadline:
                    time.sleep(0.2)
                if proc.poll() is not None:
                    raise Broke("the run ended before it could be interrupted")
                os.kill(proc.pid, sig)
                proc.communicate(timeout=60)
                if not (tmp / "runs" / key / "result.json").exists() and "finished" in cli("status", cwd=tmp).stdout:
                    raise Broke("status says finished without result.json")
                status = cli("status", cwd=tmp)
                expect_no_bug(status, (0,))
                if sig != signal.SIGKILL and "failed" in status.stdout:
                    raise Broke(f"interrupted job stored as failed: {status.stdout}")
                rerun = cli("run", spec, "--executor", executor, cwd=tmp, timeout=300)
                expect_no_bug(rerun, (0,))
                rows = [json.loads(line) for line in (tmp / "runs" / key / "metrics.jsonl").read_text().splitlines()]
                if [r["epoch"] for r in rows] != list(range(len(rows))) and [r["epoch"] for r in rows] != list(range(1, len(rows) + 1)):
                    raise Broke(f"epochs not contiguous after resume: {[r['epoch'] for r in rows]}")
            yield Case("kills", f"{label} of `run --executor {executor}` mid-training, then rerun", check, timeout_s=400)

    def killed_after_result(tmp: Path) -> None:
        run_dir, key = baseline(tmp)
        import sqlite3

        with sqlite3.connect(tmp / "results.db") as db:  # the coordinator died before recording the result
            db.execute("UPDATE runs SET status='running', owner=?, heartbeat_at=0", (f"{os.uname().nodename}:999999:x@1",))
        before = attempts(run_dir)
        os.chdir(tmp)
        result = invoke("run", "fast.yaml")
        expect_no_bug(result, (0,))
        if attempts(run_dir) != before:
            raise Broke("a run with a valid result.json was trained again")
    yield Case("kills", "coordinator killed right after result.json", killed_after_result)


# -------------------------------------------------------------------------------- runner


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    def on_alarm(signum: int, frame: Any) -> None:
        raise _Timeout(f"no answer within {seconds:.0f} s (a hang)")
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def all_cases() -> list[Case]:
    return [*spec_cases(), *option_cases(), *damage_cases(), *security_cases(), *concurrency_cases(), *kill_cases()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=2400, help="stop starting cases after this long")
    parser.add_argument("--only", default=None, help="run the categories that contain this word")
    parser.add_argument("--json", type=Path, default=None, help="write every case's outcome here")
    args = parser.parse_args()
    # A shell's background job ignores SIGINT, and its children inherit that: the Ctrl-C cases
    # would interrupt nothing. Python's own handler here; children start with the default.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cases = [c for c in all_cases() if args.only is None or args.only in c.category]
    start, outcomes = time.monotonic(), []
    home = os.getcwd()
    scratch = Path(tempfile.mkdtemp(prefix="trial-warmup-"))
    baseline(scratch)  # the one training every damaged-file case starts from, outside any case's clock
    shutil.rmtree(scratch, ignore_errors=True)
    for case in cases:
        if time.monotonic() - start > args.budget_s:
            break
        tmp = Path(tempfile.mkdtemp(prefix="trial-"))
        os.chdir(tmp)
        t0 = time.monotonic()
        try:
            with _alarm(case.timeout_s):
                case.check(tmp)
            problem = ""
        except BaseException as exc:  # noqa: BLE001 - every way a case can break is recorded
            problem = f"{type(exc).__name__}: {exc}"[:400]
        finally:
            os.chdir(home)
            subprocess.run(["chmod", "-R", "u+rwx", str(tmp)], capture_output=True, check=False)
            shutil.rmtree(tmp, ignore_errors=True)
        outcomes.append({"category": case.category, "case": case.name, "held": not problem, "problem": problem,
                         "seconds": round(time.monotonic() - t0, 1)})
        print(("held  " if not problem else "BROKE ") + f"{case.category}: {case.name}" +
              (f"\n      {problem}" if problem else ""), flush=True)
    if BASELINE:
        shutil.rmtree(BASELINE["home"], ignore_errors=True)
    by_category: Counter[str] = Counter(o["category"] for o in outcomes)
    held: Counter[str] = Counter(o["category"] for o in outcomes if o["held"])
    print("\n| category | cases | held |\n|:---|---:|---:|")
    for category in by_category:
        print(f"| {category} | {by_category[category]} | {held[category]} |")
    print(f"| **all** | **{len(outcomes)}** | **{sum(held.values())}** |")
    if args.json:
        args.json.write_text(json.dumps(outcomes, indent=1))
    return 0 if all(o["held"] for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
