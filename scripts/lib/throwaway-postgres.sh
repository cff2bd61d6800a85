# Sourced by the benchmark scripts: starts a throwaway PostgreSQL cluster
# from the installed server binaries, removed again when the script exits.
#   source scripts/lib/throwaway-postgres.sh
#   pg_start [postgres -c options…]   # sets PG_PORT, PG_DIR, PG_URL (database "bench")
#   pg_psql -c 'SELECT 1'             # psql on that database
# Scripts that start more processes add them to PG_CLEANUP (run before the
# cluster stops).

PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$PG_BIN" ]; then
  echo "PostgreSQL's server binaries are missing: sudo apt-get install -y postgresql" >&2
  exit 1
fi
PG_DIR=$(mktemp -d)
PG_AS=()
if [ "$(id -u)" = 0 ]; then chown postgres: "$PG_DIR"; PG_AS=(runuser -u postgres --); fi
PG_CLEANUP=()

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

pg_stop() {
  local step
  for step in "${PG_CLEANUP[@]}"; do eval "$step" || true; done
  if [ -f "$PG_DIR/data/postmaster.pid" ]; then
    "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" stop -m fast >/dev/null || true
  fi
  rm -rf "$PG_DIR"
}
trap pg_stop EXIT

pg_start() {
  local options="-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1"
  local option
  for option in "$@"; do options+=" $option"; done
  "${PG_AS[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres -A trust --no-locale -E UTF8 --no-sync >/dev/null
  "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -o "$options" -w start >/dev/null
  "${PG_AS[@]}" "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE bench" >/dev/null
}

pg_psql() { "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d bench -qAt "$@"; }

PG_PORT=$(free_port)
PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/bench"
