#!/usr/bin/env bash
# Report generation for BENCHMARKS.md: fills an SQLite history with ROWS rows (default 1,000,000)
# of one day, then times `authmilter reports run` (release build): a dry run (claim, build,
# gzip, write; rolled back), a real run (claim, build, "send" to a stand-in, mark sent) and a
# run with nothing due.
#   bench/reports.sh [ROWS]
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-1000000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build --release -q -p authmilter-cli --bin authmilter
t0=$(date +%s.%N)
BENCH_HISTORY="$work/history.sqlite" BENCH_ROWS="$rows" \
  cargo test -q -p authmilter-cli --test reports bench_fill_history -- --ignored >/dev/null
t1=$(date +%s.%N)
echo "filled $rows rows in $(awk "BEGIN{print $t1 - $t0}") s; database $(du -h "$work/history.sqlite" | cut -f1)"
# A sendmail stand-in that reads the whole message, as sendmail does.
printf '#!/bin/sh\nexec cat >/dev/null\n' > "$work/sendmail"
chmod +x "$work/sendmail"
cat > "$work/reports.toml" <<TOML
history = "$work/history.sqlite"
org_name = "Bench"
email = "dmarc@rx.test"
method = "sendmail"
sendmail = "$work/sendmail"
[resolver]
nameservers = ["127.0.0.1:9"]
TOML
now=$(( 20000 * 86400 + 2 * 86400 ))
for mode in dry real idle; do
  extra=()
  [ "$mode" = dry ] && extra=(--dry-run "$work/out")
  /usr/bin/time -f "$mode run: %e s elapsed, %U s user, %S s sys, max RSS %M KB" \
    target/release/authmilter reports run -c "$work/reports.toml" --now "$now" "${extra[@]}" 2>&1 >/dev/null \
    | grep -v ' INFO '
done
