"""Tracking (mpvgbench.tracking): a worker whose job.json names TensorBoard, W&B (offline) or a
real MLflow server logs the config once and every epoch's metrics, read back with each
library's own reader; tracking never changes a job key."""

from __future__ import annotations

import glob
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from mpvgbench import worker
from mpvgbench.matrix import expand
from mpvgbench.rundir import read_jsonl
from mpvgbench.spec import parse_spec
from mpvgbench.tracking import TrackingError, TrackingSettings, flatten, numeric, require_libraries
from tests.jobs import prepare_job
from tests.test_worker import make_config

EPOCHS = 2


def _train(tmp_path: Path, tracking: dict[str, Any]) -> Path:
    config = make_config(epochs=EPOCHS, max_steps_per_epoch=2, eval_max_batches=1)
    run = prepare_job(tmp_path, config, tracking=tracking)
    assert json.loads((run / "job.json").read_text())["tracking"] == tracking
    assert worker.main([str(run)]) == 0
    return run


def _wandb_records(path: Path) -> Iterator[Any]:
    """The records of a W&B offline run file (LevelDB log blocks after a 7-byte ':W&B' header)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, record = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # a block's zero padding
            pos += left
            continue
        record += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, or the last piece of a record
            parsed = wandb_internal_pb2.Record()
            parsed.ParseFromString(record)
            record = b""
            yield parsed


def test_tensorboard_and_wandb_offline_get_every_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_SILENT", "true")
    run = _train(tmp_path, {"tensorboard": True, "wandb": {"project": "mpvg-test", "mode": "offline"}})
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2]

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    for name in ("train_loss", "top1", "lr", "images_per_s"):
        scalars = events.Scalars(name)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([r[name] for r in rows], rel=1e-6)
    assert events.Tags()["tensors"] == ["config/text_summary"]  # the config, once, as text

    (run_file,) = glob.glob(str(run / "wandb" / "offline-run-*" / f"run-{run.name}.wandb"))
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
               for r in _wandb_records(Path(run_file)) if r.WhichOneof("record_type") == "history"]
    assert [h["_step"] for h in history] == [1, 2], [r.WhichOneof("record_type") for r in _wandb_records(Path(run_file))]
    assert [h["train_loss"] for h in history] == pytest.approx([r["train_loss"] for r in rows])
    assert [h["top1"] for h in history] == pytest.approx([r["top1"] for r in rows])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real ``mlflow server`` on a free port with a SQLite store; stopped (its whole process
    group) at the end."""
    pytest.importorskip("mlflow")
    port = _free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    log = open(tmp_path / "mlflow.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--default-artifact-root", str(tmp_path / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2).read()
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "mlflow.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "mlflow server did not come up in 180 s"
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        try:
            os.killpg(server.pid, signal.SIGKILL)  # its uvicorn and job-runner children
        except ProcessLookupError:
            pass
        log.close()


@pytest.mark.slow  # an mlflow server takes ~30 s to start on the 2-core machine
def test_mlflow_server_gets_params_and_every_epoch(tmp_path: Path, mlflow_server: str) -> None:
    from mlflow.tracking import MlflowClient

    run = _train(tmp_path / "runs", {"mlflow": {"uri": mlflow_server}})
    rows = read_jsonl(run / "metrics.jsonl")
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("test")  # tests.jobs names every job's spec "test"
    assert experiment is not None
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == run.name and found.info.status == "FINISHED"
    assert found.data.params["model"] == "vit_micro" and found.data.params["recipe.epochs"] == str(EPOCHS)
    for name in ("train_loss", "top1", "lr", "images_per_s"):
        history = client.get_metric_history(found.info.run_id, name)
        assert sorted((m.step, m.value) for m in history) == [
            (r["epoch"], pytest.approx(r[name])) for r in rows]


def test_tracking_is_not_part_of_the_job_key() -> None:
    doc = {"name": "t", "models": ["vit_micro"], "methods": ["default", "mpvg"], "datasets": ["digits"],
           "seeds": [0, 1]}
    tracked = {**doc, "tracking": {"tensorboard": True, "mlflow": {"uri": "http://127.0.0.1:1"},
                                   "wandb": {"project": "p", "mode": "offline"}}}
    plain_keys = [job.key for job in expand(parse_spec(doc))]
    assert len(set(plain_keys)) == 4
    assert [job.key for job in expand(parse_spec(tracked))] == plain_keys


def test_a_missing_library_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(TrackingError) as caught:
        require_libraries(TrackingSettings(tensorboard=False, wandb={"project": "p"}))
    message = str(caught.value)
    assert "\n" not in message and "wandb" in message and "pip install 'mpvgbench[tracking]'" in message
    require_libraries(TrackingSettings())  # nothing chosen: nothing needed


def test_params_are_flat_strings_and_metrics_numbers() -> None:
    assert flatten({"recipe": {"lr": 0.1, "betas": [0.9, 0.99]}, "seed": 0}) == {
        "recipe.lr": "0.1", "recipe.betas": "[0.9, 0.99]", "seed": "0"}
    assert numeric({"epoch": 3, "train_loss": 1.5, "iteration": 6, "flag": True, "note": "x"}) == {
        "train_loss": 1.5, "iteration": 6.0}


def test_a_resumed_job_logs_into_the_mlflow_run_it_started(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from mpvgbench.tracking import open_tracker

    settings = TrackingSettings(mlflow={"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    for epoch in (1, 2):  # two attempts of one job, each logging one epoch
        tracker = open_tracker(settings, tmp_path, "exp", "0123456789abcdef", {"recipe": {"lr": 0.1}})
        tracker.log_metrics({"epoch": epoch, "train_loss": 3.0 - epoch}, step=epoch)
        tracker.close()
    client = MlflowClient(tracking_uri=settings.mlflow.uri)  # type: ignore[union-attr]
    (found,) = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert found.info.run_name == "0123456789abcdef" and found.data.params == {"recipe.lr": "0.1"}
    history = client.get_metric_history(found.info.run_id, "train_loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 2.0), (2, 1.0)]


def test_an_unreachable_mlflow_server_is_a_user_error_naming_the_uri(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # no back-off: fail at once
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    uri = f"http://127.0.0.1:{_free_port()}"
    config = make_config(epochs=1, max_steps_per_epoch=1, eval_max_batches=1)
    run = prepare_job(tmp_path, config, tracking={"mlflow": {"uri": uri}})
    assert worker.main([str(run)]) == 1
    error = json.loads((run / "error.json").read_text())
    assert error["kind"] == "user" and error["error"].startswith(f"tracking.mlflow: cannot use {uri} (")
    assert not (run / "metrics.jsonl").exists()  # refused before training
