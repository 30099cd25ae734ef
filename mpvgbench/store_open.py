"""Opening the results database: what is there, and the engine a :class:`~mpvgbench.store.Store`
uses for it. Nothing is written to find out what a database holds (a SQLite file is inspected
through a read-only connection), so a command pointed at the wrong file leaves it as it was.

``create`` (``mpvgbench run``): a missing or empty database gets the newest tables. Without it
(the commands that only read) a missing database is a :class:`MissingDatabaseError`, and a
SQLite file this process may not write is read through a read-only engine (``writable`` False).
Another application's database is refused; an older schema is refused with the
``mpvgbench db upgrade`` hint unless ``check_schema`` is off (that upgrade itself).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mpvgbench import store_migrations as M
from mpvgbench.errors import StoreError
from mpvgbench.store_engine import (
    PathOrUrl, _one_line, resolve_url, server_timeouts, sqlite_engine, sqlite_file_writable,
    sqlite_reader_engine, store_error,
)


@dataclass
class OpenedDatabase:
    """An engine and what messages need to say about its database."""

    url: str
    where: str  # the file, or the URL without its password
    is_sqlite: bool
    engine: Optional[Engine] = None
    writable: bool = True  # False: a read-only SQLite file (or folder)
    # PostgreSQL's connect/statement timeouts in effect (None on SQLite), for messages
    timeouts: dict[str, Any] = field(default_factory=lambda: {"connect_timeout": None,
                                                              "statement_timeout": None})

    def error(self, exc: BaseException) -> StoreError:
        return store_error(exc, self.where, self.is_sqlite, self.timeouts)

    @contextmanager
    def one_line_errors(self) -> Iterator[None]:
        """Driver and database failures (locked, unreachable, damaged) as one StoreError line."""
        try:
            yield
        except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DatabaseError) as exc:
            raise self.error(exc) from None


def open_database(url_or_path: PathOrUrl, *, create: bool, check_schema: bool = True) -> OpenedDatabase:
    """The engine of a database known to be mpvgbench's at this schema (see the module docstring)."""
    resolved = resolve_url(url_or_path)
    try:
        url = sa.make_url(resolved)
    except sa.exc.ArgumentError:
        raise StoreError(f"--db {resolved!r} is neither a file path nor a database URL") from None
    is_sqlite = url.get_backend_name() == "sqlite"
    path = url.database if is_sqlite and url.database else None
    db = OpenedDatabase(resolved, path or url.render_as_string(hide_password=True), is_sqlite)
    if path is not None:
        _check_sqlite_path(Path(path), create)
    reader = None
    if path is not None and os.path.isfile(path) and os.path.getsize(path) > 0:
        reader, state = _inspect_sqlite_file(db, path)  # never a byte written to find out
    else:
        db.engine = _make_engine(db, url)
        with db.one_line_errors(), db.engine.connect() as conn:
            state = M.database_state(conn)
    if state.version is None and not (create and (state.empty or not is_sqlite)):
        raise M.not_ours(db.where, state)  # PostgreSQL: other schemas' tables are fine
    if state.version is not None and check_schema:
        M.check_version(db.where, state.version)
    if reader is not None and not create and not sqlite_file_writable(path or ""):
        db.engine, db.writable = reader, False
        return db
    if reader is not None:
        reader.dispose()
        db.engine = _make_engine(db, url)
    if state.version is None:
        _create_schema(db)
    return db


def _check_sqlite_path(path: Path, create: bool) -> None:
    if not create:
        if not path.is_file():
            raise M.MissingDatabaseError(f"no results database at {path}; run `mpvgbench run SPEC` "
                                         "first or pass --db")
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = "a file is in the way" if isinstance(exc, FileExistsError) else exc.strerror
        raise StoreError(f"cannot create the directory {path.parent} of the results database "
                         f"({why}); pass a writable --db") from None


def _inspect_sqlite_file(db: OpenedDatabase, path: str) -> tuple[Engine, M.DatabaseState]:
    """A read-only engine of an existing file and what the file holds."""
    for immutable in (False, True):
        reader = sqlite_reader_engine(path, immutable=immutable)
        try:
            with reader.connect() as conn:
                return reader, M.database_state(conn)
        except sa.exc.OperationalError as exc:
            reader.dispose()
            # a WAL file in a read-only folder: no -shm can be made; read it as immutable
            text = str(exc.orig).lower()
            if immutable or not ("readonly" in text or "unable to open" in text):
                raise db.error(exc) from None
        except sa.exc.DatabaseError as exc:  # e.g. "file is not a database"
            reader.dispose()
            raise db.error(exc) from None
    raise AssertionError("unreachable: the immutable attempt returns or raises")


def _create_schema(db: OpenedDatabase) -> None:
    assert db.engine is not None
    with db.one_line_errors(), db.engine.begin() as conn:  # serialised against concurrent creators
        M.lock_for_schema_change(conn)
        state = M.database_state(conn)
        if state.version is not None:
            return M.check_version(db.where, state.version)
        M.create_schema(conn)


def _make_engine(db: OpenedDatabase, url: sa.URL) -> Engine:
    if db.is_sqlite:
        return sqlite_engine(url)
    url, connect_args = server_timeouts(url)
    db.timeouts = connect_args.pop("_timeouts")
    try:
        return sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    except Exception as exc:  # unknown dialect, missing driver, bad options
        raise StoreError(
            f"cannot open the results database {db.where}: {_one_line(exc)}; use a file "
            "path or a URL like postgresql+psycopg://user:pass@host/db (pip install psycopg)"
        ) from None
