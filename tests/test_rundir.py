"""Run-directory layout: atomic writes survive a crash mid-write, readers fail with one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from mpvgbench import rundir
from mpvgbench.config import Recipe, TrainConfig
from mpvgbench.rundir import (
    RunDir,
    RunDirError,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_jsonl,
    collect_env,
    is_finished,
    read_checkpoint,
    read_config,
    read_job,
    read_json,
    read_jsonl,
    read_result,
)
from tests.jobs import prepare_job


def _config() -> TrainConfig:
    return TrainConfig(
        model="vit_micro", method={"pool": "avg"}, dataset="digits", img_size=8, num_classes=10,
        recipe=Recipe(epochs=1, batch_size=8),
    )


def _only_expected_files(directory: Path, *names: str) -> None:
    assert sorted(p.name for p in directory.iterdir()) == sorted(names)  # no leftover temp files


def test_layout_names(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    names = [rd.config, rd.job, rd.checkpoint, rd.metrics, rd.progress, rd.result, rd.error, rd.stdout, rd.stderr]
    assert [p.name for p in names] == [
        "config.json", "job.json", "checkpoint.pt", "metrics.jsonl", "progress.json",
        "result.json", "error.json", "stdout.log", "stderr.log",
    ]
    assert all(p.parent == tmp_path for p in names)


def test_atomic_json_roundtrip_and_crash_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "result.json"
    atomic_write_json(path, {"a": 1})
    assert read_json(path) == {"a": 1}

    def crash(obj: object, f: object, **kw: object) -> None:
        f.write('{"half": ')  # type: ignore[attr-defined]
        raise KeyboardInterrupt  # even a non-Exception interrupt must not leave half a file

    monkeypatch.setattr(rundir.json, "dump", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_json(path, {"a": 2})
    monkeypatch.undo()
    assert read_json(path) == {"a": 1}
    _only_expected_files(tmp_path, "result.json")


def test_atomic_torch_save_crash_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pt"
    atomic_torch_save(path, {"model": {"w": torch.ones(3)}, "epoch": 1})
    real_save = torch.save

    def crash(obj: object, f: object) -> None:
        real_save(obj, f)
        f.seek(0)  # type: ignore[attr-defined]
        f.truncate(10)  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        atomic_torch_save(path, {"model": {"w": torch.zeros(3)}, "epoch": 2})
    monkeypatch.undo()
    ckpt = read_checkpoint(path)
    assert ckpt is not None and ckpt["epoch"] == 1 and torch.equal(ckpt["model"]["w"], torch.ones(3))
    _only_expected_files(tmp_path, "checkpoint.pt")


@pytest.mark.parametrize("content", [b"", b"garbage", b"PK\x03\x04truncated zip"])
def test_corrupted_checkpoint_is_one_line_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "checkpoint.pt").write_bytes(content)
    with pytest.raises(RunDirError) as err:
        read_checkpoint(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"run dir {tmp_path}: checkpoint.pt is corrupted (")
    assert msg.endswith("delete it to restart the run from scratch")


def test_truncated_real_checkpoint_and_foreign_pickle(tmp_path: Path) -> None:
    atomic_torch_save(tmp_path / "checkpoint.pt", {"model": {"w": torch.ones(100)}})
    data = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(RunDirError, match="checkpoint.pt is corrupted"):
        read_checkpoint(tmp_path)
    torch.save({"something": 1}, tmp_path / "checkpoint.pt")
    with pytest.raises(RunDirError, match="not an mpvgbench checkpoint"):
        read_checkpoint(tmp_path)
    assert read_checkpoint(tmp_path / "nothing") is None


def test_result_reader(tmp_path: Path) -> None:
    assert read_result(tmp_path) is None and not is_finished(tmp_path)
    (tmp_path / "result.json").write_text('{"key": "abc", "final_top1": 9')
    with pytest.raises(RunDirError) as err:
        read_result(tmp_path)
    assert "\n" not in str(err.value)
    assert "result.json is corrupted" in str(err.value) and "delete it" in str(err.value)
    assert not is_finished(tmp_path)
    (tmp_path / "result.json").write_text("[1, 2]")
    with pytest.raises(RunDirError, match="expected a JSON object"):
        read_result(tmp_path)
    atomic_write_json(tmp_path / "result.json", {"key": "abc"})
    assert is_finished(tmp_path)


def test_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    assert read_jsonl(path) == []
    atomic_write_jsonl(path, [{"epoch": 1}, {"epoch": 2}])
    assert read_jsonl(path) == [{"epoch": 1}, {"epoch": 2}]
    path.write_text('{"epoch": 1}\n{"epo\n')
    with pytest.raises(RunDirError, match="metrics.jsonl line 2 is corrupted"):
        read_jsonl(path)


def test_job_files_roundtrip(tmp_path: Path) -> None:
    config = _config()
    rd = RunDir(prepare_job(tmp_path, config, data_root="/data", num_workers=2))  # the executor's
    assert read_config(rd.path) == config
    job = read_job(rd.path)
    assert {k: v for k, v in job.items() if k != "source"} == {
        "key": config.key(), "data_root": "/data", "device": "cpu", "num_workers": 2, "download": False,
        "amp": "auto", "compile": "auto", "checkpoint_every_steps": None, "checkpoint_every_min": 10.0,
        "tracking": None, "experiment": "test"}  # no tracker; the spec's name (MLflow's experiment)
    assert json.loads(rd.config.read_text()) == config.model_dump(mode="json")

    rd.job.write_text(json.dumps({"key": "k", "compile": "yes"}))
    with pytest.raises(RunDirError, match="job.json has compile 'yes'; use auto, on or off"):
        read_job(rd.path)
    rd.job.write_text(json.dumps({"key": "k", "device": "tpu"}))
    with pytest.raises(RunDirError, match="device 'tpu'"):
        read_job(rd.path)
    rd.config.write_text(json.dumps({"model": "vit_micro"}))
    with pytest.raises(RunDirError, match="config.json is not a valid TrainConfig"):
        read_config(rd.path)
    os.unlink(rd.config)
    with pytest.raises(RunDirError, match="config.json is missing"):
        read_config(rd.path)


def test_collect_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = collect_env("cpu", 2)
    assert {"host", "torch", "timm", "python", "device", "git_commit", "git_dirty", "num_processes"} <= set(env)
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["num_processes"] == 2
    import subprocess

    package_repo = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                                  capture_output=True, text=True).stdout.strip() or None
    monkeypatch.chdir(tmp_path)  # not a repository: the commit of the repository mpvgbench runs from
    assert collect_env()["git_commit"] == package_repo
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)  # the user's own repository wins
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty",
                    "-m", "x"], cwd=tmp_path, check=True)
    mine = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert collect_env()["git_commit"] == mine and collect_env()["git_dirty"] is False
    monkeypatch.setenv("PATH", "")  # no git binary at all: still no exception
    assert collect_env()["git_dirty"] is None


def test_retire_stale_error_and_leftover_tmp_files(tmp_path: Path) -> None:
    from mpvgbench.rundir import remove_leftover_tmp_files, retire_stale_error

    (tmp_path / "error.json").write_text('{"kind": "oom"}')
    retire_stale_error(tmp_path)
    assert not (tmp_path / "error.json").exists()
    assert json.loads((tmp_path / "error.json.prev").read_text()) == {"kind": "oom"}
    retire_stale_error(tmp_path)  # nothing to retire: no error
    (tmp_path / ".checkpoint.pt.ab12cd.tmp").write_bytes(b"half")
    (tmp_path / "checkpoint.pt").write_bytes(b"whole")
    assert [p.name for p in remove_leftover_tmp_files(tmp_path)] == [".checkpoint.pt.ab12cd.tmp"]
    assert [p.name for p in tmp_path.iterdir()] and (tmp_path / "checkpoint.pt").exists()
    assert not list(tmp_path.glob("*.tmp"))
