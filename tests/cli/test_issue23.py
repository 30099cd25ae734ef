"""Issue 23's observations, each replayed as written: nothing trained twice, read-only pipes,
every input mistake one line (exit 2) before anything is stored or submitted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mpvgbench.store import Store
from tests.cli.conftest import cli_env, invoke, jobs_of, spec_doc, write_spec


def _one_line_error(res: Any, *words: str) -> None:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "this is a bug" not in res.output, res.output
    error_lines = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, res.output
    for word in words:
        assert word in error_lines[0], res.output


# ------------------------------------------------------------------------- reading a spec


@pytest.mark.parametrize("content, words", [
    (b"\x00\x01binary", ["'\\x00' is not allowed"]),  # observation 3
    (b"name: a\x07b\n", ["'\\x07' is not allowed"]),
    (b"\xff\xfe\x00", ["not UTF-8"]),
    (b"name: [unclosed\n", ["malformed YAML"]),
    (b"- a list\n", ["top level must be a mapping"]),
])
def test_a_spec_that_is_not_a_spec_is_one_line(tmp_path: Path, content: bytes, words: list[str]) -> None:
    (tmp_path / "s.yaml").write_bytes(content)
    _one_line_error(invoke("run", "s.yaml"), "s.yaml", *words)


def test_fifos_devices_and_odd_paths_never_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.yaml")  # nobody writes: a blocking read would wait forever
    for command in (["run", "fifo.yaml", "--dry-run"], ["status", "fifo.yaml"], ["run", "/dev/zero"]):
        _one_line_error(invoke(*command), "not a regular file")
    write_spec(tmp_path / "a\nb.yaml")
    (tmp_path / "a\nb.yaml").write_text("name: [")
    _one_line_error(invoke("run", "a\nb.yaml"), "'a\\nb.yaml'", "malformed YAML")  # not "Error: a"


def test_control_characters_in_a_set_value(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml")
    _one_line_error(invoke("run", spec, "--dry-run", "--set", "name=a\x07"), "--set name", "not allowed")


def test_set_changes_one_place_of_a_yaml_alias(tmp_path: Path) -> None:
    from mpvgbench.spec import load_spec

    (tmp_path / "s.yaml").write_text(
        "name: alias\nmodels: [vit_micro]\nmethods: [default]\ndatasets: [digits]\n"
        "recipe: &r {epochs: 3, max_steps_per_epoch: 8}\n"
        "model_overrides: {vit_micro: {recipe: *r}}\n")
    spec = load_spec(tmp_path / "s.yaml", ["recipe.epochs=1"])
    assert spec.recipe is not None and spec.recipe.epochs == 1
    assert spec.model_overrides["vit_micro"].recipe.epochs == 3  # the alias was not changed with it


# --------------------------------------------------------- configuration checked before submit


@pytest.mark.parametrize("override, words", [
    ("model_overrides={vit_micro: {img_size: 16}}", ["img_size 16", "8x8"]),  # observation 4
    ("recipe.batch_size=5000", ["batch_size 5000", "1437"]),
    ("recipe.param_groups=[{match: ['*'], lr_scale: 0}]", ["freeze every parameter"]),
    ("recipe.param_groups=[{match: ['blocks.*'], lr_scale: 0}, {match: ['cls_token', 'pos_embed', "
     "'patch_embed.*', 'norm.*', 'head.*'], lr_scale: 0}]", ["freeze every parameter"]),
    ("recipe.param_groups=[{match: ['no_such_layer*'], lr_scale: 0.5}]", ["match no parameter"]),
    ("dataset_overrides={digits: {num_classes: 5}}", ["10 classes"]),
])
def test_config_only_mistakes_are_found_by_a_dry_run(tmp_path: Path, override: str, words: list[str]) -> None:
    spec = write_spec(tmp_path / "s.yaml")
    res = invoke("run", spec, "--dry-run", "--set", override)
    _one_line_error(res, *words)
    assert not (tmp_path / "results.db").exists()


@pytest.mark.parametrize("args, words", [
    (["--only", ""], ["--only", "empty"]),
    (["--only", ","], ["--only", "empty"]),
    (["--checkpoint-every-min", "nan"], ["nan"]),
    (["--checkpoint-every-min", "inf"], ["checkpoint-every-min"]),
])
def test_bad_options_of_run(tmp_path: Path, args: list[str], words: list[str]) -> None:
    spec = write_spec(tmp_path / "s.yaml")
    res = invoke("run", spec, "--dry-run", *args)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert all(word in res.output for word in words), res.output


def test_logs_and_cancel_refuse_an_empty_key_and_bad_tails(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml")
    (job,) = jobs_of(spec)
    with Store(tmp_path / "results.db") as store:
        store.register_jobs([job], "tiny")
        store.set_run_dir(job.key, str(tmp_path / "runs" / job.key))
    run_dir = tmp_path / "runs" / job.key
    run_dir.mkdir(parents=True)
    (run_dir / "stdout.log").write_text("".join(f"line {i}\n" for i in range(10)))
    for command in (["logs", ""], ["cancel", ""], ["logs", " "]):
        _one_line_error(invoke(*command), "empty KEY")
    for tail in ("0", "-2"):
        res = invoke("logs", job.key[:8], "--tail", tail)
        assert res.exit_code == 2 and "--tail" in res.output, res.output
    res = invoke("logs", job.key[:8], "--tail", "2", "--stream", "stdout")
    assert res.exit_code == 0 and res.output.splitlines()[1:] == ["line 8", "line 9"], res.output
    with Store(tmp_path / "results.db") as store:
        assert store.statuses([job.key]) == {job.key: "pending"}  # cancel "" cancelled nothing
    (run_dir / "stderr.log").mkdir()  # a directory where a log should be: skipped, no traceback
    res = invoke("logs", job.key[:8])
    assert res.exit_code == 0 and "line 9" in res.output, res.output


# ------------------------------------------------------------------------------- run dirs


def test_a_run_dir_that_is_a_link_is_never_followed(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml")
    (job,) = jobs_of(spec)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "result.json").write_text("keep me")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / job.key).symlink_to(outside)
    _one_line_error(invoke("run", spec, "--force"), "symbolic link")
    assert (outside / "result.json").read_text() == "keep me"
    assert sorted(p.name for p in outside.iterdir()) == ["result.json"]


def test_a_run_dir_that_is_a_file_or_holds_a_log_directory(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml")
    (job,) = jobs_of(spec)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / job.key).write_text("not a dir")
    _one_line_error(invoke("run", spec), "is a file")
    (tmp_path / "runs" / job.key).unlink()
    (tmp_path / "runs" / job.key / "stderr.log").mkdir(parents=True)
    _one_line_error(invoke("run", spec), "stderr.log is not a regular file")


def test_names_too_long_for_the_file_system(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml")
    long = "r" * 300
    _one_line_error(invoke("run", spec, "--runs-dir", long), "runs dir")
    _one_line_error(invoke("run", spec, "--db", long + ".db"))
    _one_line_error(invoke("status", "--db", long + ".db"))


# ------------------------------------------------------------------------- executors


def test_smoke_never_writes_into_the_database_of_mpvgbench_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = write_spec(tmp_path / "s.yaml")
    monkeypatch.setenv("MPVGBENCH_DB", str(tmp_path / "real.db"))
    res = invoke("run", spec, "--smoke", "--executor", "debug")
    assert res.exit_code == 0, res.output
    assert "MPVGBENCH_DB" in res.output and not (tmp_path / "real.db").exists()
    with Store(tmp_path / ".smoke" / "results.db") as store:
        assert [r.status for r in store.runs()] == ["finished"]


def test_ctrl_c_of_the_debug_executor_leaves_the_job_pending(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mpvgbench.worker

    def interrupted(run_dir: str) -> None:
        # what the worker does on Ctrl-C: its error.json says infra KeyboardInterrupt
        (Path(run_dir) / "error.json").write_text(json.dumps({"kind": "infra", "error": "KeyboardInterrupt"}))
        raise KeyboardInterrupt

    monkeypatch.setattr(mpvgbench.worker, "run_job", interrupted)
    spec = write_spec(tmp_path / "s.yaml")
    (job,) = jobs_of(spec)
    res = invoke("run", spec, "--executor", "debug")
    assert res.exit_code == 130, res.output
    res = invoke("status")
    assert res.exit_code == 0 and "1 pending" in res.output, res.output
    with Store(tmp_path / "results.db") as store:
        assert store.statuses([job.key]) == {job.key: "pending"}


def test_a_full_disk_inside_torch_save_is_infra() -> None:
    from mpvgbench.executors.base import is_infra_failure

    torch_enospc = ("RuntimeError: [enforce fail at inline_container.cc:626] . unexpected pos 6720 vs 6614")
    assert is_infra_failure({"kind": "exception", "error": f"during save: {torch_enospc}"})
    assert is_infra_failure({"kind": "infra", "error": "OSError"})
    assert not is_infra_failure({"kind": "exception", "error": "ValueError: bad shape"})
    assert not is_infra_failure({"kind": "nonfinite", "error": "no space left on device"})


def test_a_finished_parent_without_checkpoint_is_retrained_for_its_child(tmp_path: Path) -> None:
    """Observation 2, in small: one spec's smoke drops a run's checkpoint; a second spec that
    fine-tunes from that run retrains it first instead of "train that run first"."""
    parent_spec = write_spec(tmp_path / "a.yaml", spec_doc("a", datasets=["cifar100"]))
    child_spec = write_spec(tmp_path / "b.yaml", spec_doc("b", datasets=["digits"],
                                                          init_from={"dataset": "cifar100"}))
    res = invoke("run", parent_spec, "--smoke", "--executor", "debug")
    assert res.exit_code == 0, res.output
    (parent,) = jobs_of(parent_spec, smoke=True)
    assert not (tmp_path / ".smoke" / "runs" / parent.key / "checkpoint.pt").exists()
    res = invoke("run", child_spec, "--smoke", "--executor", "debug")
    assert res.exit_code == 0, res.output
    assert "retrained first" in res.output and "train that run first" not in res.output
    with Store(tmp_path / ".smoke" / "results.db") as store:
        assert set(store.statuses([j.key for j in jobs_of(child_spec, smoke=True)]).values()) == {"finished"}


# ---------------------------------------------------------------------------------- pipes


def _head(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    command = " ".join(["'" + sys.executable + "'", "-m", "mpvgbench", *args])
    return subprocess.run(["bash", "-c", f"{command} | head -1; exit ${{PIPESTATUS[0]}}"], cwd=cwd,
                          env=cli_env(PYTHONPATH=str(Path(__file__).resolve().parents[2])),
                          capture_output=True, text=True, timeout=120)


def test_pipes_closed_early_end_quietly(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", seeds=list(range(1500)))
    jobs = jobs_of(spec)
    with Store(tmp_path / "results.db") as store:
        store.register_jobs(jobs, "tiny")  # --all lists 1500 rows: more than a pipe holds
        store.set_run_dir(jobs[0].key, str(tmp_path / "runs" / jobs[0].key))
    (tmp_path / "runs" / jobs[0].key).mkdir(parents=True)
    (tmp_path / "runs" / jobs[0].key / "stdout.log").write_text(("y" * 99 + "\n") * 20_000)  # 2 MB
    for args in (["status", "--all"], ["logs", jobs[0].key[:8]]):
        proc = _head(args, tmp_path)
        assert proc.returncode in (0, 141), (args, proc.returncode, proc.stderr)
        assert "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr
        assert len(proc.stdout.splitlines()) == 1
