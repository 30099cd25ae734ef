"""Where the results database is and how to reach it: URL resolution, PostgreSQL timeouts,
SQLite engines (writing: WAL, ``BEGIN IMMEDIATE``; reading: ``mode=ro``), driver failures as
one line. Kept apart from :mod:`mpvgbench.store` (the tables' logic)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from mpvgbench.errors import StoreError
from mpvgbench.errors import one_line as _one_line  # store.py imports it from here

DEFAULT_DB = "results.db"
ENV_DB = "MPVGBENCH_DB"
PathOrUrl = Union[str, "os.PathLike[str]", None]


def resolve_url(url_or_path: PathOrUrl = None) -> str:
    """None -> ``$MPVGBENCH_DB`` or ``./results.db``; a plain path -> SQLite; a URL as it is."""
    raw = str(url_or_path) if url_or_path is not None else os.environ.get(ENV_DB) or DEFAULT_DB
    if "://" in raw:
        return raw
    if raw == ":memory:":
        return "sqlite://"
    return "sqlite:///" + str(Path(raw).expanduser().absolute())


# A server that accepts connections but never answers (hung, overloaded, a firewall that drops
# packets) would otherwise leave every command silent forever: both timeouts are on by default
# and a URL's query overrides them (?connect_timeout=30&statement_timeout=600).
DEFAULT_CONNECT_TIMEOUT_S = 10
DEFAULT_STATEMENT_TIMEOUT_S = 120


def server_timeouts(url: sa.URL) -> tuple[sa.URL, dict[str, Any]]:
    """The URL without our own query keys, and the DBAPI ``connect_args`` that set the timeouts.

    ``connect_timeout`` is libpq's (whole seconds, the entire connection handshake included);
    ``statement_timeout`` (seconds, or PostgreSQL units like ``500ms``/``5min``) becomes the
    session setting ``-c statement_timeout=...``. Only PostgreSQL through libpq (psycopg,
    psycopg2) gets them; other URLs stay as they are (their drivers name these differently).
    """
    timeouts: dict[str, Any] = {"connect_timeout": None, "statement_timeout": None}
    if url.get_backend_name() != "postgresql" or url.get_driver_name() not in ("psycopg", "psycopg2"):
        return url, {"_timeouts": timeouts}  # libpq's option names; other drivers differ
    query = dict(url.query)
    connect = str(query.pop("connect_timeout", DEFAULT_CONNECT_TIMEOUT_S))
    statement = str(query.pop("statement_timeout", DEFAULT_STATEMENT_TIMEOUT_S))
    if not connect.strip().isdigit():
        raise StoreError(f"connect_timeout={connect!r} in the --db URL is not whole seconds; "
                         "use e.g. ?connect_timeout=30")
    pg_statement = f"{statement}s" if statement.strip().isdigit() else statement.strip()
    timeouts.update(connect_timeout=int(connect), statement_timeout=pg_statement)
    options = str(query.pop("options", ""))
    connect_args: dict[str, Any] = {
        "connect_timeout": int(connect),
        "options": f"{options} -c statement_timeout={pg_statement}".strip(),
        "_timeouts": timeouts,
    }
    return url.set(query=query), connect_args


def store_error(exc: BaseException, where: str, is_sqlite: bool, timeouts: dict[str, Any]) -> StoreError:
    """A driver or database failure as one line that names the fix."""
    text = _one_line(exc, limit=240)
    lowered = text.lower()
    if is_sqlite and any(w in lowered for w in ("malformed", "corrupt")):
        return StoreError(
            f"results database {where} is damaged ({text}); move it aside (or restore a "
            "backup) and rerun: finished run directories are adopted again from the runs dir")
    if not is_sqlite and ("timeout expired" in lowered or "timed out" in lowered):
        return StoreError(
            f"results database {where} did not answer within connect_timeout="
            f"{timeouts['connect_timeout']} s; check that the server is up and reachable, "
            "or raise ?connect_timeout=SECONDS in the --db URL")
    if not is_sqlite and "statement timeout" in lowered:
        return StoreError(
            f"results database {where}: a query ran longer than statement_timeout="
            f"{timeouts['statement_timeout']}; check the server's load and locks, or raise "
            "?statement_timeout=SECONDS in the --db URL")
    return StoreError(
        f"results database {where}: {text}; "
        "check the --db path, its permissions and the database server"
    )


def sqlite_reader_engine(path: str, *, immutable: bool = False) -> sa.Engine:
    """An engine that can only read the SQLite file at ``path`` (``mode=ro`` and ``query_only``):
    a read-only command never writes a byte into a file it was pointed at, not even the WAL
    journal mode that :func:`sqlite_engine` sets.

    ``immutable``: for a WAL database that cannot be opened read-only because its ``-shm`` file
    is missing and cannot be made (a read-only folder or mount): SQLite then reads the file
    without locks, which is right when nothing can write it, and ignores a left-over ``-wal``.
    """
    from urllib.parse import quote

    flag = "immutable=1" if immutable else "mode=ro"
    engine = sa.create_engine(f"sqlite:///file:{quote(path)}?{flag}&uri=true",
                              connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # autocommit: plain reads take no write lock
        cur = dbapi_conn.cursor()
        for pragma in ("busy_timeout = 30000", "query_only = ON"):
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    return engine


def sqlite_file_writable(path: str) -> bool:
    """Whether this process may write the SQLite file and create its ``-wal``/``-shm`` next to it."""
    return os.access(path, os.W_OK) and os.access(os.path.dirname(path) or ".", os.W_OK)


READ_ONLY = "mpvg_read_only"  # execution option of read-only connections: plain BEGIN on SQLite


def sqlite_engine(url: sa.URL) -> Engine:
    """A SQLite engine for concurrent processes: WAL, 30 s busy timeout, foreign keys, and
    ``BEGIN IMMEDIATE`` for every transaction except on connections with :data:`READ_ONLY`
    (the write lock is taken up front, so read-then-write transactions queue on the busy
    timeout instead of failing with "database is locked" when they upgrade)."""
    kw: dict[str, Any] = {"connect_args": {"timeout": 30}}
    if not url.database:
        kw["poolclass"] = sa.pool.StaticPool  # ":memory:": one shared connection
    engine = sa.create_engine(url, **kw)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the driver's own BEGIN off: "begin" below emits it
        cur = dbapi_conn.cursor()
        for pragma in ("busy_timeout = 30000", "journal_mode = WAL", "synchronous = NORMAL",
                       "foreign_keys = ON"):
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        read_only = conn.get_execution_options().get(READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine
