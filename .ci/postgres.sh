#!/usr/bin/env bash
# Start a throwaway PostgreSQL (Debian's `postgresql` package) for the tests and print its DSN.
#   export IBLLM_TEST_POSTGRES_URL="$(.ci/postgres.sh)"
# Runs the server as the `postgres` user (initdb refuses root) in a fresh folder under /tmp, on
# 127.0.0.1 and a free port, trust auth (local test database only). Stop it with
#   su postgres -s /bin/sh -c "pg_ctl -D <dir>/data stop"   (the folder is printed to stderr).
set -euo pipefail
PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
if [ -z "$PGBIN" ]; then
  echo "error: PostgreSQL is not installed (apt-get install -y postgresql)" >&2
  exit 1
fi
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
DIR="$(mktemp -d /tmp/ibllm-pg.XXXXXX)"
chmod 755 "$DIR"
AS_PG=(su postgres -s /bin/sh -c)
if [ "$(id -un)" = "postgres" ]; then AS_PG=(sh -c); else chown postgres "$DIR"; fi
"${AS_PG[@]}" "'$PGBIN/initdb' -D '$DIR/data' -A trust -U postgres -E UTF8 >'$DIR/initdb.log' 2>&1"
"${AS_PG[@]}" "'$PGBIN/pg_ctl' -D '$DIR/data' -l '$DIR/server.log' -w -o \"-p $PORT -k $DIR -c listen_addresses=127.0.0.1\" start >/dev/null"
"${AS_PG[@]}" "'$PGBIN/createdb' -h 127.0.0.1 -p $PORT -U postgres ibllm_test"
echo "PostgreSQL for tests: $DIR (port $PORT)" >&2
echo "postgresql://postgres@127.0.0.1:$PORT/ibllm_test"
