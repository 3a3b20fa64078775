#!/bin/sh
# Ensure a throwaway PostgreSQL server for the test suite is running on 127.0.0.1 and print its
# SQLAlchemy URL (one line on stdout; everything else goes to stderr). Idempotent and safe to run
# concurrently: a second call reuses the running server. Installs the Debian `postgresql` package when
# the server binaries are missing and we are root. Settings: OBLIVIATE_PG_DIR (default /tmp/obliviate-pg),
# OBLIVIATE_PG_PORT (default 54329). fsync stays on (crash-safety tests need real durability).
set -eu

PG_DIR=${OBLIVIATE_PG_DIR:-/tmp/obliviate-pg}
PORT=${OBLIVIATE_PG_PORT:-54329}
DATA=$PG_DIR/data
LOG=$PG_DIR/server.log
ROLE=obliviate
PASS=obliviate
DB=obliviate_test
SUPER=postgres   # bootstrap superuser name, fixed by initdb -U whoever runs the server

die() { echo "pg-test-server: $*" >&2; exit 1; }

is_root() { [ "$(id -u)" = 0 ]; }

# Highest installed version's bin dir (or the data dir's own version, when that is installed).
find_bindir() {
    if [ -f "$DATA/PG_VERSION" ]; then
        v=$(cat "$DATA/PG_VERSION")
        if [ -x "/usr/lib/postgresql/$v/bin/initdb" ] && [ -x "/usr/lib/postgresql/$v/bin/pg_ctl" ]; then
            echo "/usr/lib/postgresql/$v/bin"; return 0
        fi
    fi
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5,5n -r); do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
    done
    return 1
}

BIN=$(find_bindir) || {
    is_root && command -v apt-get >/dev/null 2>&1 \
        || die "PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin (install the Debian package 'postgresql')"
    echo "pg-test-server: installing PostgreSQL with apt-get ..." >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } >&2 \
        || die "apt-get install postgresql failed"
    BIN=$(find_bindir) || die "PostgreSQL server binaries still missing after apt-get install"
}

# Run a command as the server's owner: the `postgres` system user when we are root (initdb refuses root).
if is_root; then
    if ! id postgres >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/postgresql --shell /bin/sh postgres >&2 \
            || die "cannot create the postgres system user"
    fi
    quote() { printf "'%s'" "$(printf %s "$1" | sed "s/'/'\\\\''/g")"; }
    as_pg() {
        if command -v runuser >/dev/null 2>&1; then
            runuser -u postgres -- "$@"
        else
            cmd=""; for a in "$@"; do cmd="$cmd $(quote "$a")"; done
            su postgres -s /bin/sh -c "$cmd"
        fi
    }
else
    as_pg() { "$@"; }
fi

mkdir -p "$PG_DIR" || die "cannot create $PG_DIR"
PG_DIR=$(cd "$PG_DIR" && pwd)
DATA=$PG_DIR/data LOG=$PG_DIR/server.log
is_root && chown postgres "$PG_DIR"
cd "$PG_DIR"   # the server user may not be able to read the caller's working directory

# One caller at a time past this point; a concurrent second caller waits, then finds the server running.
if command -v flock >/dev/null 2>&1; then
    exec 9>>"$PG_DIR/.lock"
    flock -w 300 9 || die "timed out waiting for the lock on $PG_DIR/.lock"
fi

psql_super() {
    as_pg "$BIN/psql" -X -q -h "$DATA" -p "$PORT" -U "$SUPER" -d postgres -v ON_ERROR_STOP=1 "$@"
}

init_data() {
    if [ ! -f "$DATA/PG_VERSION" ] || [ "$(cat "$DATA/PG_VERSION")" != "$("$BIN/pg_ctl" --version | sed 's/.* \([0-9][0-9]*\).*/\1/')" ]; then
        # missing, half-initialised, or made by another major version: it is throwaway, start over
        rm -rf "$DATA"
        echo "pg-test-server: initdb $DATA ($BIN)" >&2
        as_pg "$BIN/initdb" -D "$DATA" -U "$SUPER" -E UTF8 --locale=C.UTF-8 --no-instructions \
            --auth-local=trust --auth-host=scram-sha-256 >/dev/null 9>&- || die "initdb failed"
        cat >>"$DATA/postgresql.conf" <<CONF

# obliviate test server
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DATA'
shared_buffers = 32MB
fsync = on
synchronous_commit = on
full_page_writes = on
CONF
    fi
}

# Fast path: the server answers on its socket. Otherwise: a postmaster that is alive but not ready
# (starting, stopping, or killed and not yet reaped) is waited for; no postmaster at all is started.
deadline=$(( $(date +%s) + 90 ))
starts=0
while ! as_pg "$BIN/pg_isready" -q -h "$DATA" -p "$PORT" -d postgres -U "$SUPER" 2>/dev/null; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
        tail -n 20 "$LOG" >&2 2>/dev/null || true
        die "the server in $DATA did not become ready (log: $LOG)"
    fi
    if as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
        sleep 1
        continue
    fi
    [ "$starts" -lt 3 ] || { tail -n 20 "$LOG" >&2 2>/dev/null || true; die "pg_ctl start failed (log: $LOG)"; }
    starts=$((starts + 1))
    init_data
    echo "pg-test-server: starting PostgreSQL on 127.0.0.1:$PORT" >&2
    # 9>&-: the server must not inherit (and so hold forever) the lock
    as_pg "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start >&2 9>&- || sleep 2
done

# Role and database (cheap check on every call; created only when missing).
have=$(psql_super -tA -c "SELECT (SELECT count(*) FROM pg_roles WHERE rolname = '$ROLE')
                               + (SELECT count(*) FROM pg_database WHERE datname = '$DB')") \
    || die "cannot connect to the server in $DATA (log: $LOG)"
if [ "$have" != 2 ]; then
    psql_super >&2 <<SQL || die "creating role/database failed"
SELECT format('CREATE ROLE %I LOGIN CREATEDB PASSWORD %L', '$ROLE', '$PASS')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$ROLE') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', '$DB', '$ROLE')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$DB') \gexec
SQL
fi

echo "postgresql+psycopg://$ROLE:$PASS@127.0.0.1:$PORT/$DB"
