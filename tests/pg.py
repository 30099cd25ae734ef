"""A fresh PostgreSQL schema per test on the server CI starts (``scripts/postgres.sh start``)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

PG_ENV = "MPVGBENCH_TEST_POSTGRES_URL"


@contextmanager
def fresh_schema(**query: str) -> Iterator[sa.URL]:
    """The URL of a new, empty schema (its search_path, plus ``query`` parameters such as
    ``statement_timeout``), dropped afterwards: the database's public schema may hold another
    version's tables. Skips the test when no server is configured."""
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"{PG_ENV} is not set (start a server with scripts/postgres.sh start)")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        yield sa.make_url(base).update_query_dict({"options": f"-csearch_path={schema}", **query})
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
