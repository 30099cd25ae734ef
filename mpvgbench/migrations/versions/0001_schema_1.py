"""Schema 1: the tables of mpvgbench before Alembic (main up to 4cd2a4b).

A database written then has these tables and ``meta.schema_version = 1`` but no
``alembic_version`` table: ``mpvgbench db upgrade`` stamps it with this revision first.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATUSES = ("pending", "running", "finished", "failed", "cancelled")


def _key(primary: bool = True) -> sa.Column:
    return sa.Column("key", sa.String(64), sa.ForeignKey("runs.key", ondelete="CASCADE"), primary_key=primary)


def upgrade() -> None:
    op.create_table("meta", sa.Column("name", sa.String(64), primary_key=True),
                    sa.Column("value", sa.Text, nullable=False))
    op.create_table(
        "runs",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("method_label", sa.String(256), nullable=False),
        sa.Column("method", sa.JSON, nullable=False),
        sa.Column("dataset", sa.String(128), nullable=False),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("variant", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("executor", sa.String(64)),
        sa.Column("owner", sa.String(256)),
        sa.Column("heartbeat_at", sa.Float),
        sa.Column("external_id", sa.String(128)),
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
    )
    op.create_index("ix_runs_status", "runs", ["status"])
    op.create_index("ix_runs_owner", "runs", ["owner"])
    op.create_table("run_specs", _key(), sa.Column("spec_name", sa.String(256), primary_key=True))
    op.create_index("ix_run_specs_spec", "run_specs", ["spec_name"])
    op.create_table(
        "metrics", _key(), sa.Column("epoch", sa.Integer, primary_key=True),
        *(sa.Column(name, sa.Float) for name in
          ("train_loss", "val_loss", "top1", "top5", "lr", "epoch_time_s", "images_per_s")),
    )
    op.create_table(
        "results", _key(),
        *(sa.Column(name, sa.Float) for name in ("final_top1", "best_top1", "final_top5", "best_top5")),
        sa.Column("epochs", sa.Integer), sa.Column("extra", sa.JSON),
    )
    op.create_table("analysis", _key(), sa.Column("name", sa.String(256), primary_key=True),
                    sa.Column("value", sa.JSON))
    op.bulk_insert(sa.table("meta", sa.column("name"), sa.column("value")),
                   [{"name": "schema_version", "value": "1"}])


def downgrade() -> None:
    for table in ("analysis", "results", "metrics", "run_specs", "runs", "meta"):
        op.drop_table(table)
