#!/usr/bin/env bash
# The history store in BENCHMARKS.md, measured in one run on this machine (release builds):
#  1. dmarc-milter's messages/s and CPU per message with no history, the SQLite file and a
#     throwaway PostgreSQL (initdb/pg_ctl on a loopback port, fsync on), milter-bench -m dmarc
#     with a Message-ID of its own per message (so every message is a new row), SPF checked;
#  2. report generation (`authmilter reports run`: dry, real, idle) over ROWS history rows of one
#     day in PostgreSQL (bench/reports.sh does the same over SQLite).
#   bench/history.sh [ROWS] [SECONDS] [CONCURRENCY]      defaults: 1000000 10 8
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-1000000}
secs=${2:-10}
conc=${3:-8}
log() { echo "bench/history.sh: $*" >&2; }

pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$pgbin/initdb" ] || { log "needs Debian's postgresql (tests/run.sh installs it)"; exit 1; }
cargo build --release -q -p dmarc-milter -p milter-bench -p authmilter-cli
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release

work=$(mktemp -d)
chmod 755 "$work"
PIDS=()
as_pg=()
[ "$(id -u)" -eq 0 ] && as_pg=(runuser -u postgres --)
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  "${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# PostgreSQL: trust on loopback only, no unix socket.
mkdir "$work/pg"
[ "$(id -u)" -eq 0 ] && chown postgres:postgres "$work/pg"
"${as_pg[@]}" "$pgbin/initdb" -D "$work/pg" -U authmilter --auth=trust -E UTF8 --no-instructions >/dev/null
pgport=$(free_port)
(cd / && "${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/pg" -l "$work/pg/server.log" -w \
  -o "-c listen_addresses=127.0.0.1 -c port=$pgport -c unix_socket_directories='' -c fsync=on" start >/dev/null)
"$pgbin/createdb" -h 127.0.0.1 -p "$pgport" -U authmilter dmarc
PG="postgresql://authmilter@127.0.0.1:$pgport/dmarc"
# CPU ticks of the PostgreSQL server: its live processes, plus the postmaster's finished children.
pgcpu() {
  local pm total=0 f
  pm=$(head -1 "$work/pg/postmaster.pid")
  for f in $(pgrep -P "$pm") "$pm"; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$f/stat" 2>/dev/null || echo 0)))
  done
  echo $((total + $(awk '{print $16 + $17}' "/proc/$pm/stat")))
}
psql() { "$pgbin/psql" -h 127.0.0.1 -p "$pgport" -U authmilter -d dmarc -X -q -A -t -v ON_ERROR_STOP=1 "$@"; }

cat > "$work/zone" <<EOF
example.com TXT v=spf1 ip4:192.0.2.0/24 -all
_dmarc.example.com TXT v=DMARC1; p=reject; rua=mailto:dmarc@example.com
EOF
"$BIN/milter-bench" dns --zone "$work/zone" --addr-file "$work/dns.addr" --max-seconds 1800 2>"$work/dns.log" &
PIDS+=($!)
for _ in $(seq 1 100); do [ -s "$work/dns.addr" ] && break; sleep 0.1; done
DNS=$(cat "$work/dns.addr")

echo "## dmarc-milter with and without a history store ($(nproc) cores, c=$conc, ${secs} s each, unpinned)"
echo
echo "| store | msgs/s | CPU ms/msg (daemon) | CPU ms/msg (PostgreSQL server) | p50 ms | p99 ms | wrong |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for store in none sqlite postgres; do
  port=$(free_port)
  case $store in
    none) hist="" ;;
    sqlite) hist="history = \"$work/history.sqlite\"" ;;
    postgres) hist="history = \"$PG\"
history_pool_size = $conc" ;;
  esac
  cat > "$work/$store.toml" <<EOF
socket = "inet:$port@127.0.0.1"
authserv_id = "bench.test"
ignore_hosts = []
$hist
[resolver]
nameservers = ["$DNS"]
[log]
destination = "stderr"
level = "warn"
EOF
  "$BIN/dmarc-milter" -c "$work/$store.toml" >"$work/$store.log" 2>&1 &
  pid=$!
  PIDS+=($pid)
  for _ in $(seq 1 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),0.2)" 2>/dev/null && break
    sleep 0.1
  done
  # Warm-up (schema, pool, DNS cache), then the measured run.
  "$BIN/milter-bench" run -e "inet:$port@127.0.0.1" -m dmarc -c "$conc" -n 200 --unique-message-ids >/dev/null
  t0=$(awk '{print $14 + $15}' "/proc/$pid/stat"); p0=$(pgcpu)
  "$BIN/milter-bench" run -e "inet:$port@127.0.0.1" -m dmarc -c "$conc" -d "$secs" --unique-message-ids --json >"$work/$store.json"
  t1=$(awk '{print $14 + $15}' "/proc/$pid/stat"); p1=$(pgcpu)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 - "$work/$store.json" "$store" "$t0" "$t1" "$(getconf CLK_TCK)" "$p0" "$p1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
store, t0, t1, hz, p0, p1 = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
n = max(r["messages"], 1)
cpu = (t1 - t0) / hz * 1000 / n
pg = (p1 - p0) / hz * 1000 / n
print(f"| {store} | {r['msgs_per_s']:.0f} | {cpu:.3f} | {pg:.3f} | {r['latency']['p50_ms']:.2f} | {r['latency']['p99_ms']:.2f} | {r['failed']} |")
PY
done
echo
echo "rows written: sqlite $(python3 -c "import sqlite3;print(sqlite3.connect('$work/history.sqlite').execute('select count(*) from messages').fetchone()[0])"), postgres $(psql -c 'SELECT COUNT(*) FROM messages')"
echo

# Report generation over $rows rows of one day (the same shape as bench/reports.sh's SQLite fill:
# 200 domains, 5,000 sources, 10 % failing).
psql -c "TRUNCATE messages CASCADE"
day=$((20000 * 86400))
t0=$(date +%s.%N)
psql <<SQL
INSERT INTO messages (received, job_id, reporter, source_ip, header_from, envelope_from,
  envelope_to, policy_domain, p, sp, np, adkim, aspf, testing, psd, rua, policy_applied,
  spf_domain, spf_scope, spf_result, dkim_aligned, spf_aligned, dmarc_result, disposition,
  action, message_key)
SELECT $day + i % 86400, 'Q', 'rx.test',
  '10.' || ((i % 5000) / 65536) || '.' || ((i % 5000) / 256 % 256) || '.' || (i % 256),
  'd' || (i % 200) || '.example', 'd' || (i % 200) || '.example', 'rx.test',
  'd' || (i % 200) || '.example', 'reject', 'reject', 'reject', 'r', 'r', 0, 'u',
  'mailto:dmarc@d' || (i % 200) || '.example', 'reject', 'd' || (i % 200) || '.example', 'mfrom',
  w, w, w, w, CASE WHEN w = 'pass' THEN 'none' ELSE 'reject' END, 'accept', 'b' || i
FROM (SELECT i, CASE WHEN i % 10 <> 0 THEN 'pass' ELSE 'fail' END AS w
      FROM generate_series(0, $rows - 1) AS i) AS s;
INSERT INTO dkim_results (message_id, domain, selector, result)
  SELECT id, policy_domain, 's1', dkim_aligned FROM messages;
ANALYZE;
SQL
t1=$(date +%s.%N)
echo "## Report generation over $rows PostgreSQL rows"
echo
echo "filled in $(awk "BEGIN{printf \"%.1f\", $t1 - $t0}") s; database $(psql -c "SELECT pg_size_pretty(pg_database_size('dmarc'))")"
printf '#!/bin/sh\nexec cat >/dev/null\n' > "$work/sendmail"
chmod +x "$work/sendmail"
cat > "$work/reports.toml" <<TOML
history = "$PG"
org_name = "Bench"
email = "dmarc@rx.test"
method = "sendmail"
sendmail = "$work/sendmail"
[resolver]
nameservers = ["127.0.0.1:9"]
TOML
now=$((day + 2 * 86400))
for mode in dry real idle; do
  extra=()
  [ "$mode" = dry ] && extra=(--dry-run "$work/out")
  p0=$(pgcpu)
  /usr/bin/time -f "$mode run: %e s elapsed, %U s user, %S s sys, max RSS %M KB (report program)" \
    "$BIN/authmilter" reports run -c "$work/reports.toml" --now "$now" "${extra[@]}" 2>&1 >/dev/null \
    | grep -v ' INFO '
  p1=$(pgcpu)
  echo "  PostgreSQL server CPU during the $mode run: $(awk "BEGIN{printf \"%.1f\", ($p1 - $p0) / $(getconf CLK_TCK)}") s"
done
echo "reports: $(psql -c "SELECT state || ' ' || COUNT(*) || ', rows ' || SUM(rows) FROM reports GROUP BY state")"
