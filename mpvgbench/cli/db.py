"""`mpvgbench db upgrade`: bring a results database written by an older mpvgbench to this schema.

No other command upgrades a database: each refuses an older one in one line that names this
command, so a database shared with an older mpvgbench (a cluster's PostgreSQL) never changes
under it without someone deciding to.
"""

from __future__ import annotations

import click

from mpvgbench.cli.common import cli, db_option, user_errors


@cli.group()
def db() -> None:
    """The results database itself (schema upgrades)."""


@db.command()
@db_option
@user_errors
def upgrade(db: str | None) -> None:
    """Upgrade the results database to this mpvgbench's schema (back it up first).

    \b
    One transaction: it upgrades completely or not at all.
    Example:
      mpvgbench db upgrade --db results.db
    """
    from mpvgbench.store import upgrade_database

    done = upgrade_database(db)
    if done.from_version == done.to_version:
        click.echo(f"{done.where}: schema {done.to_version}, up to date; nothing to do")
    else:
        click.echo(f"{done.where}: upgraded from schema {done.from_version} to {done.to_version}")
