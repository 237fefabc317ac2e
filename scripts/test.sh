#!/usr/bin/env bash
# The test suite, as a new user and CI run it: installs medlens with its extras into .venv, starts a
# throwaway PostgreSQL server and installs headless Chromium (Debian) when possible, runs pytest, and
# stops the server again. Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
PY=${PYTHON:-python3}

# ---- Python environment (torch + torchvision resolved together from PyPI, never pinned alone)
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e ".[all,dev]"

# ---- headless Chromium for browser tests (Debian package); tests skip with a reason when absent
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "note: chromium could not be installed; browser tests will skip"
fi

# ---- throwaway PostgreSQL server on a free port, stopped on exit
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
pg_dir=""
cleanup() {
  if [ -n "$pg_dir" ] && [ -d "$pg_dir" ]; then
    if [ "$(id -u)" = "0" ]; then su postgres -s /bin/sh -c "$pg_bin/pg_ctl -D $pg_dir/data -m fast stop" >/dev/null 2>&1 || true
    else "$pg_bin/pg_ctl" -D "$pg_dir/data" -m fast stop >/dev/null 2>&1 || true; fi
    rm -rf "$pg_dir"
  fi
}
trap cleanup EXIT
if [ -n "$pg_bin" ] && [ -x "$pg_bin/initdb" ] && [ -z "${MEDLENS_TEST_PG_URL:-}" ]; then
  pg_dir=$(mktemp -d /tmp/medlens-pg.XXXXXX)
  port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  if [ "$(id -u)" = "0" ]; then
    chown postgres "$pg_dir"
    run_pg() { su postgres -s /bin/sh -c "$*"; }
  else
    run_pg() { sh -c "$*"; }
  fi
  if run_pg "$pg_bin/initdb -A trust -U postgres -D $pg_dir/data" >/dev/null \
     && run_pg "$pg_bin/pg_ctl -D $pg_dir/data -l $pg_dir/log -o '-p $port -k $pg_dir -c listen_addresses=127.0.0.1' -w start" >/dev/null; then
    export MEDLENS_TEST_PG_URL="postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
    echo "PostgreSQL test server on 127.0.0.1:$port"
  else
    echo "note: PostgreSQL could not be started; PostgreSQL tests will skip"
  fi
fi

export MEDLENS_SHARED_DATA=${MEDLENS_SHARED_DATA:-$root/../shared/data}
.venv/bin/python -m pytest "$@"
