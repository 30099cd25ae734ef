"""Schema 2: each result metric under its own name, and the primary one named.

Schema 1 stored a dense-prediction run's primary metric (COCO: AP box x100; ADE20K: mIoU x100)
in ``final_top1``/``best_top1`` and its other numbers in ``extra``. Now ``results`` has
``final_<m>``/``best_<m>`` for m in top1, top5, ap_box, ap_mask, miou and ``primary_metric``; a
dense run's ``final_top1`` is NULL (it never was a top-1). The values move, none changes.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# what schema 1's dense trainer wrote in result.json (and so in results.extra), by primary metric
DENSE_METRICS = {"ap_box": ("ap_box", "ap_mask"), "miou": ("miou",)}
NEW_METRICS = ("ap_box", "ap_mask", "miou")
CLASSIFICATION = ("final_top1", "best_top1", "final_top5", "best_top5")


def _results(*names: str) -> sa.TableClause:
    return sa.table("results", sa.column("key"), sa.column("extra", sa.JSON),
                    *(sa.column(name) for name in names))


def _set_version(version: int) -> None:
    meta = sa.table("meta", sa.column("name"), sa.column("value"))
    op.execute(meta.update().where(meta.c.name == "schema_version").values(value=str(version)))


def _number(value: Any) -> Any:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def upgrade() -> None:
    op.add_column("results", sa.Column("primary_metric", sa.String(32), nullable=False, server_default="top1"))
    for name in NEW_METRICS:
        op.add_column("results", sa.Column(f"final_{name}", sa.Float))
        op.add_column("results", sa.Column(f"best_{name}", sa.Float))
    columns = [f"{which}_{name}" for name in NEW_METRICS for which in ("final", "best")]
    results = _results("primary_metric", *CLASSIFICATION, *columns)
    conn = op.get_bind()
    for key, extra in conn.execute(sa.select(results.c.key, results.c.extra)).all():
        primary = (extra or {}).get("primary_metric")
        if primary not in DENSE_METRICS:
            continue  # classification: top-1 already is where it belongs
        values: dict[str, Any] = {"primary_metric": primary, **dict.fromkeys(CLASSIFICATION)}
        moved = {"primary_metric"}
        for name in DENSE_METRICS[primary]:
            for which in ("final", "best"):
                values[f"{which}_{name}"] = _number(extra.get(f"{which}_{name}", extra.get(name)))
                moved.add(f"{which}_{name}")
            moved.add(name)
        rest = {k: v for k, v in extra.items() if k not in moved}
        conn.execute(results.update().where(results.c.key == key).values(**values, extra=rest))
    _set_version(2)


def downgrade() -> None:
    columns = [f"{which}_{name}" for name in NEW_METRICS for which in ("final", "best")]
    results = _results("primary_metric", "final_top1", "best_top1", *columns)
    conn = op.get_bind()
    rows = conn.execute(sa.select(results).where(results.c.primary_metric != "top1")).mappings().all()
    for row in rows:
        primary = row["primary_metric"]
        extra = dict(row["extra"] or {}, primary_metric=primary)
        for name in DENSE_METRICS.get(primary, ()):
            extra.update({f"final_{name}": row[f"final_{name}"], f"best_{name}": row[f"best_{name}"],
                          name: row[f"final_{name}"]})
        conn.execute(results.update().where(results.c.key == row["key"]).values(
            final_top1=row[f"final_{primary}"], best_top1=row[f"best_{primary}"], extra=extra))
    with op.batch_alter_table("results") as batch:
        for column in ["primary_metric", *columns]:
            batch.drop_column(column)
    _set_version(1)
