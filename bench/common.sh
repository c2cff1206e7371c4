# Sourced by bench/bulk-enqueue and bench/footprint: a daemon in a temporary directory with the
# embedded default (file transport, maildir inbox, sled store), its start timed to /readyz, and
# the numbers read from /proc. Not a script of its own.
# env: INVITED_BIN (a daemon binary to measure instead of building this tree's release binary),
#      STORE_EXTRA (lines added under [store], e.g. 'cache_capacity = 8388608'),
#      PACE=N (rate_per_second = N: the sender all but idle, to measure the enqueue alone),
#      STORE=postgres (the store in a throw-away PostgreSQL instead of sled: bench/pgstore.sh)

# shellcheck source=bench/pgstore.sh
. bench/pgstore.sh
BIN=${INVITED_BIN:-target/release/invited}
[ -n "${INVITED_BIN:-}" ] || cargo build --release -q

work=$(mktemp -d /tmp/bench.XXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
pg_store_start

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
# CPU seconds (user + system) a process has used so far
cpu() { awk -v t="$(getconf CLK_TCK)" '{print ($14 + $15) / t}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# a line of /proc/PID/status in MiB (VmRSS: now, VmHWM: the peak so far)
mib() { awk -v k="$2:" '$1 == k {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
# bytes on disk under a directory, in MiB
disk_mib() { du -sk "$1" | awk '{printf "%.1f", $1 / 1024}'; }

# write_config DIR: the embedded default, HTTP on a free loopback port (sets PORT)
write_config() {
  local d=$1
  PORT=$(free_port)
  mkdir -p "$d"
  cat > "$d/invited.toml" <<TOML
[store]
path = "$d/store"
${STORE_EXTRA:-}
[http]
listen = "127.0.0.1:$PORT"
public_url = "http://127.0.0.1:$PORT"
[admin]
socket = "$d/admin.sock"
[keys]
active = "k1"
files = { k1 = "$d/k1.key" }
[mail]
from = "Contoso Distribution <partners@invited.test>"
reply_to = "replies@invited.test"
[mail.outbound]
transport = "file"
dir = "$d/outbox"
${PACE:+rate_per_second = $PACE}
[mail.inbound]
source = "maildir"
dir = "$d/inbox"
[[providers]]
id = "contoso-kr"
name = "Contoso Distribution Korea"
email = "ops@contoso.test"
markets = ["KR"]
TOML
  pg_store "$d/invited.toml"
}

# start_daemon DIR: starts it, waits for /readyz 200; sets DPID and READY_S (exec to ready, s)
start_daemon() {
  local d=$1 t0
  t0=$(now)
  "$BIN" serve --config "$d/invited.toml" 2>>"$d/log" &
  DPID=$!
  pids+=("$DPID")
  READY_S=$(python3 - "$PORT" "$t0" <<'PY'
import http.client, sys, time
port, t0 = int(sys.argv[1]), float(sys.argv[2])
for _ in range(6000):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/readyz")
        if c.getresponse().status == 200:
            print(f"{time.time() - t0:.3f}")
            break
    except OSError:
        pass
    time.sleep(0.005)
else:
    sys.exit("the daemon never became ready")
PY
)
}

stop_daemon() {
  kill -TERM "$DPID" 2>/dev/null || true
  wait "$DPID" 2>/dev/null || true
}

cli() { "$BIN" --config "$D/invited.toml" "$@"; }

# the CSV: N resellers over 20 domains
make_csv() { # n file
  python3 - "$1" > "$2" <<'PY'
import sys
n = int(sys.argv[1])
print("email,company,country,contact_name")
for i in range(n):
    print(f"r{i:06d}@d{i % 20:02d}.test,Reseller {i} Ltd.,KR,Contact {i}")
PY
}

# messages the sender has handed over so far (from /metrics on the admin socket)
sent_total() {
  curl -s --unix-socket "$D/admin.sock" http://invited/metrics | awk '/^invited_sent_total/ {print $2}'
}

# wait_sent N: until N messages are sent (polled every 2 s; /metrics scans the queue)
wait_sent() {
  local s
  while :; do
    s=$(sent_total); s=${s:-0}
    [ "$s" -ge "$1" ] && break
    sleep 2
  done
}
