"""Schema upgrades (Alembic): a database written by main before Alembic (tests/data/main_v1.db)
upgrades only when told, to exactly the tables a new database gets, and reports the same numbers."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from click.testing import CliRunner

from mpvgbench import store_migrations as M
from mpvgbench import store_schema as S
from mpvgbench.cli import cli
from mpvgbench.store import Store, StoreError, upgrade_database
from mpvgbench.store_engine import sqlite_engine
from tests.pg import fresh_schema

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "main_v1.db"
GOLDEN: dict[str, Any] = json.loads((DATA / "main_v1_report.json").read_text())
V1_TABLES = ("runs", "run_specs", "metrics", "results", "analysis")  # in foreign-key order


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def v1_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """main_v1.db as it is (SQLite), or its rows in a fresh PostgreSQL schema built by revision
    0001 without an alembic_version table: what a PostgreSQL database of main holds."""
    if request.param == "sqlite":
        shutil.copy(FIXTURE, tmp_path / "results.db")
        yield str(tmp_path / "results.db")
        return
    with fresh_schema() as url:
        _copy_v1_rows(sa.create_engine(url))
        yield url.render_as_string(hide_password=False)


def _copy_v1_rows(engine: sa.Engine) -> None:
    # immutable: read the committed file without making -wal/-shm files next to it
    source = sa.create_engine(f"sqlite:///file:{FIXTURE}?immutable=1&uri=true")
    tables = sa.MetaData()
    tables.reflect(source)
    with engine.begin() as conn:
        command.upgrade(M.alembic_config(conn), "0001")
        conn.execute(sa.text("DROP TABLE alembic_version"))
        target = sa.MetaData()
        target.reflect(conn)
        with source.connect() as src:
            for name in V1_TABLES:
                rows = [dict(row._mapping) for row in src.execute(sa.select(tables.tables[name]))]
                if rows:
                    conn.execute(sa.insert(target.tables[name]), rows)
    source.dispose()
    engine.dispose()


def _report(db: str, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["report", "--db", db, "--format", "json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _schema_diff(conn: sa.Connection) -> list[Any]:
    return compare_metadata(MigrationContext.configure(conn), S.metadata)


def test_each_revision_is_one_schema_version() -> None:
    script = ScriptDirectory.from_config(M.alembic_config(None))  # type: ignore[arg-type]
    revisions = [r.revision for r in reversed(list(script.walk_revisions()))]
    assert revisions == [f"{v:04d}" for v in range(1, S.SCHEMA_VERSION + 1)]


def test_main_v1_database_upgrades_only_when_told(v1_db: str) -> None:
    before = FIXTURE.read_bytes()
    for create in (True, False):  # `run` and the commands that read: refused, nothing changed
        with pytest.raises(StoreError, match=r"has schema 1, this mpvgbench reads schema 2; back it up, "
                                             r"then run `mpvgbench db upgrade --db "):
            Store(v1_db, create=create)
    if not v1_db.startswith("postgresql"):
        assert Path(v1_db).read_bytes() == before
    result = CliRunner().invoke(cli, ["report", "--db", v1_db])
    assert result.exit_code == 2 and "mpvgbench db upgrade --db" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(cli, ["db", "upgrade", "--db", v1_db])
    assert result.exit_code == 0 and "upgraded from schema 1 to 2" in result.output, result.output
    assert "mpvg:mpvg@" not in result.output  # a PostgreSQL URL is shown without its password
    result = CliRunner().invoke(cli, ["db", "upgrade", "--db", v1_db])
    assert result.exit_code == 0 and "schema 2, up to date; nothing to do" in result.output


def _assert_same_numbers(report: dict, golden: dict, name: str) -> None:
    """Every row main's report showed is in the upgraded database's report with the same numbers.

    The report has learned since (issue 22): variants of a cell are rows of their own with the
    fields that tell them apart as columns (main showed one and hid the rest), and cells carry
    seeds and a smoke mark, and a smoke run's number is no longer compared with the paper (no Δ).
    So: main's columns appear in order, and each of main's rows has a row with its labels whose
    measured and paper cells, cut to main's fields, are main's."""
    names = [c["name"] for c in report["columns"]]
    golden_names = [c["name"] for c in golden["columns"] if c["kind"] != "diff"]
    assert [n for n in names if n in golden_names] == golden_names, name
    assert all(c["name"] in names for c in golden["columns"]), name
    labels = [c["name"] for c in golden["columns"] if c["kind"] == "label"]

    def cut(value: object, like: object) -> object:
        return {k: value.get(k) for k in like} if isinstance(value, dict) and isinstance(like, dict) else value

    for row in golden["rows"]:
        candidates = [{k: cut(r[k], row[k]) for k in golden_names} for r in report["rows"]
                      if all(r.get(k) == row[k] for k in labels)]
        assert {k: row[k] for k in golden_names} in candidates, (name, row, candidates)


def test_upgraded_database_reports_the_same_numbers(v1_db: str) -> None:
    upgrade_database(v1_db)
    for name, golden in GOLDEN.items():
        report = _report(v1_db, *([] if name == "all" else name.split()))
        _assert_same_numbers(report, golden, name)
    with Store(v1_db, create=False) as store:
        rows = {r.key[:8]: r for r in store.results_frame()}
        assert {k: r.primary_metric for k, r in rows.items()} == {
            "558e6b8b": "top1", "617b24cd": "top1", "7accba21": "top1", "d44c5af0": "miou",
            "dcfa8c34": "ap_box"}
        ade, coco = rows["d44c5af0"], rows["dcfa8c34"]
        assert ade.final_top1 is None and ade.final_miou == pytest.approx(3.2610369699699207)
        assert (coco.final_top1, coco.final_ap_box, coco.final_ap_mask) == (None, 0.0, 0.0)
        assert "primary_metric" not in ade.extra and ade.extra["task"] == "segmentation"
        assert rows["558e6b8b"].final_top1 == pytest.approx(39.44444444444444)
        # the rest came through untouched: runs, a failed run's error, metrics, analysis
        assert store.status_counts() == {"pending": 0, "running": 0, "finished": 5, "failed": 1,
                                         "cancelled": 0}
        (failed,) = store.runs(status="failed")
        assert failed.failure_kind == "nonfinite" and "non-finite training loss" in (failed.error or "")
        assert len(store.metrics(ade.key)) == 4
        key = rows["558e6b8b"].key
        assert store.analysis(key)[key]["pe_images"] == 32


def test_upgrade_gives_the_tables_a_new_database_gets(v1_db: str) -> None:
    upgrade_database(v1_db)
    engine = sa.create_engine(v1_db if "://" in v1_db else f"sqlite:///{v1_db}")
    with engine.connect() as conn:
        assert _schema_diff(conn) == []
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0002"
    engine.dispose()


def test_downgrade_then_upgrade_round_trips(tmp_path: Path) -> None:
    db = tmp_path / "results.db"
    shutil.copy(FIXTURE, db)
    upgrade_database(db)
    engine = sqlite_engine(sa.make_url(f"sqlite:///{db}"))
    with engine.begin() as conn:
        command.downgrade(M.alembic_config(conn), "0001")
    engine.dispose()
    with sqlite3.connect(db) as conn:
        rows = dict(conn.execute("SELECT key, final_top1 FROM results").fetchall())
        extra = json.loads(conn.execute("SELECT extra FROM results WHERE key LIKE 'd44c%'").fetchone()[0])
    assert rows["d44c5af08e51a62f"] == pytest.approx(3.2610369699699207)  # schema 1's place for it
    assert extra["primary_metric"] == "miou"
    assert upgrade_database(db)[1:] == (1, 2)
    _assert_same_numbers(_report(str(db), "--table", "4"), GOLDEN["--table 4"], "--table 4")


def test_a_new_database_is_at_the_newest_revision(tmp_path: Path) -> None:
    Store(tmp_path / "new.db").close()
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'new.db'}")
    with engine.connect() as conn:
        assert _schema_diff(conn) == []
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0002"
    engine.dispose()
    assert upgrade_database(tmp_path / "new.db") == (str(tmp_path / "new.db"), 2, 2)


def test_upgrade_refuses_what_it_cannot_upgrade(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no results database at"):
        upgrade_database(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    before = other.read_bytes()
    for open_it in (upgrade_database, Store, lambda db: Store(db, create=False)):  # run refuses it too
        with pytest.raises(StoreError, match=r"is not an mpvgbench results database \(its tables: notes\)"):
            open_it(other)
    assert other.read_bytes() == before
    newer = tmp_path / "newer.db"
    Store(newer).close()
    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE name = 'schema_version'")
    with pytest.raises(StoreError, match=r"newer mpvgbench \(schema 99 > 2\)"):
        upgrade_database(newer)
