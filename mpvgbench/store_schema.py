"""Tables, row types and portable SQL helpers of the results database (:mod:`mpvgbench.store`).

Times are POSIX seconds (floats) so that SQLite and PostgreSQL compare them the same way.
Every change to the tables is an Alembic revision in ``mpvgbench/migrations/versions/`` and bumps
:data:`SCHEMA_VERSION` (stored in ``meta``): a database written by a newer schema is refused,
an older one is upgraded only by ``mpvgbench db upgrade`` (docs/architecture.md, Store).

A result stores each metric of its task under its own name (``final_top1``/``best_top1`` for
classification, ``final_ap_box``/``final_ap_mask`` for COCO, ``final_miou`` for ADE20K) and
names the primary one in ``primary_metric`` (:mod:`mpvgbench.catalog` ``TASKS``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Union

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mpvgbench.catalog import METRICS, TASKS, TaskInfo
from mpvgbench.errors import MpvgbenchError, short_repr
from mpvgbench.methods import PEMethod

if TYPE_CHECKING:
    from mpvgbench.config import TrainConfig

SCHEMA_VERSION = 2  # 1: main before Alembic; 2: metrics under their own names

STATUSES: tuple[str, ...] = ("pending", "running", "finished", "failed", "cancelled")
FAILURE_KINDS: tuple[str, ...] = ("user", "exception", "nonfinite", "oom", "infra", "timeout", "lost")



class MethodColumn(sa.types.TypeDecorator):
    """The one codec of a method in the database: a PEMethod in Python, its five knobs in JSON."""

    impl = sa.JSON
    cache_ok = True

    def process_bind_param(self, value: Optional[PEMethod], dialect: Any) -> Optional[dict[str, Any]]:
        return None if value is None else value.to_json()

    def process_result_value(self, value: Optional[dict[str, Any]], dialect: Any) -> Optional[PEMethod]:
        return None if value is None else PEMethod.from_json(value)


metadata = sa.MetaData()

meta = sa.Table(
    "meta",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("method_label", sa.String(256), nullable=False),
    sa.Column("method", MethodColumn, nullable=False),  # the five knobs as JSON
    sa.Column("dataset", sa.String(128), nullable=False),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("config", sa.JSON, nullable=False),  # TrainConfig.model_dump(mode="json")
    sa.Column("variant", sa.String(64), nullable=False),  # config_variant(config): seeds grouped
    sa.Column("status", sa.String(16), nullable=False, default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("executor", sa.String(64)),
    sa.Column("owner", sa.String(256)),  # host:pid:uuid of the claiming coordinator
    sa.Column("heartbeat_at", sa.Float),
    sa.Column("external_id", sa.String(128)),  # e.g. a Slurm job id
    sa.Column("host", sa.String(256)),
    sa.Column("git_commit", sa.String(64)),
    sa.Column("git_dirty", sa.Boolean),
    sa.Column("torch_version", sa.String(64)),
    sa.Column("timm_version", sa.String(64)),
    sa.Column("device", sa.String(256)),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("wall_time_s", sa.Float),
    sa.Column("error", sa.Text),
    sa.Column("traceback_tail", sa.Text),
    sa.Column("failure_kind", sa.String(32)),
    sa.Column("run_dir", sa.Text),
    sa.CheckConstraint(f"status IN ({', '.join(repr(s) for s in STATUSES)})", name="ck_runs_status"),
    sa.Index("ix_runs_status", "status"),
    sa.Index("ix_runs_owner", "owner"),
)

run_specs = sa.Table(
    "run_specs",
    metadata,
    sa.Column("key", sa.String(64), sa.ForeignKey("runs.key", ondelete="CASCADE"), primary_key=True),
    sa.Column("spec_name", sa.String(256), primary_key=True),
    sa.Index("ix_run_specs_spec", "spec_name"),
)

metrics = sa.Table(
    "metrics",
    metadata,
    sa.Column("key", sa.String(64), sa.ForeignKey("runs.key", ondelete="CASCADE"), primary_key=True),
    sa.Column("epoch", sa.Integer, primary_key=True),  # primary key = unique (key, epoch)
    sa.Column("train_loss", sa.Float),
    sa.Column("val_loss", sa.Float),
    sa.Column("top1", sa.Float),
    sa.Column("top5", sa.Float),
    sa.Column("lr", sa.Float),
    sa.Column("epoch_time_s", sa.Float),
    sa.Column("images_per_s", sa.Float),
)

results = sa.Table(
    "results",
    metadata,
    sa.Column("key", sa.String(64), sa.ForeignKey("runs.key", ondelete="CASCADE"), primary_key=True),
    sa.Column("primary_metric", sa.String(32), nullable=False, server_default="top1"),
    # final_<metric>, best_<metric> for every metric of every task (NULL: not the run's task)
    *(sa.Column(f"{which}_{name}", sa.Float) for name in METRICS for which in ("final", "best")),
    sa.Column("epochs", sa.Integer),  # dense prediction: evaluations
    sa.Column("extra", sa.JSON),  # everything else in result.json (env, wall_time_s, ...)
)

analysis = sa.Table(
    "analysis",
    metadata,
    sa.Column("key", sa.String(64), sa.ForeignKey("runs.key", ondelete="CASCADE"), primary_key=True),
    sa.Column("name", sa.String(256), primary_key=True),
    sa.Column("value", sa.JSON),
)

METRIC_FIELDS: tuple[str, ...] = (
    "train_loss", "val_loss", "top1", "top5", "lr", "epoch_time_s", "images_per_s",
)
METRIC_COLUMNS: tuple[str, ...] = tuple(f"{which}_{name}" for name in METRICS for which in ("final", "best"))
RESULT_FIELDS: tuple[str, ...] = ("primary_metric", *METRIC_COLUMNS, "epochs")


@dataclass(frozen=True)
class RunIdentity:
    """What names a run: its key and its cell."""

    key: str
    model: str
    method_label: str
    method: PEMethod
    dataset: str
    seed: int


@dataclass(frozen=True)
class RunRow(RunIdentity):
    """One row of ``runs`` plus the specs it belongs to."""

    config: dict[str, Any]
    variant: str
    status: str
    attempts: int
    executor: Optional[str]
    owner: Optional[str]
    heartbeat_at: Optional[float]
    external_id: Optional[str]
    host: Optional[str]
    git_commit: Optional[str]
    git_dirty: Optional[bool]
    torch_version: Optional[str]
    timm_version: Optional[str]
    device: Optional[str]
    created_at: float
    started_at: Optional[float]
    finished_at: Optional[float]
    wall_time_s: Optional[float]
    error: Optional[str]
    traceback_tail: Optional[str]
    failure_kind: Optional[str]
    run_dir: Optional[str]
    specs: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class ResultRow(RunIdentity):
    """A finished run's identity and final numbers: one row of the report's input."""

    variant: str  # runs of one cell with the same variant differ only by seed
    primary_metric: str  # top1, ap_box or miou: what the run's result is
    final_top1: Optional[float]
    best_top1: Optional[float]
    final_top5: Optional[float]
    best_top5: Optional[float]
    final_ap_box: Optional[float]
    best_ap_box: Optional[float]
    final_ap_mask: Optional[float]
    best_ap_mask: Optional[float]
    final_miou: Optional[float]
    best_miou: Optional[float]
    epochs: Optional[int]
    wall_time_s: Optional[float]
    extra: dict[str, Any]

    def metric(self, name: str, which: str = "final") -> Optional[float]:
        """The run's ``which`` ("final" or "best") value of metric ``name`` (None: not measured)."""
        value = getattr(self, f"{which}_{name}", None)
        return None if value is None else float(value)

    def primary(self, which: str = "final") -> Optional[float]:
        return self.metric(self.primary_metric, which)


@dataclass(frozen=True)
class MetricRow:
    """One epoch of ``metrics.jsonl``."""

    key: str
    epoch: int
    train_loss: Optional[float]
    val_loss: Optional[float]
    top1: Optional[float]
    top5: Optional[float]
    lr: Optional[float]
    epoch_time_s: Optional[float]
    images_per_s: Optional[float]


def config_variant(config: dict[str, Any]) -> str:
    """16 hex digits of sha256 over the config without its seed: a run's seed-free identity."""
    rest = {k: v for k, v in config.items() if k != "seed"}
    payload = json.dumps(rest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN/inf replaced by None (PostgreSQL's JSON type rejects them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def finite_or_none(value: Any) -> Optional[float]:
    """A float column value: numbers pass, NaN/inf/non-numbers become None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# ------------------------------------------------------------------------- portable SQL helpers

CHUNK = 500  # keys per IN (...) list: far below SQLite's and PostgreSQL's bound-parameter limits


def chunks(keys: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(keys), CHUNK):
        yield keys[i : i + CHUNK]


def select_keys(conn: Connection, stmt: sa.Select, keys: Optional[Iterable[str]]) -> list[sa.Row]:
    """Rows of ``stmt`` (a select over ``runs``), limited to ``keys`` when given."""
    if keys is None:
        return list(conn.execute(stmt))
    key_list = sorted(set(keys))
    return [row for part in chunks(key_list) for row in conn.execute(stmt.where(runs.c.key.in_(part)))]


def upsert(conn: Connection, table: sa.Table, rows: list[dict[str, Any]], index: Sequence[str],
           update: Sequence[str] = ()) -> None:
    """Insert ``rows``; on a conflict on ``index`` update the ``update`` columns (none: keep the row).

    One executemany with ON CONFLICT on SQLite and PostgreSQL (race-free between processes);
    row by row on any other database. Rows with the same index are collapsed (last wins).
    """
    rows = list({tuple(row[c] for c in index): row for row in rows}.values())
    if not rows:
        return
    name = conn.dialect.name
    if name in ("sqlite", "postgresql"):
        if name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        stmt = insert(table)
        if update:
            stmt = stmt.on_conflict_do_update(
                index_elements=list(index), set_={c: stmt.excluded[c] for c in update}
            )
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=list(index))
        conn.execute(stmt, rows)
        return
    for row in rows:
        cond = [table.c[c] == row[c] for c in index]
        if conn.execute(sa.select(sa.literal(1)).select_from(table).where(*cond)).first() is None:
            conn.execute(sa.insert(table).values(**row))
        elif update:
            conn.execute(sa.update(table).where(*cond).values({c: row[c] for c in update}))


def filter_runs(stmt: sa.Select, *, spec_name: Optional[str] = None,
                status: Union[str, Iterable[str], None] = None) -> sa.Select:
    """``stmt`` (over ``runs``) limited to a spec's runs and/or some statuses."""
    if spec_name is not None:
        linked = sa.select(run_specs.c.key).where(run_specs.c.spec_name == spec_name)
        stmt = stmt.where(runs.c.key.in_(linked))
    if status is not None:
        wanted = [status] if isinstance(status, str) else list(status)
        unknown = sorted(set(wanted) - set(STATUSES))
        if unknown:
            raise MpvgbenchError(f"unknown status {', '.join(unknown)}; use {', '.join(STATUSES)}")
        stmt = stmt.where(runs.c.status.in_(wanted))
    return stmt


# ------------------------------------------------------------------------------- row builders

def run_row(key: str, cfg: "TrainConfig", now: float) -> dict[str, Any]:
    """A new, pending ``runs`` row for a job."""
    config = cfg.model_dump(mode="json")
    return {
        "key": key, "model": cfg.model, "method_label": cfg.method.label,
        "method": cfg.method, "dataset": cfg.dataset, "seed": cfg.seed, "config": config,
        "variant": config_variant(config), "status": "pending", "attempts": 0, "created_at": now,
    }


def metric_rows(key: str, lines: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``metrics`` rows from metrics.jsonl lines (a line without an epoch is skipped)."""
    by_epoch = {int(m["epoch"]): m for m in lines if m.get("epoch") is not None}
    return [{"key": key, "epoch": e, **{f: finite_or_none(m.get(f)) for f in METRIC_FIELDS}}
            for e, m in sorted(by_epoch.items())]


def result_task(result: Mapping[str, Any]) -> Optional[TaskInfo]:
    """The task whose primary metric a result.json names (none named: classification's top-1)."""
    primary = result.get("primary_metric", "top1")
    return next((t for t in TASKS.values() if t.primary_metric == primary), None)


def result_row(key: str, result: Mapping[str, Any]) -> dict[str, Any]:
    """The ``results`` row of a valid result.json: its task's metrics in their own columns, the
    rest in ``extra``. A dense run's result.json also repeats its primary metric as
    ``final_top1``/``best_top1`` (the run-directory contract of schema 1): that is no top-1 and
    is not stored as one."""
    task = result_task(result)
    assert task is not None, "result_problem() accepts no unknown primary metric"
    row: dict[str, Any] = {"primary_metric": task.primary_metric}
    for name in METRICS:
        for which in ("final", "best"):
            row[f"{which}_{name}"] = finite_or_none(result.get(f"{which}_{name}")) if name in task.metrics else None
    epochs = finite_or_none(result.get("epochs"))
    row["epochs"] = None if epochs is None else int(epochs)
    stored = {*RESULT_FIELDS, *METRICS, "key"}  # a bare "miou" repeats final_miou
    extra = {k: v for k, v in result.items() if k not in stored}
    return {"key": key, **row, "extra": json_safe(extra)}


def result_problem(result: Any) -> Optional[str]:
    """Why a result.json cannot count as a result (None when it can): a schema check, so that
    ``{}``, NaN or 1e308 accuracies, or a non-object ``env`` never become a finished run."""
    if not isinstance(result, Mapping):
        return f"expected a JSON object, got {type(result).__name__}"
    task = result_task(result)
    if task is None:
        known = ", ".join(t.primary_metric for t in TASKS.values())
        return f"primary_metric must be one of {known}, got {short_repr(result.get('primary_metric'))}"
    for name in METRIC_COLUMNS:
        value = result.get(name)
        if value is None and name in (f"final_{task.primary_metric}", f"best_{task.primary_metric}"):
            return f"{name} is missing"
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or not 0 <= value <= 100):
            return f"{name} must be a percentage in [0, 100], got {short_repr(value)}"
    epochs = result.get("epochs")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int)
                               or not 0 <= epochs <= 1_000_000):
        return f"epochs must be a whole number of epochs, got {short_repr(epochs)}"
    wall = result.get("wall_time_s")
    if wall is not None and (isinstance(wall, bool) or not isinstance(wall, (int, float))
                             or not math.isfinite(wall) or wall < 0):
        return f"wall_time_s must be a duration in seconds, got {short_repr(wall)}"
    env = result.get("env")
    if env is not None and not isinstance(env, Mapping):
        return f"env must be an object, got {type(env).__name__}"
    return None


def finished_values(result: Mapping[str, Any], mtime: float) -> dict[str, Any]:
    """``runs`` columns of a finished run, from result.json (and its mtime)."""
    env = result.get("env") or {}
    dirty = env.get("git_dirty")
    return {
        "status": "finished", "finished_at": mtime,
        "wall_time_s": finite_or_none(result.get("wall_time_s")),
        "host": env.get("host"), "git_commit": env.get("git_commit"),
        "git_dirty": None if dirty is None else bool(dirty),
        "torch_version": env.get("torch"), "timm_version": env.get("timm"),
        "device": env.get("device"), "error": None, "traceback_tail": None, "failure_kind": None,
    }


def failed_values(error: Optional[str], traceback_tail: Optional[str], kind: Optional[str],
                  finished_at: float) -> dict[str, Any]:
    """``runs`` columns of a failed attempt: a one-line error, the traceback's last 8000 chars."""
    return {
        "status": "failed", "finished_at": finished_at,
        "error": " ".join(str(error or "").split())[:1000] or "unknown error",
        "traceback_tail": str(traceback_tail or "")[-8000:] or None,
        "failure_kind": str(kind or "exception"),
    }
