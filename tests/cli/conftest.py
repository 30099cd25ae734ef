"""Helpers for the command-line tests: tiny specs, an isolated working directory, the CLI in
process (CliRunner) and as a real process, fabricated runs, database snapshots.

Every test runs in its own ``tmp_path`` (the CLI's defaults ``./results.db`` and ``./runs`` land
there). Real training uses vit_micro on sklearn's digits with a few steps per epoch.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml
from click.testing import CliRunner, Result

from mpvgbench.cli import cli
from mpvgbench.config import Recipe, TrainConfig
from mpvgbench.matrix import Job, expand
from mpvgbench.rundir import atomic_write_json, atomic_write_jsonl, read_json
from mpvgbench.spec import load_spec
from mpvgbench.store import Store
from tests.jobs import TIMING  # noqa: F401 - re-exported to the CLI tests

ROOT = Path(__file__).resolve().parents[2]
TINY_RECIPE: dict[str, Any] = {"epochs": 2, "max_steps_per_epoch": 3, "eval_max_batches": 1}


# ------------------------------------------------------------------------------------ specs


def spec_doc(name: str = "tiny", *, models: Sequence[Any] = ("vit_micro",),
             methods: Sequence[Any] = ("default",), datasets: Sequence[str] = ("digits",),
             seeds: Sequence[int] = (0,), recipe: Optional[dict[str, Any]] = None,
             workers: int = 1, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": name, "models": list(models), "methods": list(methods),
        "datasets": list(datasets), "seeds": list(seeds),
        "recipe": dict(TINY_RECIPE if recipe is None else recipe),
        "data": {"num_workers": 0},
        "executor": {"name": "local", "workers": workers, "device": "cpu"},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    return doc


def write_spec(path: Path, doc: Optional[dict[str, Any]] = None, **kw: Any) -> Path:
    path.write_text(yaml.safe_dump(doc if doc is not None else spec_doc(**kw), sort_keys=False))
    return path


def jobs_of(spec_path: Path, smoke: bool = False) -> list[Job]:
    return expand(load_spec(spec_path), smoke=smoke)


# -------------------------------------------------------------------------------- the CLI


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MPVGBENCH_DB", raising=False)
    monkeypatch.setenv("COLUMNS", "250")  # rich tables: no ellipsis in keys and statuses
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # workers inherit it: same numbers as in-process


def invoke(*args: Any) -> Result:
    """The CLI in this process; stdout and stderr both in ``result.output``."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True, prog_name="mpvgbench")


def cli_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "COLUMNS": "250", **extra}
    for name in ("MPVGBENCH_DB", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                 "SUBMITIT_EXECUTOR"):
        env.pop(name, None)
    return env


def start_cli(*args: Any, cwd: Path, env: Optional[dict[str, str]] = None, **popen: Any) -> subprocess.Popen[str]:
    """``python -m mpvgbench ARGS`` as a real process (output in a pipe, stderr merged)."""
    return subprocess.Popen(
        [sys.executable, "-m", "mpvgbench", *map(str, args)], cwd=cwd, env=env or cli_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, **popen,
    )


def run_cli(*args: Any, cwd: Path, timeout: float = 300, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = start_cli(*args, cwd=cwd, **kw)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        out, _ = proc.communicate()
        pytest.fail(f"mpvgbench {' '.join(map(str, args))} timed out:\n{out[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


# ------------------------------------------------------------------------------- processes


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def is_gone(pid: int) -> bool:
    """Dead: no such process, or a zombie nobody has reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def wait_gone(pids: Iterable[int], timeout: float = 30) -> bool:
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(is_gone(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def kill_tree(pid: int) -> None:
    for child in children(pid):
        kill_tree(child)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def read_progress(run_dir: Path) -> dict[str, Any]:
    try:
        return read_json(run_dir / "progress.json", missing_ok=True) or {}
    except ValueError:
        return {}


def wait_for(predicate: Any, timeout: float, what: str, proc: Optional[subprocess.Popen[str]] = None,
             interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"process ended (rc={proc.returncode}) before {what}:\n{out[-3000:]}")
        time.sleep(interval)
    pytest.fail(f"timed out waiting for {what}")


# ---------------------------------------------------------------------------- the database


def db_snapshot(path: Path) -> str:
    """Everything stored, as SQL text (equal text: the database did not change)."""
    if not path.exists():
        return "<no database>"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return "\n".join(conn.iterdump())
    finally:
        conn.close()


def tree_snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (databases excluded) -> sha256 of its bytes."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.startswith("results.db"):
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def fake_result(key: str, top1: float, epochs: int = 2, **extra: Any) -> dict[str, Any]:
    return {"key": key, "final_top1": top1, "best_top1": top1 + 1.0, "final_top5": 90.0,
            "best_top5": 91.0, "epochs": epochs, "wall_time_s": 1.5,
            "env": {"host": "test", "torch": "x", "timm": "y", "device": "cpu"}, **extra}


def fabricate_run(store: Store, runs_root: Path, config: TrainConfig, *, top1: Optional[float] = 50.0,
                  error: Optional[str] = None, spec_name: Optional[str] = None, **extra: Any) -> str:
    """A run directory as a worker leaves it (result.json, or error.json), ingested."""
    key = config.key()
    run_dir = runs_root / key
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", config.model_dump(mode="json"))
    epochs = config.recipe.epochs
    atomic_write_jsonl(run_dir / "metrics.jsonl", [
        {"epoch": e, "train_loss": 2.0, "val_loss": 2.1, "top1": top1 or 0.0, "top5": 90.0,
         "lr": 1e-3, "epoch_time_s": 0.1, "images_per_s": 100.0} for e in range(1, epochs + 1)])
    if spec_name is not None:
        from mpvgbench.matrix import Job as _Job

        store.register_jobs([_Job(key=key, spec_name=spec_name, config=config)], spec_name)
    if error is not None:
        if spec_name is not None:
            assert store.claim(key, "test:1:x", stale_after_s=60)
        atomic_write_json(run_dir / "error.json", {
            "key": key, "kind": "exception", "error": error, "traceback_tail": "Traceback ...\n" + error,
            "epoch": 1, "step": 2})
    else:
        atomic_write_json(run_dir / "result.json", fake_result(key, top1 if top1 is not None else 0.0,
                                                                epochs, **extra))
    status = store.ingest_run_dir(run_dir)
    assert status == ("failed" if error is not None else "finished"), status
    return key


def micro_config(seed: int = 0, method: Any = "default", epochs: int = 2, **recipe: Any) -> TrainConfig:
    from mpvgbench.methods import canonical_method_dict

    return TrainConfig(model="vit_micro", method=canonical_method_dict(method), dataset="digits",
                       img_size=8, num_classes=10, seed=seed, recipe=Recipe(epochs=epochs, **recipe))


def result_of(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "result.json").read_text())
