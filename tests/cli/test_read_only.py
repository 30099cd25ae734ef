"""Commands that only read (report, status, logs, analyze, run --dry-run) never create, upgrade
or write a database they are pointed at; they refuse another application's database in one
line, and read a SQLite file that this process may not write (WAL mode included)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from mpvgbench.store import Store
from tests.cli.conftest import ROOT, fabricate_run, invoke, jobs_of, write_spec
from tests.pg import fresh_schema

FIXTURE = ROOT / "tests" / "data" / "main_v1.db"


def read_only_commands(spec: Path) -> dict[str, list[str]]:
    return {"report": ["report"], "status": ["status"], "logs": ["logs", "ffff0000"],
            "analyze": ["analyze", "ffff0000"], "dry_run": ["run", str(spec), "--dry-run"]}


COMMANDS = ("report", "status", "logs", "analyze", "dry_run")


def assert_one_line_error(result, *expected: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for text in expected:
        assert text in lines[0], lines[0]


@pytest.fixture
def pg_schema() -> Iterator[tuple[str, sa.Engine]]:
    """A fresh PostgreSQL schema: (its URL, an engine to look inside it)."""
    with fresh_schema() as url:
        engine = sa.create_engine(url)
        yield url.render_as_string(hide_password=False), engine
        engine.dispose()


def pg_tables(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names())


# ----------------------------------------------------------------------------------- SQLite

@pytest.mark.parametrize("command", COMMANDS)
def test_a_missing_sqlite_database_is_not_created(command: str, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "tiny.yaml")
    result = invoke(*read_only_commands(spec)[command], "--db", tmp_path / "none.db")
    if command == "dry_run":
        assert result.exit_code == 0 and "1 jobs: 1 new" in result.output, result.output
    else:
        assert_one_line_error(result, f"no results database at {tmp_path / 'none.db'}",
                              "run `mpvgbench run SPEC` first or pass --db")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]


@pytest.mark.parametrize("command", COMMANDS)
def test_another_applications_sqlite_file_is_refused_untouched(command: str, tmp_path: Path) -> None:
    other = tmp_path / "app.sqlite"
    with sqlite3.connect(other) as conn:  # rollback journal, as most applications leave it
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        conn.execute("INSERT INTO notes (text) VALUES ('mine')")
    conn.close()
    before = other.read_bytes()
    spec = write_spec(tmp_path / "tiny.yaml")
    result = invoke(*read_only_commands(spec)[command], "--db", other)
    assert_one_line_error(result, "is not an mpvgbench results database (its tables: notes)",
                          "pass the --db that `mpvgbench run` wrote")
    assert other.read_bytes() == before  # no tables added, not even switched to WAL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.sqlite", "tiny.yaml"]


@pytest.mark.parametrize("command", COMMANDS)
def test_an_older_schema_is_not_upgraded_by_a_reader(command: str, tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    shutil.copy(FIXTURE, db)
    spec = write_spec(tmp_path / "tiny.yaml")
    result = invoke(*read_only_commands(spec)[command], "--db", db)
    assert_one_line_error(result, "has schema 1, this mpvgbench reads schema 2",
                          f"`mpvgbench db upgrade --db {db}`")
    assert db.read_bytes() == FIXTURE.read_bytes()


def _set_read_only(paths: list[Path], read_only: bool) -> None:
    """Nobody may write ``paths`` (files and folders). Root ignores permission bits, so as root
    the immutable attribute does it (chattr); otherwise chmod."""
    if os.geteuid() == 0:
        proc = subprocess.run(["chattr", "+i" if read_only else "-i", *map(str, paths)],
                              capture_output=True, text=True)
        if proc.returncode != 0 and read_only:
            pytest.skip(f"running as root and chattr +i fails here: {proc.stderr.strip()}")
        return
    for path in paths:
        if read_only:
            path.chmod(0o555 if path.is_dir() else 0o444)
        else:
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_a_read_only_wal_database_is_read(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    db, runs = folder / "results.db", folder / "runs"
    spec = write_spec(tmp_path / "tiny.yaml")
    with Store(db) as store:
        key = fabricate_run(store, runs, jobs_of(spec)[0].config, top1=61.25, spec_name="tiny")
    (runs / key / "stdout.log").write_text("hello from the worker\n")
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()
    assert not Path(f"{db}-shm").exists()  # the last connection removed it; none can be made now
    before = db.read_bytes()
    locked = [db, folder]
    _set_read_only(locked, True)
    try:
        outputs = {}
        for name, args in {"report": ["report", "--format", "csv"], "status": ["status", "--all"],
                           "logs": ["logs", key[:8]], "dry_run": ["run", spec, "--dry-run"]}.items():
            result = invoke(*args, "--db", db)
            assert result.exit_code == 0, (name, result.output)
            outputs[name] = result.output
    finally:
        _set_read_only(locked, False)
    assert "61.25" in outputs["report"]
    assert "1 finished" in outputs["status"] and key[:8] in outputs["status"]
    assert "hello from the worker" in outputs["logs"]
    assert "1 jobs: 1 done" in outputs["dry_run"]
    assert db.read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["results.db", "runs"]


# ------------------------------------------------------------------------------- PostgreSQL

@pytest.mark.postgres
@pytest.mark.parametrize("command", COMMANDS)
def test_postgres_empty_and_foreign_databases_stay_as_they_are(
        command: str, tmp_path: Path, pg_schema: tuple[str, sa.Engine]) -> None:
    url, engine = pg_schema
    spec = write_spec(tmp_path / "tiny.yaml")
    args = read_only_commands(spec)[command]
    result = invoke(*args, "--db", url)
    if command == "dry_run":
        assert result.exit_code == 0 and "1 jobs: 1 new" in result.output, result.output
    else:
        assert_one_line_error(result, "holds no mpvgbench results (it has no tables)")
    assert pg_tables(engine) == set()
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)"))
    result = invoke(*args, "--db", url)
    assert_one_line_error(result, "is not an mpvgbench results database (its tables: notes)")
    assert pg_tables(engine) == {"notes"}


@pytest.mark.postgres
def test_postgres_reads_do_not_upgrade(tmp_path: Path, pg_schema: tuple[str, sa.Engine]) -> None:
    url, engine = pg_schema
    Store(url).close()
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE meta SET value = '1' WHERE name = 'schema_version'"))
    spec = write_spec(tmp_path / "tiny.yaml")
    for args in read_only_commands(spec).values():
        assert_one_line_error(invoke(*args, "--db", url), "has schema 1, this mpvgbench reads schema 2")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT value FROM meta")).scalar() == "1"
