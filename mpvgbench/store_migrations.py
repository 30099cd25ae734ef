"""Which schema a results database has, creating the newest one, and upgrading an older one.

``meta.schema_version`` says which schema a database holds (:data:`SCHEMA_VERSION` is this
code's); Alembic (``mpvgbench/migrations``) holds the ordered upgrades, one revision per version
(revision ``0002`` is schema 2). A database written before Alembic (schema 1) has no
``alembic_version`` table: the upgrade stamps it ``0001`` first. A new database is created from
the live tables and stamped with the newest revision (Alembic's advice: no replay of history).

Nothing here upgrades on its own: an older database is refused with a one-line error naming
``mpvgbench db upgrade``, which calls :func:`upgrade`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mpvgbench import store_schema as S
from mpvgbench.errors import StoreError
from mpvgbench.store_schema import SCHEMA_VERSION

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = "mpvgbench:migrations"  # package resource: shipped inside the wheel
ADVISORY_LOCK = 7243190  # PostgreSQL: one creator or upgrader at a time


class MissingDatabaseError(StoreError):
    """No results database there yet: a missing SQLite file or a database without tables
    (``run --dry-run`` then shows every job as new)."""


@dataclass(frozen=True)
class DatabaseState:
    """What a database holds: no tables at all, mpvgbench's tables of some schema, or neither."""

    tables: frozenset[str]
    version: Optional[int]  # meta.schema_version; None: no mpvgbench schema

    @property
    def empty(self) -> bool:
        return not self.tables


def database_state(conn: Connection) -> DatabaseState:
    tables = frozenset(sa.inspect(conn).get_table_names())
    if "meta" not in tables or "runs" not in tables:
        return DatabaseState(tables, None)
    version = conn.execute(sa.select(S.meta.c.value).where(S.meta.c.name == "schema_version")).scalar()
    try:
        return DatabaseState(tables, None if version is None else int(version))
    except ValueError:
        return DatabaseState(tables, None)


def not_ours(where: str, state: DatabaseState) -> StoreError:
    if state.empty:
        return MissingDatabaseError(f"{where} holds no mpvgbench results (it has no tables); "
                          "run `mpvgbench run SPEC --db ...` first or pass the --db it wrote")
    return StoreError(f"{where} is not an mpvgbench results database (its tables: "
                      f"{', '.join(sorted(state.tables)[:5])}); pass the --db that `mpvgbench run` wrote")


def check_version(where: str, version: int) -> None:
    """A one-line StoreError unless ``version`` is this code's schema."""
    if version > SCHEMA_VERSION:
        raise StoreError(f"{where} was written by a newer mpvgbench (schema {version} > "
                         f"{SCHEMA_VERSION}); upgrade mpvgbench or use another --db")
    if version < SCHEMA_VERSION:
        raise StoreError(f"{where} has schema {version}, this mpvgbench reads schema {SCHEMA_VERSION}; "
                         f"back it up, then run `mpvgbench db upgrade --db {where}`")


def lock_for_schema_change(conn: Connection) -> None:
    """Serialise creators and upgraders (SQLite: the write transaction's lock already does)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK})"))


def create_schema(conn: Connection) -> None:
    """The newest tables in a database without them, stamped with the newest revision."""
    from alembic import command

    S.metadata.create_all(conn)
    conn.execute(sa.insert(S.meta).values(name="schema_version", value=str(SCHEMA_VERSION)))
    command.stamp(alembic_config(conn), "head")


def alembic_config(conn: Connection) -> "Config":
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    config.attributes["connection"] = conn
    return config


def upgrade(conn: Connection, where: str) -> tuple[int, int]:
    """Upgrade an mpvgbench database to this code's schema inside ``conn``'s transaction;
    returns ``(from_version, to_version)`` (equal: nothing to do)."""
    from alembic import command

    lock_for_schema_change(conn)
    state = database_state(conn)
    if state.version is None:
        raise not_ours(where, state)
    if state.version > SCHEMA_VERSION:
        check_version(where, state.version)
    if state.version == SCHEMA_VERSION:
        return state.version, state.version
    config = alembic_config(conn)
    if "alembic_version" not in state.tables:  # written before Alembic: revision NNNN = schema N
        command.stamp(config, f"{state.version:04d}")
    command.upgrade(config, "head")
    after = database_state(conn).version
    assert after == SCHEMA_VERSION, f"the newest revision must set schema {SCHEMA_VERSION}, got {after}"
    return state.version, after
