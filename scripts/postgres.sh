#!/usr/bin/env bash
# postgres.sh - a throw-away PostgreSQL server for mpvgbench's tests and CI.
#
#   scripts/postgres.sh start   initdb (first time) + start on 127.0.0.1:<free port>; prints the URL
#   scripts/postgres.sh url     prints the SQLAlchemy URL of the running server (exit 1 if stopped)
#   scripts/postgres.sh stop    stops the server and deletes its directory
#
# Typical use:
#   export MPVGBENCH_TEST_POSTGRES_URL="$(scripts/postgres.sh start)"
#   .venv/bin/python -m pytest -m postgres tests/test_store.py
#   scripts/postgres.sh stop
#
# Env: MPVGBENCH_PG_DIR (default /tmp/mpvgbench-pg), MPVGBENCH_PG_BIN (default: newest
# /usr/lib/postgresql/*/bin, else PATH). PostgreSQL refuses to run as root, so as root the server
# runs as the 'postgres' system user (or MPVGBENCH_PG_OSUSER). Only stdout carries the URL.
set -euo pipefail

ROOT="${MPVGBENCH_PG_DIR:-/tmp/mpvgbench-pg}"
DATA="$ROOT/data"
SOCK="$ROOT/sock"
DB_USER=mpvg
DB_PASS=mpvg
DB_NAME=mpvgbench
OS_USER="${MPVGBENCH_PG_OSUSER:-postgres}"

log() { printf '[postgres.sh] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

find_bin() {
    if [ -n "${MPVGBENCH_PG_BIN:-}" ]; then echo "$MPVGBENCH_PG_BIN"; return; fi
    local d
    d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
    if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; return; fi
    command -v initdb >/dev/null 2>&1 || die "initdb not found; install PostgreSQL (apt-get install postgresql) or set MPVGBENCH_PG_BIN"
    dirname "$(command -v initdb)"
}
BIN="$(find_bin)"

# run a command as the server's OS user (root may not run postgres)
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        id "$OS_USER" >/dev/null 2>&1 || die "user '$OS_USER' missing; set MPVGBENCH_PG_OSUSER"
        local q="" a
        for a in "$@"; do q+=" $(printf '%q' "$a")"; done
        su -s /bin/sh "$OS_USER" -c "cd / && $q"
    else
        "$@"
    fi
}

free_port() {
    python3 - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}

url() {
    local port
    port="$(cat "$ROOT/port" 2>/dev/null)" || return 1
    echo "postgresql+psycopg://$DB_USER:$DB_PASS@127.0.0.1:$port/$DB_NAME"
}

running() {
    [ -f "$DATA/PG_VERSION" ] && as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

start() {
    if running; then log "already running"; url; return; fi
    mkdir -p "$ROOT" "$SOCK"
    if [ ! -f "$DATA/PG_VERSION" ]; then
        log "initdb into $DATA"
        printf '%s\n' "$DB_PASS" >"$ROOT/pwfile"
        [ "$(id -u)" -eq 0 ] && chown -R "$OS_USER" "$ROOT"
        as_pg "$BIN/initdb" -D "$DATA" -U "$DB_USER" --pwfile="$ROOT/pwfile" \
            --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --no-locale >"$ROOT/initdb.log" 2>&1 \
            || { cat "$ROOT/initdb.log" >&2; die "initdb failed"; }
        rm -f "$ROOT/pwfile"
    fi
    local port
    port="$(free_port)"
    echo "$port" >"$ROOT/port"
    [ "$(id -u)" -eq 0 ] && chown -R "$OS_USER" "$ROOT"
    log "starting on 127.0.0.1:$port (socket dir $SOCK)"
    as_pg "$BIN/pg_ctl" -D "$DATA" -l "$ROOT/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $SOCK -c fsync=off -c max_connections=200" start >&2 \
        || { tail -20 "$ROOT/server.log" >&2; die "pg_ctl start failed"; }
    if ! as_pg "$BIN/psql" -h "$SOCK" -p "$port" -U "$DB_USER" -d postgres -tAc \
            "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'" | grep -q 1; then
        as_pg "$BIN/createdb" -h "$SOCK" -p "$port" -U "$DB_USER" "$DB_NAME"
    fi
    url
}

stop() {
    if running; then
        as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >&2
    fi
    rm -rf "$ROOT"
    log "stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    url) running || die "not running; use: $0 start"; url ;;
    *) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac
