"""Alembic's entry point: migrate the connection :mod:`mpvgbench.store_migrations` passes in.

There is no ``alembic.ini`` and no URL here: mpvgbench resolves ``--db`` itself and runs every
revision inside its own transaction (SQLite: ``BEGIN IMMEDIATE``), so an upgrade is all or nothing.
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
# render_as_batch: SQLite changes a column by copying its table (Alembic's batch mode)
context.configure(connection=connection, render_as_batch=True)
with context.begin_transaction():  # inside the caller's transaction: a no-op
    context.run_migrations()
