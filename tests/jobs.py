"""Run directories prepared the way an executor prepares them (``executors.base.prepare_run_dir``:
config.json and job.json), for tests that start a worker or ingest a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from mpvgbench.config import TrainConfig
from mpvgbench.executors.base import RunContext, prepare_run_dir
from mpvgbench.matrix import Job

# metrics.jsonl fields that measure time: the only ones two equal runs may differ in
TIMING = frozenset({"epoch_time_s", "eval_time_s", "images_per_s"})


def prepare_job(runs_root: Path, config: TrainConfig, *, data_root: Optional[str] = None,
                **context: Any) -> Path:
    """``runs_root/<key>`` holding the job's config.json and job.json; ``context`` are
    :class:`RunContext` fields (``device`` defaults to cpu)."""
    context.setdefault("device", "cpu")
    roots = {config.dataset: data_root} if data_root else {}
    job = Job(key=config.key(), spec_name="test", config=config)
    return prepare_run_dir(job, RunContext(runs_root=Path(runs_root), data_roots=roots, **context))
