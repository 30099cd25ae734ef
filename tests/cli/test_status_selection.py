"""`status SPEC [--set ...] [--only ...] [--smoke]` lists exactly the jobs `run` makes with the
same arguments (selected by job key, as `report` does), from .smoke/ with --smoke."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from mpvgbench.cli import cli
from mpvgbench.matrix import expand, select
from mpvgbench.spec import load_spec
from mpvgbench.store import Store

from .conftest import ROOT, fabricate_run

QUICKSTART = ROOT / "experiments" / "quickstart.yaml"


def invoke(*args: Any) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def smoke_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list:
    """.smoke/results.db holding the quickstart's smoke matrix, one MPVG run finished."""
    monkeypatch.chdir(tmp_path)
    jobs = expand(load_spec(QUICKSTART), smoke=True)
    with Store(tmp_path / ".smoke" / "results.db") as store:
        store.register_jobs(jobs, "quickstart")
        mpvg = next(job for job in jobs if job.method_label == "mpvg")
        fabricate_run(store, tmp_path / ".smoke" / "runs", mpvg.config)
    return jobs


def test_status_smoke_with_a_spec_shows_that_matrix(smoke_store: list) -> None:
    res = invoke("status", QUICKSTART, "--smoke", "--all")
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0] == f"{len(smoke_store) - 1} pending, 1 finished"
    only = select(smoke_store, ["method=mpvg"])
    res = invoke("status", QUICKSTART, "--smoke", "--only", "method=mpvg", "--all")
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0] == f"{len(only) - 1} pending, 1 finished"
    # an override makes other jobs: none of them is stored
    res = invoke("status", QUICKSTART, "--smoke", "--set", "seeds=[7]")
    assert res.exit_code == 0 and res.output.splitlines()[0] == "no runs; nothing running", res.output


def test_status_refuses_set_and_only_without_a_spec(smoke_store: list) -> None:
    res = CliRunner().invoke(cli, ["status", "--smoke", "--only", "method=mpvg"])
    assert res.exit_code == 2 and "pass the SPEC they apply to" in res.output
    assert len(res.output.strip().splitlines()) == 1
