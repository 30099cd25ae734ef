"""The executor seam's run-dir preparation: job.json carries the coordinator's git revision."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _fresh_revision() -> None:
    from mpvgbench.executors.base import source_revision

    source_revision.cache_clear()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_job_json_records_the_git_commit_of_the_users_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mpvgbench.executors.base import RunContext, prepare_run_dir
    from mpvgbench.matrix import expand
    from mpvgbench.spec import parse_spec

    repo = tmp_path / "experiments"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "safe.directory=*"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    (repo / "a.txt").write_text("1")
    subprocess.run([*git, "add", "a.txt"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=repo, check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    (repo / "a.txt").write_text("2")  # a tracked change: dirty
    monkeypatch.chdir(repo)
    (job,) = expand(parse_spec({"name": "g", "models": ["vit_micro"], "methods": ["default"], "datasets": ["digits"]}))
    run_dir = prepare_run_dir(job, RunContext(runs_root=tmp_path / "runs"))
    source = json.loads((run_dir / "job.json").read_text())["source"]
    assert source == {"git_commit": commit, "git_dirty": True, "git_root": str(repo.resolve())}


def test_outside_a_checkout_the_revision_is_mpvgbenchs_own_or_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mpvgbench
    from mpvgbench.executors.base import source_revision

    monkeypatch.chdir(tmp_path)
    revision = source_revision()
    package = Path(mpvgbench.__file__).resolve().parent
    in_checkout = subprocess.run(["git", "rev-parse", "HEAD"], cwd=package, capture_output=True,
                                 text=True).returncode == 0 if shutil.which("git") else False
    assert (revision["git_commit"] is not None) == in_checkout
