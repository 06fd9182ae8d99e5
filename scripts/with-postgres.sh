#!/usr/bin/env bash
# Run a command with a throwaway PostgreSQL cluster on 127.0.0.1, exported as VOXCLONE_TEST_POSTGRES_URL.
# The cluster lives in a temporary folder and is stopped and removed when the command ends.
# If VOXCLONE_TEST_POSTGRES_URL is already set, the command runs against that server instead.
set -euo pipefail

if [[ -n "${VOXCLONE_TEST_POSTGRES_URL:-}" ]]; then
    exec "$@"
fi

PGBIN="${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)}"
if [[ -z "$PGBIN" || ! -x "$PGBIN/initdb" ]]; then
    echo "with-postgres: PostgreSQL server binaries not found; install them with 'apt-get install postgresql'" >&2
    exit 2
fi

RUN_AS=()
if [[ "$(id -u)" == "0" ]]; then
    # initdb refuses to run as root: use the postgres account the Debian package creates.
    RUN_AS=(runuser -u postgres --)
fi

PGDIR="$(mktemp -d /tmp/voxclone-pg.XXXXXX)"
chmod 755 "$PGDIR"
[[ "$(id -u)" == "0" ]] && chown postgres: "$PGDIR"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
PASSWORD="$(python3 -c 'import secrets; print(secrets.token_hex(12))')"

cleanup() {
    "${RUN_AS[@]}" "$PGBIN/pg_ctl" -D "$PGDIR/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$PGDIR"
}
trap cleanup EXIT

printf '%s\n' "$PASSWORD" > "$PGDIR/pw"
[[ "$(id -u)" == "0" ]] && chown postgres: "$PGDIR/pw"
"${RUN_AS[@]}" "$PGBIN/initdb" -D "$PGDIR/data" -U voxclone --pwfile="$PGDIR/pw" -A scram-sha-256 \
    --no-sync -E UTF8 >"$PGDIR/initdb.log" 2>&1 || { cat "$PGDIR/initdb.log" >&2; exit 2; }
"${RUN_AS[@]}" "$PGBIN/pg_ctl" -D "$PGDIR/data" -w -l "$PGDIR/server.log" \
    -o "-p $PORT -k $PGDIR -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null \
    || { cat "$PGDIR/server.log" >&2; exit 2; }

export VOXCLONE_TEST_POSTGRES_URL="postgresql+asyncpg://voxclone:${PASSWORD}@127.0.0.1:${PORT}/postgres"
echo "with-postgres: throwaway PostgreSQL on 127.0.0.1:${PORT}" >&2
"$@"
