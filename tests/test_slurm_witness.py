"""The run directory as the second witness, on the real local Slurm cluster (issue 23, item 1).

The database is lost while Slurm jobs are queued (held, so the test costs no compute): the same
`run` against a fresh database submits nothing, adopts the live jobs with their ids and
executor, `--executor local` does not train them, `status` says how to release them.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.test_slurm import Env, _cli, _squeue_state, _wait_for, env, cluster  # noqa: F401 - fixtures

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _spec(env: Env) -> Path:
    path = env.tmp / "spec.yaml"
    path.write_text(json.dumps({
        "name": "witness", "models": ["vit_micro"], "methods": ["default", "pvg"], "datasets": ["digits"],
        "recipe": {"epochs": 500}, "executor": {"name": "slurm", "device": "cpu"},
        "results": {"runs_dir": str(env.tmp / "runs")},
        "slurm": {"time": 10, "folder": str(env.folder), "additional_parameters": {"hold": True}},
    }))
    return path


def test_a_lost_database_never_resubmits_live_jobs(env: Env) -> None:
    from mpvgbench.store import Store

    spec = _spec(env)
    first = _cli("run", str(spec), "--db", str(env.tmp / "a.db"), cwd=env.tmp)
    assert first.returncode == 0 and "submitted 2 job(s)" in first.stdout, first.stdout + first.stderr
    with Store(str(env.tmp / "a.db")) as store:
        submitted = {row.key: row.external_id for row in store.runs()}
    try:
        _wait_for(lambda: all(_squeue_state(i) == "PENDING" for i in submitted.values()), 30, "held jobs")
        # the database is gone: a new one, same runs dir, same command
        again = _cli("run", str(spec), "--db", str(env.tmp / "b.db"), cwd=env.tmp)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "submitted 2" not in again.stdout and "not submitted" in again.stdout, again.stdout
        with Store(str(env.tmp / "b.db")) as store:
            rows = {row.key: row for row in store.runs()}
        assert {k: r.external_id for k, r in rows.items()} == submitted  # adopted, same Slurm jobs
        assert {(r.status, r.executor) for r in rows.values()} == {("running", "slurm")}
        assert all(r.attempts >= 1 for r in rows.values())  # the history is the run dirs'

        # a held job and `--executor local` on the same (new) database: nothing trains locally
        local = _cli("run", str(spec), "--db", str(env.tmp / "b.db"), "--executor", "local", cwd=env.tmp)
        assert "0 to run" in local.stdout and "on Slurm" in local.stderr, local.stdout + local.stderr
        assert not any((env.tmp / "runs" / key / "stdout.log").exists() for key in submitted)

        status = _cli("status", str(spec), "--db", str(env.tmp / "b.db"), cwd=env.tmp)
        assert "scontrol release" in status.stdout, status.stdout + status.stderr
    finally:
        subprocess.run(["scancel", *submitted.values()], capture_output=True, timeout=20, check=False)
