"""Alembic migrations of the results database (``mpvgbench db upgrade``; docs/architecture.md).

``env.py`` runs on the connection that :mod:`mpvgbench.store_migrations` hands it; each file in
``versions/`` is one schema version, in order. A revision never imports the live tables of
:mod:`mpvgbench.store_schema` (they move on): it names the columns it touches itself.
"""
