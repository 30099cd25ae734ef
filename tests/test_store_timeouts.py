"""Database servers that accept connections and never answer: a bounded, one-line failure.

The silent server is a thread on 127.0.0.1 that accepts TCP connections and reads nothing back
(like a hung or overloaded PostgreSQL, or a firewall that swallows the handshake); it stops
itself after ``lifetime_s`` even if a test forgets it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from tests.pg import fresh_schema



class SilentServer:
    """Accepts connections on 127.0.0.1 and never sends a byte."""

    def __init__(self, lifetime_s: float = 60.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self._deadline = time.monotonic() + lifetime_s
        self._stop = threading.Event()
        self._peers: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            try:
                peer, _ = self.sock.accept()
            except OSError:  # accept timeout: check the stop flag again
                continue
            self.accepted += 1
            self._peers.append(peer)  # held open, never answered
        for peer in self._peers:
            peer.close()
        self.sock.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.stop()


def _url(port: int, query: str = "") -> str:
    return f"postgresql+psycopg://u:p@127.0.0.1:{port}/db{query}"


def test_timeouts_are_on_by_default_and_the_url_overrides_them() -> None:
    from mpvgbench.store_engine import DEFAULT_CONNECT_TIMEOUT_S, server_timeouts

    url, args = server_timeouts(sa.make_url(_url(5432)))
    assert args["connect_timeout"] == DEFAULT_CONNECT_TIMEOUT_S
    assert "-c statement_timeout=" in args["options"]
    assert url.query == {}
    url, args = server_timeouts(sa.make_url(_url(5432, "?connect_timeout=3&statement_timeout=500ms&sslmode=disable")))
    assert args["connect_timeout"] == 3 and args["options"] == "-c statement_timeout=500ms"
    assert dict(url.query) == {"sslmode": "disable"}  # the driver's own options pass through
    _, args = server_timeouts(sa.make_url(_url(5432, "?statement_timeout=30")))
    assert args["options"] == "-c statement_timeout=30s"
    # SQLite has its own busy timeout; nothing is added to its URL
    url, args = server_timeouts(sa.make_url("sqlite:///x.db"))
    assert str(url) == "sqlite:///x.db" and set(args) == {"_timeouts"}
    _, args = server_timeouts(sa.make_url("postgresql+pg8000://u@h/db"))  # not libpq: its own names
    assert set(args) == {"_timeouts"}
    _, args = server_timeouts(sa.make_url("postgresql://u@h/db"))  # psycopg2, libpq too
    assert args["connect_timeout"] == DEFAULT_CONNECT_TIMEOUT_S


def test_bad_timeout_is_a_one_line_store_error() -> None:
    from mpvgbench.store import Store, StoreError

    with pytest.raises(StoreError, match="connect_timeout='soon'.*connect_timeout=30"):
        Store(_url(5432, "?connect_timeout=soon"))


def test_silent_server_fails_within_the_connect_timeout(silent: SilentServer) -> None:
    from mpvgbench.store import Store, StoreError

    t0 = time.monotonic()
    with pytest.raises(StoreError) as info:
        Store(_url(silent.port, "?connect_timeout=2"))
    elapsed = time.monotonic() - t0
    assert silent.accepted >= 1  # it really connected, and the server said nothing
    assert elapsed < 10, f"took {elapsed:.1f} s"
    message = str(info.value)
    assert "\n" not in message
    assert "did not answer within connect_timeout=2 s" in message and "?connect_timeout=" in message


def test_cli_against_a_silent_server_prints_one_line_and_exits_2(silent: SilentServer, tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "mpvgbench", "status", "--db", _url(silent.port, "?connect_timeout=2")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env, check=False)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "did not answer within connect_timeout=2 s" in lines[0], proc.stderr
    assert elapsed < 30, f"took {elapsed:.1f} s"


@pytest.mark.postgres
def test_statement_timeout_is_a_one_line_store_error() -> None:
    from mpvgbench.store import Store, StoreError

    with fresh_schema(statement_timeout="300ms") as url:
        store = Store(url.render_as_string(hide_password=False))
        try:
            t0 = time.monotonic()
            with pytest.raises(StoreError) as info, store._read() as conn:
                conn.execute(sa.text("SELECT pg_sleep(5)"))
            assert time.monotonic() - t0 < 4
            assert "statement_timeout=300ms" in str(info.value) and "\n" not in str(info.value)
        finally:
            store.close()


def test_silent_server_without_timeouts_in_the_url_still_fails(silent: SilentServer,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The default applies when the URL names none (lowered here from 10 s to keep the test short)."""
    from mpvgbench import store as store_module
    from mpvgbench import store_engine

    monkeypatch.setattr(store_engine, "DEFAULT_CONNECT_TIMEOUT_S", 1)
    t0 = time.monotonic()
    with pytest.raises(store_module.StoreError, match="did not answer within connect_timeout=1 s"):
        store_module.Store(_url(silent.port))
    assert time.monotonic() - t0 < 8
