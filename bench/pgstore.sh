# Sourced by bench/bulk-enqueue (through common.sh), bench/confirmations and bench/smtp-throughput:
# with STORE=postgres the daemon's store is a PostgreSQL database instead of sled, so the same
# benchmark measures both backends. The server is a throw-away one (scripts/pgstack) under the
# benchmark's own temp directory ($work), started on first use and stopped with the benchmark
# (its pid joins $pids). Not a script of its own.

# pg_store_start: with STORE=postgres, starts the server (in the benchmark's own shell, after $work
# and $pids exist, so cleanup stops it); without STORE, nothing.
pg_store_start() {
  [ "${STORE:-sled}" = postgres ] || return 0
  chmod 755 "$work"
  mkdir -p "$work/pg"
  PGSTACK_QUIET=1 scripts/pgstack start "$work/pg" >/dev/null
  # shellcheck disable=SC1091
  . "$work/pg/env"
  pids+=("$PGSTACK_PID")
}

# pg_store CONFIG: with STORE=postgres, turns CONFIG's `path = "..."` store line into a database of
# its own (the same database for the same path, so a restarted daemon finds its records) and gives
# the config a key file (a daemon on PostgreSQL does not make one). Without STORE, nothing.
pg_store() {
  [ "${STORE:-sled}" = postgres ] || return 0
  local cfg=$1 path db key
  [ -n "${PGSTACK_URL:-}" ] || { echo "pg_store: call pg_store_start first" >&2; exit 1; }
  path=$(sed -n 's/^path = "\(.*\)"$/\1/p' "$cfg" | head -n 1)
  db=b$(printf %s "$path" | md5sum | cut -c1-12)
  pg_sql() { PGPASSWORD=$(cat "$PGSTACK_PASSWORD_FILE") "$PGSTACK_BIN/psql" -h 127.0.0.1 -p "$PGSTACK_PORT" -U invited -d postgres -qAtc "$1"; }
  [ "$(pg_sql "SELECT 1 FROM pg_database WHERE datname = '$db'")" = 1 ] || pg_sql "CREATE DATABASE $db" >/dev/null
  sed -i -e "s|^path = \"$path\"\$|backend = \"postgres\"\nurl = \"postgres://invited@127.0.0.1:$PGSTACK_PORT/$db\"\npassword_file = \"$PGSTACK_PASSWORD_FILE\"|" \
    -e '/^cache_capacity/d' "$cfg"
  key=$(sed -n 's/^files = { k1 = "\(.*\)" }$/\1/p' "$cfg")
  if [ -n "$key" ] && [ ! -s "$key" ]; then
    mkdir -p "$(dirname "$key")"
    (umask 077; openssl rand -hex 32 > "$key")
  fi
}
