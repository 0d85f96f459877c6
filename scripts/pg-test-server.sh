#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster on loopback for the test suite.
#
#   scripts/pg-test-server.sh start DIR PORT   # prints the database URL on stdout
#   scripts/pg-test-server.sh stop DIR
#
# Uses Debian's postgresql packages (installed by .ci/run). Runs the server as the
# `postgres` system user when invoked as root, since initdb refuses to run as root.
set -euo pipefail

cmd=${1:?usage: pg-test-server.sh start DIR PORT | stop DIR}
dir=${2:?data directory}
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -n "$bindir" ] || { echo "PostgreSQL is not installed: apt-get install -y postgresql" >&2; exit 1; }

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$cmd" in
  start)
    port=${3:?port}
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    if [ ! -f "$dir/PG_VERSION" ]; then
      as_pg "$bindir/initdb" -D "$dir" -U lupus --auth=trust -E UTF8 >/dev/null
    fi
    as_pg "$bindir/pg_ctl" -D "$dir" -l "$dir/server.log" -w \
      -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c max_connections=200 -c fsync=on" start >/dev/null
    as_pg "$bindir/createdb" -h 127.0.0.1 -p "$port" -U lupus lupus_test 2>/dev/null || true
    echo "postgres://lupus@127.0.0.1:$port/lupus_test"
    ;;
  stop)
    as_pg "$bindir/pg_ctl" -D "$dir" -m fast stop >/dev/null || true
    ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
