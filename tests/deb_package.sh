#!/usr/bin/env bash
# The Debian package as an operator meets it, on this machine (root, Debian 12; tests/run.sh
# calls it): build the .deb (one release build), check its layout with dpkg -c and its
# conffiles, lintian without errors, `apt-get install ./authmilter_*.deb`, no daemon started by
# the install, man pages rendering without warnings, then each unit's ExecStartPre/ExecStart run
# as the unit's User= in the RuntimeDirectory= systemd would make, a message signed through the
# installed dkim-milter by milter-bench and verified by dkimpy, and finally `apt-get purge`:
# nothing may be left but what Debian policy keeps (the system users, and the key file the
# operator made in /etc/authmilter/keys).
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "tests/deb_package.sh: FAIL: $*" >&2; exit 1; }
log() { echo "tests/deb_package.sh: $*" >&2; }
[ "$(id -u)" -eq 0 ] || fail "needs root (it installs the package on this machine)"
for tool in cargo-deb lintian groff man setpriv systemd-analyze apt-get; do
  command -v "$tool" > /dev/null || fail "$tool is not installed"
done
/usr/bin/python3 -c "import dkim" 2> /dev/null || fail "dkimpy (python3-dkim) is not installed"
if dpkg-query -W -f='${Status}' authmilter 2> /dev/null | grep -q installed; then
  fail "authmilter is already installed here; purge it first"
fi

work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
  if dpkg-query -W -f='${Status}' authmilter 2> /dev/null | grep -q installed; then
    apt-get purge -y -q authmilter > /dev/null 2>&1 || true
  fi
  rm -rf "$work" /etc/authmilter/keys/pkgtest.private
  rmdir /etc/authmilter/keys /etc/authmilter 2> /dev/null || true
}
trap cleanup EXIT

# --- build and inspect ------------------------------------------------------------------
pkg/build-deb
deb=$(ls -t target/debian/authmilter_*.deb | head -n1)
log "built $deb"
dpkg -c "$deb" | awk '{print $6}' | sed 's#^\./#/#; s#/$##' | sort > "$work/contents"
for path in /usr/sbin/dkim-milter /usr/sbin/dmarc-milter /usr/bin/authmilter \
  /etc/authmilter/dkim-milter.toml /etc/authmilter/dmarc-milter.toml \
  /etc/authmilter/keys/KeyTable /etc/authmilter/keys/SigningTable \
  /usr/lib/systemd/system/dkim-milter.service /usr/lib/systemd/system/dmarc-milter.service \
  /usr/lib/systemd/system/dmarc-reports.service /usr/lib/systemd/system/dmarc-reports.timer \
  /usr/share/doc/authmilter/examples/dmarc-reports.toml \
  /usr/share/man/man8/dkim-milter.8.gz /usr/share/man/man8/dmarc-milter.8.gz \
  /usr/share/man/man1/authmilter.1.gz /usr/share/man/man1/authmilter-genkey.1.gz \
  /usr/share/man/man1/authmilter-testkey.1.gz /usr/share/man/man1/authmilter-audit.1.gz \
  /usr/share/man/man1/authmilter-reports.1.gz /usr/share/man/man1/authmilter-reports-run.1.gz \
  /usr/share/man/man5/dkim-milter.conf.5.gz /usr/share/man/man5/dmarc-milter.conf.5.gz \
  /usr/share/bash-completion/completions/dkim-milter /usr/share/zsh/vendor-completions/_authmilter \
  /usr/share/fish/vendor_completions.d/dmarc-milter.fish \
  /usr/share/doc/authmilter/copyright /usr/share/doc/authmilter/examples/dkim-milter.toml \
  /usr/share/doc/authmilter/examples/authmilter-dashboard.json; do
  grep -qx "$path" "$work/contents" || fail "$path is not in the package: $(cat "$work/contents")"
done
grep -q '^/usr/bin/dkim-milter$\|^/usr/share/man/man1/dkim-milter' "$work/contents" &&
  fail "a daemon is in /usr/bin or section 1"
# Nothing under /run or /var: those are made by the maintainer scripts and systemd.
grep -q '^/run\|^/var' "$work/contents" && fail "the package ships files under /run or /var"
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | sort > "$work/conffiles"
printf '%s\n' /etc/authmilter/dkim-milter.toml /etc/authmilter/dmarc-milter.toml \
  /etc/authmilter/keys/KeyTable /etc/authmilter/keys/SigningTable | sort |
  diff -u - "$work/conffiles" || fail "conffiles differ"

# Every man page renders with man -l and without groff warnings (checked from the package's
# own files: a machine whose dpkg excludes /usr/share/man still tests them).
dpkg-deb -x "$deb" "$work/root"
for page in "$work"/root/usr/share/man/man*/*.gz; do
  warnings=$(MANWIDTH=80 man --warnings=w -l "$page" 2>&1 > /dev/null) || fail "man -l $page failed"
  [ -z "$warnings" ] || fail "man -l ${page#"$work"/root}: $warnings"
done

# lintian: no errors; the warnings are listed with their reasons in docs/operations.md.
lintian --fail-on error --tag-display-limit 0 "$deb" | tee "$work/lintian" ||
  fail "lintian reports errors"
# A warning that docs/operations.md does not explain is a failure too.
while read -r tag; do
  grep -q "\`$tag\`" docs/operations.md || fail "lintian warning $tag is not documented in docs/operations.md"
done < <(awk '/^W: /{print $3}' "$work/lintian" | sort -u)

# --- install ------------------------------------------------------------------------------
snapshot() {
  find /etc /usr /var/lib /opt -xdev \( -path /var/lib/dpkg -o -path /var/lib/apt \
    -o -path /var/lib/ucf -o -path /var/lib/man-db \) -prune -o -print 2> /dev/null |
    grep -v '^/etc/\(passwd\|group\|shadow\|gshadow\|subuid\|subgid\)-\?$' | sort
}
snapshot > "$work/before"
DEBIAN_FRONTEND=noninteractive apt-get install -y -q "./$deb"

for exe in /usr/sbin/dkim-milter /usr/sbin/dmarc-milter; do
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/exe" 2> /dev/null)" = "$exe" ] && fail "the install left $exe running (pid ${p#/proc/})"
  done
done
# The installed units verify, their Documentation= man pages included (when this machine's dpkg
# installs man pages at all).
man_check=--man=yes
[ -e /usr/share/man/man8/dkim-milter.8.gz ] || man_check=--man=no
for unit in dkim-milter.service dmarc-milter.service dmarc-reports.service dmarc-reports.timer; do
  out=$(systemd-analyze verify "$man_check" "/usr/lib/systemd/system/$unit" 2>&1) ||
    fail "systemd-analyze verify $unit: $out"
  [ -z "$out" ] || fail "systemd-analyze verify $unit: $out"
done
/usr/sbin/dkim-milter --version | grep -qx "dkim-milter $(dpkg-query -W -f='${Version}' authmilter | sed 's/-[^-]*$//')" ||
  fail "dkim-milter --version does not match the package version"
getent passwd dkim-milter > /dev/null || fail "no dkim-milter user"
getent passwd dmarc-milter > /dev/null || fail "no dmarc-milter user"
[ "$(stat -c '%U:%G %a' /var/lib/dmarc-milter)" = "dmarc-milter:dmarc-milter 750" ] ||
  fail "/var/lib/dmarc-milter: $(stat -c '%U:%G %a' /var/lib/dmarc-milter)"
[ "$(stat -c '%U:%G %a' /etc/authmilter/keys)" = "root:dkim-milter 750" ] ||
  fail "/etc/authmilter/keys: $(stat -c '%U:%G %a' /etc/authmilter/keys)"

# --- serve as systemd would -----------------------------------------------------------------
unit_key() { sed -n "s/^$2=//p" "/usr/lib/systemd/system/$1.service" | head -n1; }
# Starts the unit's ExecStart as its User= in its RuntimeDirectory=, after ExecStartPre; its
# pid in $unit_pid.
start_unit() {
  local unit=$1 user group rt mode
  user=$(unit_key "$unit" User)
  group=$(unit_key "$unit" Group)
  rt=$(unit_key "$unit" RuntimeDirectory)
  mode=$(unit_key "$unit" RuntimeDirectoryMode)
  install -d -o "$user" -g "$group" -m "${mode:-0755}" "/run/$rt"
  # shellcheck disable=SC2046
  setpriv --reuid="$user" --regid="$group" --init-groups -- $(unit_key "$unit" ExecStartPre) ||
    fail "$unit: ExecStartPre failed"
  # shellcheck disable=SC2046
  setpriv --reuid="$user" --regid="$group" --init-groups -- $(unit_key "$unit" ExecStart) \
    2> "$work/$unit.log" &
  unit_pid=$!
  pids+=("$unit_pid")
}
wait_socket() {
  for _ in $(seq 1 100); do
    [ -S "$1" ] && return 0
    kill -0 "$2" 2> /dev/null || { cat "$work/$3.log" >&2; fail "$3 died at start"; }
    sleep 0.1
  done
  cat "$work/$3.log" >&2
  fail "$3 did not create $1"
}
stop_unit() {
  # The signal handlers are installed a moment after the socket is bound (a SIGTERM before that
  # ends the process by the default action, as systemd also accepts at stop): let it settle.
  sleep 1
  kill -TERM "$1"
  local rc=0
  wait "$1" || rc=$?
  [ "$rc" -eq 0 ] || { cat "$work/$2.log" >&2; fail "$2 exited with $rc after SIGTERM"; }
}

# The operator's first steps (README "Install"): a key, its two table lines.
/usr/bin/authmilter --json genkey --domain example.com --selector pkgtest \
  --out /etc/authmilter/keys/pkgtest.private > "$work/genkey.json"
chown dkim-milter: /etc/authmilter/keys/pkgtest.private
/usr/bin/python3 - "$work/genkey.json" <<'PY'
import json, sys
g = json.load(open(sys.argv[1]))
open("/etc/authmilter/keys/KeyTable", "a").write(g["key_table"].strip() + "\n")
open("/etc/authmilter/keys/SigningTable", "a").write(g["signing_table"].strip() + "\n")
PY

start_unit dkim-milter
pid=$unit_pid
wait_socket /run/dkim-milter/dkim-milter.sock "$pid" dkim-milter
[ "$(stat -c '%U %a' /run/dkim-milter/dkim-milter.sock)" = "dkim-milter 660" ] ||
  fail "socket: $(stat -c '%U %a' /run/dkim-milter/dkim-milter.sock)"
target/release/milter-bench -e unix:/run/dkim-milter/dkim-milter.sock -m sign -n 3 \
  --save-first "$work/signed.eml" || fail "milter-bench could not sign through the installed dkim-milter"
/usr/bin/python3 - "$work/signed.eml" "$work/genkey.json" <<'PY' || fail "dkimpy does not verify the signature"
import json, sys, dkim
msg = open(sys.argv[1], "rb").read()
txt = json.load(open(sys.argv[2]))["txt_value"].encode()
def dns(name, timeout=5):
    assert name == b"pkgtest._domainkey.example.com.", name
    return txt
sig = [l for l in msg.split(b"\n") if l.startswith(b"DKIM-Signature:")]
assert sig and b"d=example.com" in sig[0] and b"s=pkgtest" in sig[0], sig
assert dkim.verify(msg, dnsfunc=dns), "dkim.verify failed"
PY
stop_unit "$pid" dkim-milter
grep -q "terminating with status 0" "$work/dkim-milter.log" || fail "no clean stop line in the dkim-milter log"

start_unit dmarc-milter
pid=$unit_pid
wait_socket /run/dmarc-milter/dmarc-milter.sock "$pid" dmarc-milter
stop_unit "$pid" dmarc-milter
[ -f /var/lib/dmarc-milter/history.sqlite ] || fail "dmarc-milter made no history store in /var/lib/dmarc-milter"
pids=()

# --- purge ----------------------------------------------------------------------------------
DEBIAN_FRONTEND=noninteractive apt-get purge -y -q authmilter
snapshot > "$work/after"
left=$(comm -13 "$work/before" "$work/after" | tr '\n' ' ')
gone=$(comm -23 "$work/before" "$work/after" | tr '\n' ' ')
[ -z "$gone" ] || fail "the purge removed files it did not install: $gone"
[ "$left" = "/etc/authmilter /etc/authmilter/keys /etc/authmilter/keys/pkgtest.private " ] ||
  fail "left after purge (only the operator's key may stay): $left"
[ ! -e /run/dkim-milter ] && [ ! -e /run/dmarc-milter ] || fail "runtime directories left after purge"
getent passwd dkim-milter > /dev/null || fail "the purge removed the dkim-milter user (policy keeps it)"
log "OK: layout, lintian, install, serve, sign, purge"
