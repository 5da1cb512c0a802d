#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on 127.0.0.1 for the tests, and export its URL.
#
# Source this file: it sets NASFORGE_TEST_POSTGRES_URL when a server is up, and registers
# `nasforge_pg_stop` (call it on exit). Without PostgreSQL's programs it prints why and sets nothing, and
# the PostgreSQL tests skip with that reason. The server trusts local connections and lives in a temp folder.

nasforge_pg_start() {
    local bindir="" candidate
    if command -v initdb >/dev/null 2>&1; then
        bindir="$(dirname "$(readlink -f "$(command -v initdb)")")"
    else
        for candidate in /usr/lib/postgresql/*/bin; do
            [ -x "$candidate/initdb" ] && bindir="$candidate"
        done
    fi
    if [ -z "$bindir" ]; then
        echo "postgres: no initdb found (install Debian's postgresql package); PostgreSQL tests will skip"
        return 0
    fi
    NASFORGE_PG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/nasforge-pg.XXXXXX")"
    local port run_as=()
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    # initdb refuses to run as root: run the server as the postgres system user then.
    if [ "$(id -u)" = 0 ]; then
        if ! id postgres >/dev/null 2>&1; then
            echo "postgres: running as root and there is no 'postgres' user; PostgreSQL tests will skip"
            return 0
        fi
        chown postgres "$NASFORGE_PG_DIR"
        run_as=("$(command -v runuser || echo /sbin/runuser)" -u postgres --)
    fi
    NASFORGE_PG_CTL=("${run_as[@]}" "$bindir/pg_ctl" -D "$NASFORGE_PG_DIR/data")
    if ! "${run_as[@]}" "$bindir/initdb" -D "$NASFORGE_PG_DIR/data" -U nasforge --auth=trust -E UTF8 \
            >"$NASFORGE_PG_DIR/initdb.log" 2>&1; then
        echo "postgres: initdb failed (see $NASFORGE_PG_DIR/initdb.log); PostgreSQL tests will skip"
        return 0
    fi
    if ! "${NASFORGE_PG_CTL[@]}" -w -t 60 -l "$NASFORGE_PG_DIR/server.log" \
            -o "-h 127.0.0.1 -p $port -k $NASFORGE_PG_DIR -c fsync=off -c max_connections=200" start \
            >/dev/null 2>&1; then
        echo "postgres: the server did not start (see $NASFORGE_PG_DIR/server.log); PostgreSQL tests will skip"
        return 0
    fi
    if ! "$bindir/createdb" -h 127.0.0.1 -p "$port" -U nasforge nasforge_test; then
        echo "postgres: createdb failed; PostgreSQL tests will skip"
        return 0
    fi
    export NASFORGE_TEST_POSTGRES_URL="postgresql://nasforge@127.0.0.1:$port/nasforge_test"
    echo "postgres: $("$bindir/postgres" --version) on 127.0.0.1:$port"
}

nasforge_pg_stop() {
    if [ -n "${NASFORGE_PG_CTL+x}" ]; then
        "${NASFORGE_PG_CTL[@]}" -m fast stop >/dev/null 2>&1 || true
    fi
    if [ -n "${NASFORGE_PG_DIR:-}" ]; then
        rm -rf "$NASFORGE_PG_DIR"
    fi
}

nasforge_pg_start
