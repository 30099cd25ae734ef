"""Experiment tracking: a run's per-interval metrics also go to TensorBoard, MLflow or W&B.

A spec's ``tracking:`` section (:class:`TrackingSettings`) names the backends; every one is
optional and each is the real library (``pip install 'mpvgbench[tracking]'``)::

    tracking:
      tensorboard: true                             # event files under <run dir>/tensorboard
      mlflow: {uri: http://127.0.0.1:5000}          # experiment = spec name, run = job key
      wandb: {project: mpvg, mode: offline}         # files under <run dir>/wandb

Tracking is operational: it travels in job.json, never in the config, so a tracked run has
the job key of the same run untracked. The worker opens the trackers on rank 0
(:func:`open_tracker`, which logs the config as parameters once); the training loop calls
``log_metrics`` at the end of every interval; the worker closes them. The libraries are
imported only here, and only when a backend is used.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Optional, Protocol

from pydantic import BaseModel, ConfigDict, Field

from mpvgbench.errors import MpvgbenchError

INSTALL_HINT = "pip install 'mpvgbench[tracking]'"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MlflowSettings(_Section):
    uri: str = Field(min_length=1)  # the tracking server (http://host:port) or a store URI
    experiment: Optional[str] = None  # default: the spec's name


class WandbSettings(_Section):
    project: str = Field(min_length=1)
    mode: Literal["offline", "online"] = "offline"  # offline: files only, `wandb sync` later
    entity: Optional[str] = None


class TrackingSettings(_Section):
    tensorboard: bool = False
    mlflow: Optional[MlflowSettings] = None
    wandb: Optional[WandbSettings] = None

    def libraries(self) -> list[str]:
        """The Python modules the chosen backends import."""
        return [module for module, on in (("torch.utils.tensorboard", self.tensorboard),
                                          ("mlflow", self.mlflow), ("wandb", self.wandb)) if on]


class TrackingError(MpvgbenchError):
    """A tracking backend's library is not installed."""


def require_libraries(settings: TrackingSettings) -> None:
    """One line naming the install command when a chosen backend's library is missing."""
    for module in settings.libraries():
        # torch.utils.tensorboard imports, but its SummaryWriter needs the tensorboard package
        needed = "tensorboard" if module == "torch.utils.tensorboard" else module
        if importlib.util.find_spec(needed) is None:
            raise TrackingError(f"tracking.{module.rsplit('.', 1)[-1]} needs the {needed} package, which "
                                f"is not installed; {INSTALL_HINT}, or remove it from the spec")


class Tracker(Protocol):
    """What the training loop talks to: one backend, or several (:class:`Trackers`)."""

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None: ...

    def close(self) -> None: ...


def numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The fields a backend can plot: numbers (not bools, not the step itself)."""
    return {name: float(value) for name, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and name != "epoch"}


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"recipe": {"lr": 0.1}}`` -> ``{"recipe.lr": "0.1"}``: the flat strings backends take."""
    flat: dict[str, str] = {}
    for name, value in params.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = str(value)
    return flat


class TensorBoardTracker:
    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log_params(self, params: Mapping[str, Any]) -> None:
        # the text plugin: one markdown table of the config
        rows = "\n".join(f"| {k} | {v} |" for k, v in flatten(params).items())
        self.writer.add_text("config", f"| field | value |\n|---|---|\n{rows}")

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        for name, value in numeric(metrics).items():
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MlflowTracker:
    """One MLflow run per job, named by its key; a resumed job logs into the run it started."""

    def __init__(self, settings: MlflowSettings, experiment: str, run_name: str) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=settings.uri)
        name = settings.experiment or experiment
        found = self.client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found else self.client.create_experiment(name)
        earlier = self.client.search_runs([experiment_id], f"tags.`mlflow.runName` = '{run_name}'",
                                          max_results=1)
        run = earlier[0] if earlier else self.client.create_run(experiment_id, run_name=run_name)
        self.run_id, self.resumed = run.info.run_id, bool(earlier)
        if self.resumed:
            self.client.update_run(self.run_id, status="RUNNING")

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.resumed:
            return  # MLflow refuses to log a parameter twice; the first attempt logged them
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, v[:6000]) for k, v in flatten(params).items()])

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        import time

        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, stamp, step) for k, v in numeric(metrics).items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbTracker:
    """A W&B run with the job key as its id (``resume="allow"``: a resumed job continues it)."""

    def __init__(self, settings: WandbSettings, run_dir: Path, experiment: str, run_name: str) -> None:
        import wandb

        (run_dir / "wandb").mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=settings.project, entity=settings.entity, mode=settings.mode,
                              dir=str(run_dir), id=run_name, name=run_name, group=experiment,
                              resume="allow",
                              settings=wandb.Settings(console="off", silent=True))

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.run.config.update(dict(params), allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        self.run.log({**numeric(metrics), "epoch": step}, step=step)

    def close(self) -> None:
        import wandb

        self.run.finish()
        # finish() may return before W&B's service process has written the run file out;
        # teardown waits for it (a worker trains one job: nothing else uses the service)
        wandb.teardown()


class Trackers:
    """Several backends as one :class:`Tracker` (none: every call does nothing)."""

    def __init__(self, trackers: Sequence[Tracker] = ()) -> None:
        self.trackers = list(trackers)

    def log_params(self, params: Mapping[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.log_params(params)

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        for tracker in self.trackers:
            tracker.log_metrics(metrics, step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


def open_tracker(settings: TrackingSettings, run_dir: Path, experiment: str, run_name: str,
                 params: Mapping[str, Any]) -> Trackers:
    """The backends ``settings`` names, opened for one job, with ``params`` logged once."""
    require_libraries(settings)
    trackers: list[Tracker] = []
    if settings.tensorboard:
        trackers.append(TensorBoardTracker(run_dir / "tensorboard"))
    if settings.mlflow is not None:
        try:
            trackers.append(MlflowTracker(settings.mlflow, experiment, run_name))
        except Exception as exc:  # MlflowException, requests' errors: the server, not the job
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise TrackingError(f"tracking.mlflow: cannot use {settings.mlflow.uri} ({first}); start the "
                                "server or fix tracking.mlflow.uri") from exc
    if settings.wandb is not None:
        trackers.append(WandbTracker(settings.wandb, run_dir, experiment, run_name))
    tracker = Trackers(trackers)
    tracker.log_params(params)
    return tracker
