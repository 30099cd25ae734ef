"""The results database: runs, their claims and status, per-epoch metrics and final results.

``Store(url_or_path)`` opens (and on first use creates) a SQLite file or any SQLAlchemy URL
(PostgreSQL: ``postgresql+psycopg://user:pass@host:port/db``); ``Store(..., create=False)``
never creates, upgrades or converts one (:mod:`mpvgbench.store_open`; schema upgrades only
through :func:`upgrade_database`, :mod:`mpvgbench.store_migrations`). Only the coordinating process
writes it; workers write run directories, which :meth:`Store.ingest_run_dir` folds in
idempotently. Status lifecycle::

    pending --claim--> running --ingest(result.json)--> finished --reset (--force)--> pending
                         |-- ingest(error.json) / mark_failed --> failed --reset_failed--> pending
                         |-- release (Ctrl-C) --> pending
                         '-- mark_cancelled --> cancelled --reset_failed--> pending

A ``running`` row whose heartbeat is older than ``stale_after_s`` belongs to a dead coordinator
and can be claimed again. Failed and cancelled runs are never results.

SQLite: WAL journal, 30 s busy timeout, and every write transaction starts with
``BEGIN IMMEDIATE``: it takes the write lock up front, so read-then-write transactions of
concurrent processes queue instead of failing with "database is locked". WAL needs a local
filesystem: on a cluster only the submitting process should write a SQLite file.

PostgreSQL: a 10 s connect timeout and a 120 s statement timeout unless the URL's query sets
``connect_timeout`` / ``statement_timeout``; either firing is a one-line StoreError naming it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Protocol, Union

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from mpvgbench import store_migrations as M
from mpvgbench import store_schema as S
from mpvgbench.store_schema import (
    SCHEMA_VERSION, STATUSES, MetricRow, ResultRow, RunRow, chunks, select_keys, upsert,
)

if TYPE_CHECKING:
    from mpvgbench.config import TrainConfig

from mpvgbench.store_engine import (  # noqa: E402, F401 - re-exported: where the database is
    DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_DB, DEFAULT_STATEMENT_TIMEOUT_S, ENV_DB, PathOrUrl, _one_line,
    READ_ONLY, resolve_url, server_timeouts, store_error)
from mpvgbench.store_open import open_database  # noqa: E402


from mpvgbench.errors import RunDirError, StoreError  # noqa: E402 - re-exported


class JobLike(Protocol):
    """What :meth:`Store.register_jobs` needs of a ``mpvgbench.matrix.Job``."""

    @property
    def key(self) -> str: ...

    @property
    def config(self) -> "TrainConfig": ...


class Store:
    """Runs, claims, metrics and results in one SQL database. See the module docstring."""

    def __init__(self, url_or_path: PathOrUrl = None, *, create: bool = True,
                 check_schema: bool = True) -> None:
        """``create``: make the tables in a new or empty database (``mpvgbench run``). Without it
        (``report``, ``status``, ``logs``, ``analyze``, ``run --dry-run``) a missing database is a
        one-line error, and a SQLite file this process cannot write is opened read-only
        (:attr:`writable` False). A database that is not mpvgbench's is refused before anything
        touches it; an older schema is refused with the ``mpvgbench db upgrade`` hint
        (``check_schema=False``: opened anyway, for that upgrade)."""
        self._db = open_database(url_or_path, create=create, check_schema=check_schema)
        self.url = self._db.url
        #: where the database is, for messages (the file, or the URL without its password)
        self.where: str = self._db.where
        self.is_sqlite = self._db.is_sqlite
        #: False: a read-only SQLite file (or folder); every write raises StoreError
        self.writable = self._db.writable
        assert self._db.engine is not None
        self._engine: Engine = self._db.engine
        self._reader = self._engine.execution_options(**{READ_ONLY: True})

    @property
    def timeouts(self) -> dict[str, Any]:
        """PostgreSQL's connect/statement timeouts in effect (None on SQLite), for messages."""
        return self._db.timeouts

    # ----------------------------------------------------------------------------- plumbing

    def _fail(self, exc: BaseException) -> StoreError:
        return self._db.error(exc)

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction (``BEGIN IMMEDIATE`` on SQLite)."""
        if not self.writable:
            raise StoreError(f"{self.where} is read-only here (file or folder permissions); "
                             "this command needs to write it: run it where the file is writable")
        with self._db.one_line_errors(), self._engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._db.one_line_errors(), self._reader.connect() as conn:
            yield conn

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.where!r})"

    # ------------------------------------------------------------------------- registration

    def register_jobs(self, jobs: Iterable[JobLike], spec_name: str) -> None:
        """Insert a pending row for every job not stored yet; link all of them to ``spec_name``.
        """
        now = time.time()
        jobs = list(jobs)
        rows = [S.run_row(job.key, job.config, now)
                for job in jobs]
        links = [{"key": job.key, "spec_name": spec_name} for job in jobs]
        with self._write() as conn:
            upsert(conn, S.runs, rows, ["key"])
            upsert(conn, S.run_specs, links, ["key", "spec_name"])

    # ------------------------------------------------------------------------------- claims

    def claim(self, key: str, owner: str, *, stale_after_s: float,
              executor: Optional[str] = None, run_dir: Optional[str] = None,
              dead_owner: Optional[str] = None) -> bool:
        """Atomically take ``key`` for ``owner``. Succeeds iff the run is pending, or running with
        a heartbeat older than ``stale_after_s`` (its coordinator died), or running under
        ``dead_owner`` (a coordinator the caller knows is dead, e.g. a gone pid on this host).
        Sets running, owner, heartbeat and started_at; ``attempts`` counts claims (a release
        does not undo one)."""
        now, r = time.time(), S.runs.c
        stale = sa.or_(r.heartbeat_at.is_(None), r.heartbeat_at < now - stale_after_s)
        if dead_owner is not None:
            stale = sa.or_(stale, r.owner == dead_owner)
        claimable = sa.or_(r.status == "pending", sa.and_(r.status == "running", stale))
        with self._read() as conn:  # lock-free pre-check: most failed claims never take the lock
            if conn.execute(sa.select(r.key).where(r.key == key, claimable)).first() is None:
                return False
        values: dict[str, Any] = dict(
            status="running", owner=owner, heartbeat_at=now, started_at=now, finished_at=None,
            attempts=r.attempts + 1, external_id=None, error=None, traceback_tail=None,
            failure_kind=None,
        )
        if executor is not None:
            values["executor"] = executor
        if run_dir is not None:
            values["run_dir"] = str(run_dir)
        with self._write() as conn:
            res = conn.execute(sa.update(S.runs).where(r.key == key, claimable).values(**values))
        return res.rowcount == 1

    def heartbeat(self, owner: str, keys: Optional[Iterable[str]] = None) -> int:
        """Refresh the heartbeat of ``owner``'s running runs (all, or ``keys``). Returns how many
        it still holds: fewer than asked means some were cancelled or reclaimed."""
        r = S.runs.c
        stmt = sa.update(S.runs).where(r.owner == owner, r.status == "running")
        stmt = stmt.values(heartbeat_at=time.time())
        with self._write() as conn:
            if keys is None:
                return conn.execute(stmt).rowcount
            return sum(conn.execute(stmt.where(r.key.in_(part))).rowcount
                       for part in chunks(list(keys)))

    def _update(self, key: str, values: dict[str, Any], owner: Optional[str] = None,
                statuses: Optional[Sequence[str]] = None) -> bool:
        r = S.runs.c
        cond = [r.key == key]
        if statuses is not None:
            cond.append(r.status.in_(statuses))
        if owner is not None:
            cond.append(r.owner == owner)
        with self._write() as conn:
            return conn.execute(sa.update(S.runs).where(*cond).values(**values)).rowcount == 1

    def release(self, key: str, owner: str) -> bool:
        """Give a running claim back (e.g. on Ctrl-C): the run is pending again."""
        return self._update(key, dict(status="pending", owner=None, heartbeat_at=None,
                                      started_at=None, external_id=None), owner, ["running"])

    def mark_failed(self, key: str, owner: Optional[str], error: str,
                    traceback_tail: Optional[str] = None, kind: str = "exception") -> bool:
        """Record a failed attempt of a run ``owner`` holds (owner None: whoever holds it).
        False when the run is no longer held (cancelled, reclaimed, already finished)."""
        values = S.failed_values(error, traceback_tail, kind, time.time())
        return self._update(key, values, owner, ["running", "pending"])

    def mark_cancelled(self, keys: Union[str, Iterable[str]], owner: Optional[str] = None) -> int:
        """Cancel pending/running runs (only ``owner``'s if given); returns how many changed."""
        key_list = [keys] if isinstance(keys, str) else list(keys)
        r, n = S.runs.c, 0
        with self._write() as conn:
            for part in chunks(key_list):
                stmt = sa.update(S.runs).where(r.key.in_(part), r.status.in_(["pending", "running"]))
                if owner is not None:
                    stmt = stmt.where(r.owner == owner)
                n += conn.execute(stmt.values(status="cancelled", finished_at=time.time())).rowcount
        return n

    def set_external_id(self, key: str, external_id: Optional[str], *,
                        executor: Optional[str] = None) -> None:
        """Remember where a run executes (a Slurm job id, a pid)."""
        values: dict[str, Any] = {"external_id": None if external_id is None else str(external_id)}
        self._update(key, values if executor is None else {**values, "executor": executor})

    def set_run_dir(self, key: str, run_dir: str, *, executor: Optional[str] = None) -> None:
        """Remember a run's directory (and the executor that launches it)."""
        values: dict[str, Any] = {"run_dir": str(run_dir)}
        self._update(key, values if executor is None else {**values, "executor": executor})

    def reset(self, keys: Iterable[str], *,
              statuses: Sequence[str] = ("finished", "failed", "cancelled")) -> list[str]:
        """Put runs in ``statuses`` back to pending (``--force``: finished ones too) and drop
        their results. Returns the keys reset. The run directories are not touched: a stale
        result.json there is ingested again unless the caller removes it."""
        r, done = S.runs.c, []
        with self._write() as conn:
            for part in chunks(sorted(set(keys))):
                where = [r.key.in_(part), r.status.in_(list(statuses))]
                found = [k for (k,) in conn.execute(sa.select(r.key).where(*where))]
                if not found:
                    continue
                conn.execute(sa.update(S.runs).where(*where).values(
                    status="pending", owner=None, heartbeat_at=None, external_id=None,
                    started_at=None, finished_at=None, error=None, traceback_tail=None,
                    failure_kind=None))
                conn.execute(sa.delete(S.results).where(S.results.c.key.in_(found)))
                done += found
        return done

    def reset_failed(self, keys: Optional[Iterable[str]] = None, *, spec_name: Optional[str] = None,
                     include_cancelled: bool = True) -> list[str]:
        """Put failed (and cancelled) runs back to pending, for ``--retry-failed``; limited to
        ``keys`` and/or ``spec_name`` when given. Returns the keys reset."""
        statuses = ["failed", "cancelled"] if include_cancelled else ["failed"]
        stmt = S.filter_runs(sa.select(S.runs.c.key), spec_name=spec_name, status=statuses)
        with self._read() as conn:
            todo = [row.key for row in select_keys(conn, stmt, keys)]
        return self.reset(todo, statuses=statuses)

    # ------------------------------------------------------------------------------- ingest

    def ingest_run_dir(self, run_dir: Union[str, "os.PathLike[str]"]) -> str:
        """Fold a run directory into the database; returns the run's status afterwards.

        ``result.json`` -> finished (results row, env columns). Else ``error.json`` -> failed,
        applied to a running or failed row or to a row this call creates from ``config.json``
        (next to a pending row it is a previous attempt's, already reset). ``metrics.jsonl``
        replaces the run's metrics. Idempotent: a second call writes the same values (times are
        the files' mtimes). A corrupted file raises ``mpvgbench.rundir.RunDirError``.
        """
        from mpvgbench import rundir

        rd = rundir.RunDir(Path(run_dir).absolute())
        key = rd.path.name
        try:
            result = rundir.read_result(rd.path)
            problem = None if result is None else S.result_problem(result)
        except RunDirError as exc:
            result, problem = None, str(exc)
        if problem is not None:
            # Damaged or forged: never a result. Recorded as a failure that names the file; the
            # next attempt (--retry-failed) sets the file aside and trains again.
            result = None
            error: Optional[dict[str, Any]] = {
                "error": f"{rd.result} is not a valid result ({problem}); rerun with --retry-failed to retrain",
                "kind": "exception"}
            error_mtime = time.time()
        else:
            error = rundir.read_json(rd.error, missing_ok=True) if result is None else None
            error_mtime = rd.error.stat().st_mtime if error is not None else 0.0
        metric_rows = S.metric_rows(key, rundir.read_jsonl(rd.metrics))
        if result is not None and result.get("key", key) != key:
            raise StoreError(f"{rd.result} is for run {result['key']}, not {key}; "
                             "a run directory must be named by its key")
        r, m = S.runs.c, S.metrics.c
        with self._write() as conn:
            status = conn.execute(sa.select(r.status).where(r.key == key)).scalar()
            created = status is None
            if created:
                if not rd.config.exists():
                    raise StoreError(f"{rd.path} is no run of {self.where} and has no config.json; "
                                     "pass a run directory written by mpvgbench")
                cfg = rundir.read_config(rd.path)
                if cfg.key() != key:
                    raise StoreError(f"{rd.config} is the config of run {cfg.key()}, not {key}; "
                                     "a run directory must be named by its key")
                conn.execute(sa.insert(S.runs).values(**S.run_row(key, cfg, time.time())))
                status = "pending"
            values: dict[str, Any] = {"run_dir": str(rd.path)}
            if metric_rows:
                upsert(conn, S.metrics, metric_rows, ["key", "epoch"], update=S.METRIC_FIELDS)
                epochs = [row["epoch"] for row in metric_rows]
                conn.execute(sa.delete(S.metrics).where(m.key == key, m.epoch.notin_(epochs)))
            if result is not None:
                values.update(S.finished_values(result, rd.result.stat().st_mtime))
                upsert(conn, S.results, [S.result_row(key, result)], ["key"],
                       update=[*S.RESULT_FIELDS, "extra"])
            elif error is not None and (created or status in ("running", "failed")):
                values.update(S.failed_values(error.get("error"), error.get("traceback_tail"),
                                              error.get("kind"), error_mtime))
            conn.execute(sa.update(S.runs).where(r.key == key).values(**values))
            return str(values.get("status", status))

    # ------------------------------------------------------------------------------ queries

    def runs(self, spec_name: Optional[str] = None, status: Union[str, Iterable[str], None] = None,
             keys: Optional[Iterable[str]] = None) -> list[RunRow]:
        """Runs with their specs, filtered by spec, status(es) and keys when given; by key."""
        stmt = S.filter_runs(sa.select(S.runs), spec_name=spec_name, status=status)
        with self._read() as conn:
            rows = select_keys(conn, stmt, keys)
            specs: dict[str, list[str]] = {}
            for key, name in conn.execute(sa.select(S.run_specs.c.key, S.run_specs.c.spec_name)):
                specs.setdefault(key, []).append(name)
        out = [RunRow(**row._mapping, specs=tuple(sorted(specs.get(row.key, ())))) for row in rows]
        return sorted(out, key=lambda run: run.key)

    def results_frame(self, spec_name: Optional[str] = None, *, dataset: Optional[str] = None,
                      model: Optional[str] = None,
                      keys: Optional[Iterable[str]] = None) -> list[ResultRow]:
        """Finished runs joined with their results, in one query (failed runs never appear)."""
        r, x = S.runs.c, S.results.c
        stmt = sa.select(
            r.key, r.model, r.method_label, r.method, r.dataset, r.seed, r.variant,
            *(S.results.c[f] for f in S.RESULT_FIELDS), r.wall_time_s, x.extra,
        ).join_from(S.runs, S.results, r.key == x.key).where(r.status == "finished")
        stmt = S.filter_runs(stmt, spec_name=spec_name)
        if dataset is not None:
            stmt = stmt.where(r.dataset == dataset)
        if model is not None:
            stmt = stmt.where(r.model == model)
        with self._read() as conn:
            rows = select_keys(conn, stmt.order_by(r.key), keys)
        return [ResultRow(**{**row._mapping, "extra": row.extra or {}}) for row in rows]

    def statuses(self, keys: Iterable[str]) -> dict[str, str]:
        """``{key: status}`` of the stored runs among ``keys``."""
        stmt = sa.select(S.runs.c.key, S.runs.c.status)
        with self._read() as conn:
            return {row.key: row.status for row in select_keys(conn, stmt, keys)}

    def keys_with_prefix(self, prefix: str) -> list[str]:
        """Stored keys that start with ``prefix`` (a user-typed short key), sorted."""
        stmt = sa.select(S.runs.c.key).where(S.runs.c.key.startswith(prefix, autoescape=True))
        with self._read() as conn:
            return sorted(conn.execute(stmt).scalars())

    def failure(self, key: str) -> Optional[dict[str, Any]]:
        """``{"error", "kind", "traceback_tail", "attempts"}`` of a failed run; None otherwise."""
        r = S.runs.c
        stmt = sa.select(r.error, r.failure_kind, r.traceback_tail, r.attempts).where(
            r.key == key, r.status == "failed")
        with self._read() as conn:
            row = conn.execute(stmt).first()
        if row is None:
            return None
        return {"error": row.error, "kind": row.failure_kind, "traceback_tail": row.traceback_tail,
                "attempts": row.attempts}

    def status_counts(self, spec_name: Optional[str] = None) -> dict[str, int]:
        """``{status: count}`` for every status, zeros included."""
        stmt = S.filter_runs(sa.select(S.runs.c.status, sa.func.count()), spec_name=spec_name)
        counts = dict.fromkeys(STATUSES, 0)
        with self._read() as conn:
            counts.update({s: int(n) for s, n in conn.execute(stmt.group_by(S.runs.c.status))})
        return counts

    def metrics(self, key: str) -> list[MetricRow]:
        """Per-epoch metrics of one run, by epoch."""
        stmt = sa.select(S.metrics).where(S.metrics.c.key == key).order_by(S.metrics.c.epoch)
        with self._read() as conn:
            return [MetricRow(**row._mapping) for row in conn.execute(stmt)]

    def add_analysis(self, key: str, values: Mapping[str, Any]) -> None:
        """Store (or overwrite) named, JSON-serialisable analysis values of a run."""
        rows = [{"key": key, "name": str(k), "value": S.json_safe(v)} for k, v in values.items()]
        with self._write() as conn:
            if conn.execute(sa.select(S.runs.c.key).where(S.runs.c.key == key)).first() is None:
                raise StoreError(f"no run {key} in {self.where}; analyse a stored run")
            upsert(conn, S.analysis, rows, ["key", "name"], update=["value"])

    def analysis(self, key: Optional[str] = None) -> dict[str, dict[str, Any]]:
        """``{key: {name: value}}`` of the stored analysis values (of one run if ``key``)."""
        stmt = sa.select(S.analysis)
        if key is not None:
            stmt = stmt.where(S.analysis.c.key == key)
        out: dict[str, dict[str, Any]] = {}
        with self._read() as conn:
            for row in conn.execute(stmt):
                out.setdefault(row.key, {})[row.name] = row.value
        return out


class SchemaUpgrade(NamedTuple):
    where: str  # the file, or the URL without its password
    from_version: int
    to_version: int  # equal to from_version: it was up to date


def upgrade_database(url_or_path: PathOrUrl = None) -> SchemaUpgrade:
    """Upgrade an mpvgbench database to this code's schema in one transaction (``mpvgbench db
    upgrade``)."""
    with Store(url_or_path, create=False, check_schema=False) as store, store._write() as conn:
        return SchemaUpgrade(store.where, *M.upgrade(conn, store.where))


__all__ = [
    "SCHEMA_VERSION", "STATUSES", "JobLike", "MetricRow", "ResultRow", "RunRow", "Store",
    "SchemaUpgrade", "StoreError", "resolve_url", "upgrade_database",
]
