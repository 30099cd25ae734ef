"""docs/slurm.md's cluster recipes, as code: the documented multi-node spec, requeues sized from
epochs, the time-limit warning, held jobs in `status`, and (on the local cluster) a conda-style
activation through `slurm.setup`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from mpvgbench.executors.slurm_queue import scheduler_view
from mpvgbench.slurm_settings import SlurmSettings
from mpvgbench.spec import parse_spec

DOCS = Path(__file__).resolve().parents[1] / "docs" / "slurm.md"


def _documented_multinode_spec() -> dict:
    text = DOCS.read_text()
    section = text[text.index("**A complete multi-node spec.**"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert block is not None
    return yaml.safe_load(block.group(1))


def test_the_documented_multinode_spec_is_valid() -> None:
    spec = parse_spec(_documented_multinode_spec(), "docs/slurm.md")
    assert spec.slurm is not None and (spec.slurm.nodes, spec.slurm.tasks_per_node) == (2, 4)
    params = spec.slurm.submitit_parameters()
    assert params["nodes"] == 2 and params["tasks_per_node"] == 4 and params["gpus_per_node"] == 4
    assert "conda activate mpvg" in params["slurm_setup"]
    # 300 epochs x 30 min over 2-day allocations: 4 allocations, not the default 3
    assert spec.slurm.requeues_for(300) == 4


@pytest.mark.parametrize("settings, epochs, expected", [
    ({}, 300, 3),  # nothing known: the default
    ({"max_requeues": 1, "epoch_minutes": 60}, 300, 1),  # set by the user: kept
    ({"time": 60, "epoch_minutes": 10}, 40, 8),  # 400 min over 60 - 2 - (15 + 60) / 60 = 56.75 min
    ({"time": 600, "epoch_minutes": 1}, 10, 3),  # fits one allocation: never under the default
    ({"time": 3, "epoch_minutes": 5}, 10_000, 100),  # capped
])
def test_max_requeues_from_the_epochs(settings: dict, epochs: int, expected: int) -> None:
    assert SlurmSettings(**settings).requeues_for(epochs) == expected


def test_a_time_limit_that_leaves_no_room_is_warned_about(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from mpvgbench.cli import cli

    spec = {"name": "short", "models": ["vit_micro"], "methods": ["default"], "datasets": ["digits"],
            "recipe": {"epochs": 40}, "executor": {"name": "slurm", "device": "cpu"},
            "results": {"db": str(tmp_path / "r.db"), "runs_dir": str(tmp_path / "runs")},
            "slurm": {"time": "00:01:00"}}
    (tmp_path / "s.yaml").write_text(json.dumps(spec))
    # PATH without sbatch: the submission itself fails after the warning, nothing is queued
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "s.yaml")], env={"PATH": "/nonexistent"})
    assert "warning: slurm.time 1 min leaves" in result.output, result.output
    assert "Traceback" not in result.output


def test_held_jobs_say_how_to_release_them() -> None:
    words, _ = scheduler_view({"job_id": "12_3", "state": "PENDING", "reason": "JobHeldUser"})
    assert words == "held: `scontrol release 12_3`"
    words, _ = scheduler_view({"job_id": "7", "state": "REQUEUE_HOLD", "reason": "JobHeldAdmin"})
    assert words == "held: `scontrol release 7`"
    assert scheduler_view({"job_id": "7", "state": "PENDING", "reason": "Priority"})[0] == "pending (Priority)"


def test_a_user_dependency_cannot_replace_init_froms_afterok() -> None:
    from mpvgbench.errors import SpecError

    with pytest.raises(SpecError, match="dependency.*mpvgbench sets it itself"):
        parse_spec({"name": "x", "models": ["vit_micro"], "methods": ["default"], "datasets": ["digits"],
                    "slurm": {"additional_parameters": {"dependency": "afterok:5"}}})


@pytest.mark.slurm
@pytest.mark.slow  # waits for the local cluster
def test_setup_activates_an_environment_in_the_job(tmp_path: Path) -> None:
    """`slurm.setup` as docs/slurm.md shows it for conda: the lines run in the job, before the
    worker, and what they export reaches it (a stand-in `activate`: no conda on the test cluster)."""
    from tests.test_slurm import _cli, _cluster_problem

    problem = _cluster_problem()
    if problem:
        pytest.skip(problem)
    activate = tmp_path / "activate"
    marker = tmp_path / "activated.txt"
    activate.write_text(f"export MPVG_ACTIVATED=yes\necho \"$SLURM_JOB_ID\" > {marker}\n")
    spec = {"name": "condaenv", "models": ["vit_micro"], "methods": ["default"], "datasets": ["digits"],
            "recipe": {"epochs": 1, "max_steps_per_epoch": 2}, "executor": {"name": "slurm", "device": "cpu"},
            "results": {"db": str(tmp_path / "r.db"), "runs_dir": str(tmp_path / "runs")},
            "slurm": {"time": 10, "folder": str(tmp_path / "logs"),
                      "setup": [f"source {activate}", "test \"$MPVG_ACTIVATED\" = yes || exit 3"]}}
    (tmp_path / "s.yaml").write_text(json.dumps(spec))
    proc = _cli("run", str(tmp_path / "s.yaml"), "--wait", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert marker.read_text().strip(), "setup did not run in the job"
