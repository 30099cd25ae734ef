"""Adversarial trial (issue 23): bad input, damaged run files, security, concurrency and kills.

    PYTHONPATH=. python benchmarks/trial_adversarial.py [--budget-s 1500] [--only CATEGORY] [--json OUT]

Every case runs in a fresh directory with its own database and runs dir, on `vit_micro` and
sklearn's digits (CPU, a few steps), and is bounded in time. A case *holds* when mpvgbench
answers as promised: bad input is one line and exit 2 (never a traceback, never a hang), a
damaged file is named (or set aside) without a traceback, nothing is written outside the runs
root, and nothing is trained twice. The table printed at the end (category, cases, held) is the
one in docs/reliability.md.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's mpvgbench, in this process as in the CLI processes
FAST = {"name": "fast", "models": ["vit_micro"], "methods": ["default"], "datasets": ["digits"], "seeds": [0],
        "recipe": {"epochs": 3, "max_steps_per_epoch": 8}, "data": {"num_workers": 0},
        "executor": {"name": "local", "device": "cpu"}}
BUG = "this is a bug"


@dataclass
class Case:
    category: str
    name: str
    check: Callable[[Path], None]  # raises AssertionError (or anything) when mpvgbench broke
    timeout_s: float = 60.0


class Broke(AssertionError):
    pass


# ------------------------------------------------------------------------------ helpers


def cli(*args: Any, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """mpvgbench as a user runs it: a process of its own (a hang is killed by the timeout)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    env.pop("MPVGBENCH_DB", None)
    return subprocess.run([sys.executable, "-m", "mpvgbench", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL, cwd=cwd)


def invoke(*args: Any) -> Any:
    """mpvgbench in this process (fast: no torch import per case); exit code and output."""
    from click.testing import CliRunner

    from mpvgbench.cli import cli as group

    return CliRunner().invoke(group, [str(a) for a in args], catch_exceptions=True, prog_name="mpvgbench")


def expect_user_error(result: Any, *words: str) -> None:
    code = getattr(result, "exit_code", getattr(result, "returncode", None))
    output = getattr(result, "output", None) or (getattr(result, "stdout", "") + getattr(result, "stderr", ""))
    if code != 2 or "Traceback" in output or BUG in output:
        raise Broke(f"exit {code}: {output.strip()[-300:]}")
    for word in words:
        if word not in output:
            raise Broke(f"{word!r} not in: {output.strip()[-300:]}")


def expect_no_bug(result: Any, codes: tuple[int, ...] = (0, 1, 2)) -> None:
    code = getattr(result, "exit_code", getattr(result, "returncode", None))
    output = getattr(result, "output", None) or (getattr(result, "stdout", "") + getattr(result, "stderr", ""))
    if code not in codes or "Traceback" in output or BUG in output:
        raise Broke(f"exit {code}: {output.strip()[-300:]}")


def write(path: Path, doc: Any) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False) if not isinstance(doc, (str, bytes)) else doc) \
        if not isinstance(doc, bytes) else path.write_bytes(doc)
    return path


def attempts(run_dir: Path) -> int:
    """Worker starts recorded in the run's log (one header line each)."""
    try:
        return (run_dir / "stdout.log").read_text(errors="replace").count("===== mpvgbench attempt")
    except OSError:
        return 0


_BASELINE: dict[str, Any] = {}


def baseline(tmp: Path) -> tuple[Path, str]:
    """A finished run (trained once per trial, copied into each case's directory)."""
    if not _BASELINE:
        home = Path(tempfile.mkdtemp(prefix="trial-base-"))
        write(home / "fast.yaml", FAST)
        proc = cli("run", home / "fast.yaml", "--executor", "debug", "--db", home / "results.db",
                   "--runs-dir", home / "runs", timeout=300)
        assert proc.returncode == 0, proc.stderr
        from mpvgbench.matrix import expand
        from mpvgbench.spec import load_spec

        (job,) = expand(load_spec(home / "fast.yaml"))
        _BASELINE.update(home=home, key=job.key)
    home, key = _BASELINE["home"], _BASELINE["key"]
    for name in ("fast.yaml", "results.db"):
        shutil.copy(home / name, tmp / name)
    shutil.copytree(home / "runs", tmp / "runs")
    return tmp / "runs" / key, key


# ----------------------------------------------------------------------- bad spec input


def spec_cases() -> Iterator[Case]:
    controls = [c for c in range(32) if chr(c) not in "\t\n\r"] + [0x7f, 0x85, 0xfeff]
    for code in controls:
        def check(tmp: Path, code: int = code) -> None:
            (tmp / "s.yaml").write_text(f"name: a{chr(code)}b\nmodels: [vit_micro]\n", encoding="utf-8")
            result = invoke("run", tmp / "s.yaml", "--dry-run")
            expect_no_bug(result, (2,))
        yield Case("bad input: spec bytes", f"control character U+{code:04X}", check)
    for label, data in [("binary", b"\x00\x01binary"), ("latin-1", "name: caf\xe9\n".encode("latin-1")),
                        ("utf-16", "name: x\n".encode("utf-16")), ("lone surrogate", b"name: \xed\xa0\x80\n"),
                        ("truncated utf-8", b"name: \xe2\x82"), ("gzip", b"\x1f\x8b\x08\x00"),
                        ("png", b"\x89PNG\r\n\x1a\n"), ("nul in middle", b"name: fast\nmodels: [\x00]\n"),
                        ("empty", b""), ("only spaces", b"   \n  \n"), ("BOM", b"\xef\xbb\xbfname: [\n")]:
        yield Case("bad input: spec bytes", label,
                   lambda tmp, data=data: expect_no_bug(invoke("run", write(tmp / "s.yaml", data), "--dry-run"), (2,)))
    malformed = ["name: [unclosed", "name: {a: 1", "- a\nb: 2", "name: 'x", ": no key", "a: b: c",
                 "name: x\n  bad indent: 1", "[1, 2", "key: @reserved", "\tname: tab", "name: *undefined",
                 "&a [*a]", "name: !!python/object:os.system x", "name: !custom x", "!!binary aGk=",
                 "name: x\nname: y", "? [a, b]\n: c", "%YAML 9.9\n---\nname: x", "--- a\n--- b"]
    for text in malformed:
        yield Case("bad input: YAML", repr(text)[:40],
                   lambda tmp, text=text: expect_no_bug(invoke("run", write(tmp / "s.yaml", text), "--dry-run"), (2,)))
    wrong_types: list[tuple[str, Any]] = [
        ("name", 5), ("name", ""), ("name", "a b"), ("name", "x" * 500), ("models", "vit_micro"), ("models", []),
        ("models", ["nope"]), ("models", [None]), ("methods", [{"base": "nope"}]), ("methods", ["mpvg[x=1]"]),
        ("methods", [{"base": "mpvg", "last_ln_pe": 99}]), ("datasets", ["mnist"]), ("datasets", [1]),
        ("seeds", [-1]), ("seeds", [2**40]), ("seeds", ["0"]), ("seeds", [True]), ("seeds", list(range(200_000))),
        ("recipe", {"epochs": 0}), ("recipe", {"epochs": 1.5}), ("recipe", {"lr": float("nan")}),
        ("recipe", {"lr": float("inf")}), ("recipe", {"lr": -1}), ("recipe", {"batch_size": 0}),
        ("recipe", {"nope": 1}), ("recipe", []), ("zip", [["models", "nope"]]), ("include", [{"model": "x"}]),
        ("exclude", [{}]), ("exclude", [{"model": "vit_micro"}]), ("executor", {"name": "k8s"}),
        ("executor", {"workers": 0}), ("data", {"num_workers": -1}), ("data", {"roots": {"mnist": "/x"}}),
        ("results", {"db": 5}), ("model_overrides", {"nope": {}}), ("model_overrides", {"vit_micro": {"img_size": 16}}),
        ("model_overrides", {"vit_micro": {"img_size": 7}}), ("init_from", "zzzz"), ("init_from", {"dataset": "nope"}),
        ("dataset_overrides", {"digits": {"num_classes": 5}}), ("slurm", {"time": "forever"}),
        ("slurm", {"mem": "lots"}), ("slurm", {"additional_parameters": {"time": 5}}), ("unknown_field", 1),
        ("recipe", {"batch_size": 100_000}), ("recipe", {"param_groups": [{"match": ["*"], "lr_scale": 0}]}),
        ("recipe", {"param_groups": [{"match": ["nothing"], "lr_scale": 1}]}),
    ]
    for field, value in wrong_types:
        def check(tmp: Path, field: str = field, value: Any = value) -> None:
            doc = {**FAST, field: value}
            expect_no_bug(invoke("run", write(tmp / "s.yaml", json.dumps(doc)), "--dry-run"), (2,))
        yield Case("bad input: spec fields", f"{field}={json.dumps(value)[:30]}", check, timeout_s=120)
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8))
    yield Case("bad input: YAML", "alias bomb", lambda tmp: expect_user_error(
        invoke("run", write(tmp / "s.yaml", bomb), "--dry-run"), "expands"), timeout_s=20)
    yield Case("bad input: YAML", "nested 10,000 deep", lambda tmp: expect_no_bug(
        invoke("run", write(tmp / "s.yaml", "[" * 10_000 + "]" * 10_000), "--dry-run"), (2,)))
    yield Case("bad input: spec bytes", "2 MB spec", lambda tmp: expect_user_error(
        invoke("run", write(tmp / "s.yaml", "# " + "x" * 2_000_000), "--dry-run"), "limit"))

    def fifo(tmp: Path) -> None:
        os.mkfifo(tmp / "f.yaml")
        for command in (["run", tmp / "f.yaml", "--dry-run"], ["status", tmp / "f.yaml"], ["cancel", tmp / "f.yaml"]):
            expect_user_error(cli(*command, timeout=20))
    yield Case("bad input: spec files", "a FIFO as the spec", fifo)
    for path in ("/dev/zero", "/dev/null", "/dev/urandom", "/proc/self/mem", "/", "/nonexistent/s.yaml"):
        yield Case("bad input: spec files", path, lambda tmp, path=path: expect_user_error(
            cli("run", path, "--dry-run", timeout=20)))
    for name in ("a\nb.yaml", "a\rb.yaml", "a\x1bb.yaml", " .yaml", "-.yaml", "ü.yaml"):
        def odd(tmp: Path, name: str = name) -> None:
            (tmp / name).write_text("name: [")
            result = invoke("run", tmp / name)
            expect_user_error(result, "malformed")
            if len([line for line in result.output.splitlines() if line.startswith("Error")]) != 1:
                raise Broke(f"not one line: {result.output!r}")
        yield Case("bad input: spec files", f"path {name!r}", odd)


# --------------------------------------------------------------------- bad options / --set


def option_cases() -> Iterator[Case]:
    sets = ["recipe.epochs=-1", "recipe.epochs=abc", "recipe.lr=.nan", "recipe.lr=.inf", "recipe.batch_size=0",
            "seeds=[-1]", "seeds=notalist", "models=[nope]", "methods=[nope]", "name=a\x07", "recipe=5",
            "recipe.epochs.x=1", "=1", "recipe.=1", "recipe.epochs", ".=.", "a.b.c.d.e=1", "recipe.epochs=[",
            "model_overrides.vit_micro.img_size=16", "recipe.batch_size=99999", "executor.workers=0",
            "recipe.param_groups=[{match: ['*'], lr_scale: 0}]", "datasets=[imagenet]", "seeds=[0, 0]",
            "recipe.epochs=!!python/object:os.system x", "recipe.epochs=1e400", "name=" + "x" * 5000]
    for item in sets:
        expected = (0,) if item == "datasets=[imagenet]" else (2,)  # a dry run reads no data roots
        yield Case("bad input: --set and options", f"--set {item[:40]!r}", lambda tmp, item=item, expected=expected: expect_no_bug(
            invoke("run", write(tmp / "s.yaml", json.dumps(FAST)), "--dry-run", "--set", item), expected), timeout_s=120)
    options = [["--only", ""], ["--only", ","], ["--only", "model="], ["--only", "axis=x"], ["--only", "model=nope"],
               ["--only", "seed=x"], ["--only", "method=mpvg"], ["--checkpoint-every-min", "nan"],
               ["--checkpoint-every-min", "inf"], ["--checkpoint-every-min", "-1"], ["--checkpoint-every-min", "0"],
               ["--workers", "0"], ["--workers", "-3"], ["--device", "tpu"], ["--executor", "k8s"],
               ["--compile", "maybe"], ["--runs-dir", "r" * 300], ["--db", "d" * 300 + ".db"],
               ["--db", "postgresql://nobody@127.0.0.1:1/x"], ["--db", "nosuchdialect://x"], ["--runs-dir", "/proc"]]
    for option in options:
        def check(tmp: Path, option: list[str] = option) -> None:
            write(tmp / "s.yaml", json.dumps(FAST))
            dry = [] if option[0] in ("--runs-dir", "--db", "--device") else ["--dry-run"]
            expect_no_bug(invoke("run", tmp / "s.yaml", *dry, *option), (2,))
        yield Case("bad input: --set and options", " ".join(option)[:40], check, timeout_s=60)
    other = [["logs", ""], ["logs", " "], ["cancel", ""], ["logs", "zzzz"], ["logs", "../../etc/passwd"],
             ["logs", "%"], ["logs", "_"], ["logs", "'; DROP TABLE runs;--"], ["status", "--db", "missing.db"],
             ["report", "--table", "9"], ["report", "--format", "xml"], ["report", "--metric", "worst"],
             ["analyze", "zzzz"], ["recipes", "nope"], ["logs", "KEY", "--tail", "0"], ["logs", "KEY", "--tail", "-2"],
             ["logs", "KEY", "--tail", "x"], ["report", "-o", "/proc/nope/x.md"]]
    for command in other:
        def check(tmp: Path, command: list[str] = command) -> None:
            run_dir, key = baseline(tmp)
            args = [key[:8] if a == "KEY" else a for a in command]
            expect_no_bug(invoke(*args), (2,))
        yield Case("bad input: --set and options", " ".join(command)[:40], check)


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


def _spawn(tmp: Path, *args: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("MPVGBENCH_DB", None)
    return subprocess.Popen([sys.executable, "-m", "mpvgbench", *map(str, args)], cwd=tmp, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def _keys(tmp: Path, spec: Path) -> list[str]:
    from mpvgbench.matrix import expand
    from mpvgbench.spec import load_spec

    return [job.key for job in expand(load_spec(spec))]


def concurrency_cases() -> Iterator[Case]:
    def two_databases(tmp: Path) -> None:
        spec = write(tmp / "s.yaml", json.dumps({**FAST, "seeds": [0, 1], "recipe": {"epochs": 4, "max_steps_per_epoch": 8}}))
        a = _spawn(tmp, "run", spec, "--db", "a.db")
        b = _spawn(tmp, "run", spec, "--db", "b.db")
        for proc in (a, b):
            proc.communicate(timeout=300)
        for key in _keys(tmp, spec):
            if attempts(tmp / "runs" / key) != 1:
                raise Broke(f"{key} trained {attempts(tmp / 'runs' / key)} times by two databases")
    yield Case("concurrency", "two databases on one runs dir", two_databases, timeout_s=400)

    def two_coordinators(tmp: Path) -> None:
        spec = write(tmp / "s.yaml", json.dumps({**FAST, "seeds": [0, 1, 2]}))
        procs = [_spawn(tmp, "run", spec) for _ in range(2)]
        poller = [_spawn(tmp, "status") for _ in range(3)]
        for proc in procs + poller:
            out, _ = proc.communicate(timeout=300)
            if "Traceback" in out:
                raise Broke(out[-300:])
        if any(proc.returncode != 0 for proc in procs):
            raise Broke(f"exit codes {[p.returncode for p in procs]}")
        for key in _keys(tmp, spec):
            if attempts(tmp / "runs" / key) != 1:
                raise Broke(f"{key} trained twice")
    yield Case("concurrency", "two coordinators, one database, pollers", two_coordinators, timeout_s=400)

    def cancel_then_retry(tmp: Path) -> None:
        spec = write(tmp / "s.yaml", json.dumps({**FAST, "recipe": {"epochs": 400, "max_steps_per_epoch": 8}}))
        first = _spawn(tmp, "run", spec)
        (key,) = _keys(tmp, spec)
        try:
            deadline = time.time() + 60
            while not (tmp / "runs" / key / "progress.json").exists() and time.time() < deadline:
                time.sleep(0.5)
            expect_no_bug(cli("cancel", spec, cwd=tmp), (0,))
            second = _spawn(tmp, "run", spec, "--retry-failed")
            most = 0
            for _ in range(60):  # 12 s: the window in which two workers used to overlap
                most = max(most, _workers_on(tmp / "runs" / key))
                time.sleep(0.2)
            if most > 1:
                raise Broke(f"{most} workers trained one run directory at once")
        finally:
            for proc in [first, *([second] if "second" in locals() else [])]:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                proc.communicate(timeout=60)
    yield Case("concurrency", "cancel then an immediate --retry-failed", cancel_then_retry, timeout_s=200)


def _workers_on(run_dir: Path) -> int:
    """Worker processes (not their forks) whose command line names ``run_dir``."""
    count = 0
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mpvgbench.worker" in argv and str(run_dir).encode() in argv:
            count += 1
    return count


def kill_cases() -> Iterator[Case]:
    for sig, label in ((signal.SIGKILL, "kill -9"), (signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "Ctrl-C")):
        for executor in ("local", "debug"):
            def check(tmp: Path, sig: signal.Signals = sig, executor: str = executor) -> None:
                spec = write(tmp / "s.yaml", json.dumps({**FAST, "recipe": {"epochs": 6, "max_steps_per_epoch": 30}}))
                proc = _spawn(tmp, "run", spec, "--executor", executor)
                (key,) = _keys(tmp, spec)
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
    if _BASELINE:
        shutil.rmtree(_BASELINE["home"], ignore_errors=True)
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
